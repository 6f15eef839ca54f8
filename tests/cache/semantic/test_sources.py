"""The source index of the semantic cache: answers built from chunks die with those chunks.

Real MiniLM vectors, real hnswlib and lmdb; the index is read back after a reopen.
"""

from __future__ import annotations

from pathlib import Path

from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.types import Sources
from ragkv.retrieval.embedder import Embedder
from tests.cache.conftest import ManualClock
from tests.cache.semantic.test_cache import get, open_cache, put

RIVERS = Sources('["a", "rivers"]', ("c-nile", "c-amazon"))
MOUNTAINS = Sources('["a", "mountains"]', ("c-everest",))
SAME_CHUNK_OTHER_TENANT = Sources('["b", "rivers"]', ("c-nile",))


def filled(path: Path, embedder: Embedder, clock: ManualClock) -> tuple[SemanticCache, dict]:
    cache = open_cache(path, embedder, clock)
    ids = {
        "nile": put(cache, embedder, "a", "How long is the Nile?", sources=RIVERS).entry_id,
        "everest": put(cache, embedder, "a", "How high is Everest?", sources=MOUNTAINS).entry_id,
        "plain": put(cache, embedder, "a", "What is the capital of Peru?").entry_id,
        "other": put(cache, embedder, "b", "How long is the Nile?",
                     sources=SAME_CHUNK_OTHER_TENANT).entry_id,
    }  # fmt: skip
    return cache, ids


def test_a_removed_chunk_drops_only_the_answers_built_from_it(tmp_path, embedder, clock) -> None:
    cache, ids = filled(tmp_path, embedder, clock)
    admin = SemanticCacheAdmin(cache)
    assert cache.store.entries_from(RIVERS.collection, ["c-amazon"]) == {ids["nile"]}
    assert admin.invalidate_sources(RIVERS.collection, ["c-unrelated"]) == 0
    assert admin.invalidate_sources(RIVERS.collection, ["c-amazon"]) == 1
    assert get(cache, embedder, "a", "How long is the Nile?").hit is None
    assert admin.get(ids["nile"]) is None
    for kept in ("everest", "plain", "other"):  # another collection, no sources, another tenant
        assert admin.get(ids[kept]) is not None
    # Its index keys went with it: the other chunk of the same answer finds nothing now.
    assert cache.store.entries_from(RIVERS.collection, ["c-nile"]) == set()
    report = admin.stats_report()["tenants"]["a"]
    assert sum(row["invalidations"] for row in report.values()) == 1
    cache.close()


def test_a_deleted_collection_drops_all_its_answers_and_survives_a_reopen(
    tmp_path, embedder, clock
) -> None:
    cache, ids = filled(tmp_path, embedder, clock)
    cache.close()
    cache = open_cache(tmp_path, embedder, clock)  # the index is in lmdb, not in memory
    admin = SemanticCacheAdmin(cache)
    assert cache.store.entries_from(MOUNTAINS.collection, None) == {ids["everest"]}
    assert admin.invalidate_sources(MOUNTAINS.collection) == 1
    assert get(cache, embedder, "a", "How high is Everest?").hit is None
    assert get(cache, embedder, "b", "How long is the Nile?").hit is not None
    cache.close()
    cache = open_cache(tmp_path, embedder, clock)
    assert SemanticCacheAdmin(cache).get(ids["everest"]) is None
    assert cache.store.entries_from(MOUNTAINS.collection, None) == set()
    cache.close()


def test_replaced_flushed_and_expired_entries_leave_no_index_keys(
    tmp_path, embedder, clock
) -> None:
    cache, ids = filled(tmp_path, embedder, clock)
    replaced = put(cache, embedder, "a", "How long is the Nile?", sources=MOUNTAINS)
    assert cache.store.entries_from(RIVERS.collection, None) == set()
    assert cache.store.entries_from(MOUNTAINS.collection, None) == {
        ids["everest"],
        replaced.entry_id,
    }
    SemanticCacheAdmin(cache).flush(tenant="a")
    assert cache.store.entries_from(MOUNTAINS.collection, None) == set()
    short = put(cache, embedder, "b", "How deep is the sea?", ttl_s=5, sources=RIVERS)
    assert cache.store.entries_from(RIVERS.collection, None) == {short.entry_id}
    clock.advance(10)
    assert SemanticCacheAdmin(cache).sweep_expired() == 1
    assert cache.store.entries_from(RIVERS.collection, None) == set()
    cache.close()
