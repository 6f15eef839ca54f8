"""KV caches as data structures: the radix prefix tree over token pages, and the chunk KV
store with its device / CPU / lmdb-disk tiers and eviction policies. No engine imports."""
