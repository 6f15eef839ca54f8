"""Blended prefill of cached chunk KV: `prefill` (the algorithm), `selectors` (which tokens
are recomputed), `blender` (fetches chunk KV from the store and runs a sequence's blend)."""
