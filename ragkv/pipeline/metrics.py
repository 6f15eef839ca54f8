"""Prometheus metrics of the pipeline: per-request KV reuse of the prefix and chunk levels.

Registered on the registry the caller passes in (one per app), never on the global one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from ragkv.engine.sequence import RequestOutput


class KVMetrics:
    """Per-request KV reuse of the prefix and chunk levels, labelled by `kv_reuse` mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["kv_reuse"]
        self.ttft = Histogram(
            "ragkv_ttft_seconds",
            "time to first token of engine-served requests",
            labels,
            registry=registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
        )
        self.inter_token = Histogram(
            "ragkv_inter_token_seconds",
            "gap between consecutive tokens of a stream (the pipeline's view)",
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8),
        )
        self.prompt_tokens = Counter(
            "ragkv_prompt_tokens", "prompt tokens", labels, registry=registry
        )
        self.prefix_reused = Counter(
            "ragkv_prefix_tokens_reused",
            "prompt tokens served from the radix tree",
            labels,
            registry=registry,
        )
        self.chunk_reused = Counter(
            "ragkv_chunk_tokens_reused",
            "chunk tokens whose cached KV was kept",
            labels,
            registry=registry,
        )
        self.recomputed = Counter(
            "ragkv_tokens_recomputed",
            "prompt tokens computed by the model",
            labels,
            registry=registry,
        )

    def observe_token_gap(self, seconds: float) -> None:
        """One gap between two tokens of a running stream, as the pipeline received them."""
        self.inter_token.observe(seconds)

    def observe(self, final: RequestOutput, kv_reuse: str, tokens_recomputed: int) -> None:
        """Count one finished engine request."""
        if final.ttft_ms is not None:
            self.ttft.labels(kv_reuse).observe(final.ttft_ms / 1000)
        self.prompt_tokens.labels(kv_reuse).inc(final.prompt_tokens)
        self.prefix_reused.labels(kv_reuse).inc(final.cached_tokens)
        self.chunk_reused.labels(kv_reuse).inc(final.chunk_tokens_reused)
        self.recomputed.labels(kv_reuse).inc(tokens_recomputed)
