"""What one engine holds, as a cache-affinity router (`ragkv/cluster/router.py`) reads it:
per tenant the chained digests of its cached prefix pages (`cache/kv/digest.py`) and the
token hashes of its chunk KV, plus its load. Small enough to ship every second or two."""

from __future__ import annotations

from ragkv.cache.kv.chunk_store import ChunkKVStore
from ragkv.cache.kv.radix import RadixCache

CHUNK_HASH_CHARS = 16  # a prefix of the chunk's sha256 is plenty to tell chunks apart


def cache_report(
    radix: RadixCache,
    fingerprint: str,
    store: ChunkKVStore | None,
    max_pages: int,
    max_chunks: int,
) -> dict[str, object]:
    """`{"page_size", "prefix": {tenant: [digest]}, "chunks": {tenant: [hash16]}}` of the
    tree's namespaces of model `fingerprint` and of the chunk `store`. The caller holds the
    engine's step lock (the tree must not change while it is read)."""
    prefix: dict[str, list[int]] = {}
    for namespace in radix.namespaces():
        tenant, _, model = namespace.rpartition("/")
        digests = radix.page_digests(namespace, max_pages)
        if model == fingerprint and digests:
            prefix[tenant] = digests
    chunks: dict[str, list[str]] = {}
    if store is not None:
        for key in store.held_keys(max_chunks):
            chunks.setdefault(key.tenant, []).append(key.token_hash[:CHUNK_HASH_CHARS])
    return {"page_size": radix.page_size, "prefix": prefix, "chunks": chunks}
