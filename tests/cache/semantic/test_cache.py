"""SemanticCache with real MiniLM vectors, real hnswlib and real lmdb."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.errors import InvalidRequest, NotFound
from ragkv.retrieval.embedder import Embedder
from ragkv.settings import CategoryPolicy, SemanticCacheSettings
from tests.cache.conftest import ManualClock

CAPITAL = "What is the capital of France?"
CAPITAL_PARAPHRASE = "What's the capital city of France?"


def open_cache(path: Path, embedder: Embedder, clock: ManualClock, **overrides) -> SemanticCache:
    settings = SemanticCacheSettings(**overrides)
    return SemanticCache(settings, path, embed=embedder.embed, clock=clock)


def put(cache: SemanticCache, embedder: Embedder, tenant: str, query: str, **kw):
    vector = embedder.embed_one(query)
    return cache.store_answer(tenant, "m", "none", query, vector, f"answer to {query}", **kw)


def get(cache: SemanticCache, embedder: Embedder, tenant: str, query: str, **kw):
    return cache.lookup(tenant, "m", "none", query, embedder.embed_one(query), **kw)


def test_paraphrase_hits_and_other_question_misses(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    stored = put(cache, embedder, "a", CAPITAL)
    assert stored.reason == "stored" and stored.category == "general"
    hit = get(cache, embedder, "a", CAPITAL_PARAPHRASE)
    assert hit.hit is not None and hit.hit.entry_id == stored.entry_id
    assert hit.hit.response == f"answer to {CAPITAL}"
    assert hit.similarity >= hit.threshold == 0.93
    other = get(cache, embedder, "a", "How do volcanoes form?")
    assert other.hit is None and other.reason == "below_threshold"
    stats = SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]
    assert (stats["lookups"], stats["hits"], stats["entries"]) == (2, 1, 1)
    cache.close()


def test_tenants_never_share_entries(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    put(cache, embedder, "tenant-a", CAPITAL)
    assert get(cache, embedder, "tenant-b", CAPITAL).hit is None
    assert get(cache, embedder, "tenant-a", CAPITAL).hit is not None
    put(cache, embedder, "tenant-b", CAPITAL)
    a, b = get(cache, embedder, "tenant-a", CAPITAL), get(cache, embedder, "tenant-b", CAPITAL)
    assert a.hit.entry_id != b.hit.entry_id
    cache.close()


def test_guard_refuses_negation(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    put(cache, embedder, "a", "Is it safe to drink coffee during pregnancy?")
    result = get(cache, embedder, "a", "Is it not safe to drink coffee during pregnancy?")
    assert result.similarity > result.threshold  # the embedding alone would serve it
    assert result.hit is None and result.reason == "guard_negation"
    cache.close()


@pytest.mark.parametrize("guard", [True, False])
def test_guard_refuses_different_numbers(tmp_path, embedder, clock, guard) -> None:
    policy = CategoryPolicy(threshold=0.85, floor=0.85, guard=guard)
    cache = open_cache(tmp_path, embedder, clock, categories={"general": policy})
    put(cache, embedder, "a", "How many calories are in 2 eggs?", category="general")
    result = get(cache, embedder, "a", "How many calories are in 3 eggs?", category="general")
    assert result.similarity > result.threshold
    if guard:
        assert result.hit is None and result.reason == "guard_numbers"
        assert (
            SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]["guard_rejections"]
            == 1
        )
    else:
        assert result.hit is not None
    cache.close()


def test_ttl_expiry_with_injected_clock(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    put(cache, embedder, "a", CAPITAL, ttl_s=60)
    clock.advance(59)
    assert get(cache, embedder, "a", CAPITAL).hit is not None
    clock.advance(2)
    expired = get(cache, embedder, "a", CAPITAL)
    assert expired.hit is None and expired.reason == "expired"
    report = SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]
    assert report["expirations"] == 1 and report["entries"] == 0
    cache.close()


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_entry_quota_evicts_by_policy(tmp_path, embedder, clock, eviction) -> None:
    policy = CategoryPolicy(threshold=0.9, floor=0.9, max_entries=3, eviction=eviction)
    cache = open_cache(tmp_path, embedder, clock, categories={"general": policy})
    queries = ["How do bees make honey?", "Why is the sky blue?", "How do magnets work?"]
    for query in queries:
        put(cache, embedder, "a", query, category="general")
        clock.advance(1)
    for query in (queries[0], queries[0], queries[1]):
        assert get(cache, embedder, "a", query).hit is not None
        clock.advance(1)
    result = put(cache, embedder, "a", "What causes earthquakes?", category="general")
    assert result.evicted == 1
    survivors = {q for q in queries if get(cache, embedder, "a", q).hit is not None}
    # The third was never read: the least recent and the least frequent, for both policies.
    assert survivors == {queries[0], queries[1]}
    assert SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]["evictions"] == 1
    cache.close()


def test_quota_is_per_tenant_across_models_and_templates(tmp_path, embedder, clock) -> None:
    policy = CategoryPolicy(threshold=0.9, floor=0.9, max_entries=3)
    cache = open_cache(tmp_path, embedder, clock, categories={"general": policy})
    queries = ["How do bees make honey?", "Why is the sky blue?", "How do magnets work?"]
    placed = [("m", "t1"), ("m", "t2"), ("other-model", "t1")]
    for query, (model, template) in zip(queries, placed, strict=True):
        vector = embedder.embed_one(query)
        cache.store_answer("a", model, template, query, vector, "x", category="general")
        clock.advance(1)
    for query in queries:  # tenant b has its own quota: its entries evict none of a's
        put(cache, embedder, "b", query, category="general")
    newest = "What causes earthquakes?"
    vector = embedder.embed_one(newest)
    result = cache.store_answer("a", "m", "t2", newest, vector, "x", category="general")
    assert result.evicted == 1  # the oldest of a's three, in another partition
    found = lambda q, m, t: cache.lookup("a", m, t, q, embedder.embed_one(q)).hit  # noqa: E731
    assert found(queries[0], "m", "t1") is None
    assert found(queries[1], "m", "t2") and found(queries[2], "other-model", "t1")
    assert all(get(cache, embedder, "b", q).hit for q in queries)
    cache.close()


def test_lfu_and_lru_choose_different_victims(tmp_path, embedder, clock) -> None:
    queries = ["How do bees make honey?", "Why is the sky blue?", "How do magnets work?"]
    survivors = {}
    for eviction in ("lru", "lfu"):
        policy = CategoryPolicy(threshold=0.9, floor=0.9, max_entries=3, eviction=eviction)
        cache = open_cache(tmp_path / eviction, embedder, clock, categories={"general": policy})
        for query in queries:
            put(cache, embedder, "a", query, category="general")
            clock.advance(1)
        for _ in range(3):
            get(cache, embedder, "a", queries[0])  # frequent but long ago
        clock.advance(1)
        get(cache, embedder, "a", queries[1])
        clock.advance(1)
        get(cache, embedder, "a", queries[2])  # most recent
        put(cache, embedder, "a", "What causes earthquakes?", category="general")
        survivors[eviction] = {q for q in queries if get(cache, embedder, "a", q).hit}
        cache.close()
    assert survivors["lru"] == {queries[1], queries[2]}
    assert survivors["lfu"] == {queries[0], queries[2]}


def test_byte_quota(tmp_path, embedder, clock) -> None:
    policy = CategoryPolicy(threshold=0.9, floor=0.9, max_bytes=4000)
    cache = open_cache(tmp_path, embedder, clock, categories={"general": policy})
    vector = embedder.embed_one(CAPITAL)
    too_big = cache.store_answer("a", "m", "none", CAPITAL, vector, "x" * 4000)
    assert too_big.entry_id is None and too_big.reason == "too_large"
    put(cache, embedder, "a", CAPITAL)  # ~1.6 KB with the vector
    put(cache, embedder, "a", "Why is the sky blue?")
    clock.advance(1)
    result = put(cache, embedder, "a", "How do magnets work?")
    assert result.evicted == 1
    assert SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]["bytes"] <= 4000
    cache.close()


def test_restart_loads_index_without_rebuild(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    first = put(cache, embedder, "a", CAPITAL)
    cache.close()
    cache = open_cache(tmp_path, embedder, clock)
    assert cache.start_report.loaded == 1 and cache.start_report.rebuilt == 0
    assert get(cache, embedder, "a", CAPITAL_PARAPHRASE).hit.entry_id == first.entry_id
    # Writes after the last save are replayed from the lmdb log, not rebuilt.
    second = put(cache, embedder, "a", "Why is the sky blue?")
    cache.store.close()  # no save: as if the process died
    cache = open_cache(tmp_path, embedder, clock)
    report = cache.start_report
    assert (report.loaded, report.rebuilt, report.replayed_ops) == (1, 0, 1)
    assert get(cache, embedder, "a", "Why is the sky blue?").hit.entry_id == second.entry_id
    cache.close()


def test_corrupt_index_is_rebuilt_from_lmdb(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    stored = put(cache, embedder, "a", CAPITAL)
    cache.close()
    (index_file,) = (tmp_path / "index").glob("p*.bin")
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    cache = open_cache(tmp_path, embedder, clock)
    assert cache.start_report.loaded == 0 and cache.start_report.rebuilt == 1
    assert get(cache, embedder, "a", CAPITAL).hit.entry_id == stored.entry_id
    cache.close()


def test_feedback_drops_entry_and_counts(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    stored = put(cache, embedder, "a", CAPITAL)
    outcome = SemanticCacheAdmin(cache).feedback(stored.entry_id, correct=False, similarity=0.95)
    assert outcome["dropped"] and outcome["tenant"] == "a"
    assert get(cache, embedder, "a", CAPITAL).hit is None
    assert (
        SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]["false_hit_reports"]
        == 1
    )
    with pytest.raises(NotFound):
        SemanticCacheAdmin(cache).feedback(stored.entry_id, correct=False)
    with pytest.raises(NotFound):  # found by the schema fuzz: ids past u64 were a 500
        SemanticCacheAdmin(cache).feedback(2**64, correct=False)
    cache.close()
    cache = open_cache(tmp_path, embedder, clock)
    assert get(cache, embedder, "a", CAPITAL).hit is None  # the deletion was durable
    cache.close()


def test_flush_by_tenant_and_all(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    put(cache, embedder, "a", CAPITAL)
    put(cache, embedder, "b", CAPITAL)
    assert SemanticCacheAdmin(cache).flush(tenant="a") == 1
    assert get(cache, embedder, "a", CAPITAL).hit is None
    assert get(cache, embedder, "b", CAPITAL).hit is not None
    assert SemanticCacheAdmin(cache).flush() == 1
    cache.close()
    cache = open_cache(tmp_path, embedder, clock)
    assert get(cache, embedder, "b", CAPITAL).hit is None
    cache.close()


def test_same_query_replaces_entry(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    first = put(cache, embedder, "a", CAPITAL)
    vector = embedder.embed_one(CAPITAL)
    second = cache.store_answer("a", "m", "none", CAPITAL, vector, "Paris.")
    assert second.entry_id != first.entry_id
    assert get(cache, embedder, "a", CAPITAL).hit.response == "Paris."
    assert SemanticCacheAdmin(cache).stats_report()["tenants"]["a"]["general"]["entries"] == 1
    cache.close()


def test_bad_input_is_rejected(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    vector = embedder.embed_one(CAPITAL)
    with pytest.raises(InvalidRequest):
        cache.lookup("a", "m", "none", "  ", vector)
    with pytest.raises(InvalidRequest, match="unknown category"):
        cache.lookup("a", "m", "none", CAPITAL, vector, category="astrology")
    with pytest.raises(InvalidRequest, match="ttl_s"):
        cache.store_answer("a", "m", "none", CAPITAL, vector, "Paris", ttl_s=-1)
    with pytest.raises(InvalidRequest):
        cache.lookup("a", "m", "none", CAPITAL, np.zeros(384, np.float32))
    cache.close()


def test_personal_questions_are_not_cached(tmp_path, embedder, clock) -> None:
    cache = open_cache(tmp_path, embedder, clock)
    result = put(cache, embedder, "a", "What is my account balance?")
    assert result.category == "personal" and result.entry_id is None
    assert result.reason == "not_cacheable"
    cache.close()


def test_verified_observations_survive_a_restart(tmp_path, embedder, clock) -> None:
    cache = open_cache(
        tmp_path, embedder, clock, verified=True, verified_min_observations=3, verified_delta=0.3
    )
    stored = put(cache, embedder, "a", CAPITAL)
    for similarity in (0.97, 0.96, 0.95, 0.94):
        SemanticCacheAdmin(cache).feedback(stored.entry_id, correct=True, similarity=similarity)
    learned = cache.verified.threshold(stored.entry_id, "general", 0.99, 0.8)
    assert learned < 0.99
    cache.close()
    cache = open_cache(
        tmp_path, embedder, clock, verified=True, verified_min_observations=3, verified_delta=0.3
    )
    assert cache.verified.threshold(stored.entry_id, "general", 0.99, 0.8) == learned
    assert cache.verified.snapshot()["general"]["observations"] == 4
    cache.close()
