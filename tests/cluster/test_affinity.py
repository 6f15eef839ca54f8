"""Cache-affinity ranking (pure: no Ray, no model): page digests agree between a prompt and a
radix tree, prefix and chunk reuse are credited, load overrides affinity past both thresholds,
sessions stick, failed replicas are avoided."""

from __future__ import annotations

from ragkv.cache.kv.digest import page_digests
from ragkv.cache.kv.radix import RadixCache
from ragkv.cluster.affinity import (
    AffinityPolicy,
    ReplicaView,
    RouteHint,
    imbalanced,
    rank_replicas,
    reusable_tokens,
)
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import ChunkSpan, Request

PAGE = 4
POLICY = AffinityPolicy(chunk_credit=0.85, tokens_per_queued=16.0, balance_abs_threshold=4.0,
                        balance_rel_threshold=1.5)  # fmt: skip


def request(prompt: list[int], spans: tuple[ChunkSpan, ...] = (), tenant: str = "a") -> Request:
    return Request("r", prompt, SamplingParams(max_tokens=1), tenant=tenant, chunk_spans=spans)


def test_digests_are_chained_and_only_full_pages() -> None:
    assert len(page_digests(list(range(11)), PAGE)) == 2
    first = page_digests([1, 2, 3, 4, 5, 6, 7, 8], PAGE)
    other = page_digests([9, 9, 9, 9, 5, 6, 7, 8], PAGE)
    assert first[0] != other[0] and first[1] != other[1]  # the same page after another prefix
    assert page_digests([1, 2, 3, 4], PAGE) == first[:1]


def test_radix_tree_reports_the_digests_a_prompt_computes() -> None:
    radix = RadixCache(PAGE)
    tokens = list(range(100, 117))  # 4 full pages and one token
    radix.insert_prefix("a/m", tokens, list(range(4)))
    radix.insert_prefix("a/m", tokens[:8] + [7, 7, 7, 7], [0, 1, 9])
    held = set(radix.page_digests("a/m", limit=100))
    assert set(page_digests(tokens, PAGE)) <= held
    assert set(page_digests(tokens[:8] + [7, 7, 7, 7], PAGE)) <= held
    assert len(held) == 5
    assert len(radix.page_digests("a/m", limit=2)) == 2
    assert radix.page_digests("b/m", limit=100) == []


def test_prefix_and_chunk_reuse_are_credited() -> None:
    prompt = list(range(40))
    spans = (ChunkSpan(8, 12), ChunkSpan(20, 16))
    hint = RouteHint.of(request(prompt, spans), PAGE)
    assert len(hint.pages) == 9  # the last token is never matched
    prefix = ReplicaView("p", prefix={"a": set(hint.pages[:5])})
    chunk = ReplicaView("c", chunks={"a": {hint.chunks[1][0]}})
    other_tenant = ReplicaView("t", prefix={"b": set(hint.pages)})
    assert reusable_tokens(hint, prefix, PAGE, 0.85) == 20
    assert reusable_tokens(hint, chunk, PAGE, 0.85) == 0.85 * 16
    assert reusable_tokens(hint, other_tenant, PAGE, 0.85) == 0
    gap = ReplicaView("g", prefix={"a": {hint.pages[0], hint.pages[2]}})
    assert reusable_tokens(hint, gap, PAGE, 0.85) == PAGE  # a prefix stops at the first miss


def test_chunks_match_in_any_order() -> None:
    a, b = list(range(500, 512)), list(range(600, 616))
    first = RouteHint.of(request(a + b + [1, 2], (ChunkSpan(0, 12), ChunkSpan(12, 16))), PAGE)
    swapped = RouteHint.of(request(b + a + [1, 2], (ChunkSpan(0, 16), ChunkSpan(16, 12))), PAGE)
    assert set(first.chunks) == set(swapped.chunks)
    assert not set(first.pages) & set(swapped.pages)
    holder = ReplicaView("h", chunks={"a": {c for c, _ in first.chunks}})
    ranks = rank_replicas(swapped, [ReplicaView("idle"), holder], PAGE, POLICY)
    assert ranks[0] == ["h"]


def test_load_overrides_affinity_past_both_thresholds() -> None:
    hint = RouteHint.of(request(list(range(256))), PAGE)
    holder = ReplicaView("h", prefix={"a": set(hint.pages)}, load=5.0)
    idle = ReplicaView("i", load=0.0)
    assert imbalanced([5.0, 0.0], POLICY)
    assert rank_replicas(hint, [holder, idle], PAGE, POLICY)[0] == ["i"]
    holder.load = 4.0  # spread 4: not past the absolute threshold; 252 reused - 4 x 16
    assert not imbalanced([4.0, 0.0], POLICY)
    assert rank_replicas(hint, [holder, idle], PAGE, POLICY)[0] == ["h"]
    short = RouteHint.of(request(list(range(64))), PAGE)  # 60 reused < the queue's 64
    assert rank_replicas(short, [holder, idle], PAGE, POLICY)[0] == ["i"]
    assert not imbalanced([12.0, 9.0], POLICY)  # far apart in absolute terms, not relative


def test_no_reuse_goes_to_the_less_loaded_and_sessions_stick() -> None:
    hint = RouteHint.of(request(list(range(64))), PAGE)
    busy, idle = ReplicaView("b", load=2.0), ReplicaView("i", load=1.0)
    assert rank_replicas(hint, [busy, idle], PAGE, POLICY) == [["i"], ["b"]]
    assert rank_replicas(hint, [busy, idle], PAGE, POLICY, sticky="b")[0] == ["b"]


def test_failed_replicas_are_avoided_and_a_target_is_kept() -> None:
    hint = RouteHint.of(request(list(range(64))), PAGE, avoid=["h"])
    holder = ReplicaView("h", prefix={"a": set(hint.pages)})
    assert rank_replicas(hint, [holder, ReplicaView("o")], PAGE, POLICY) == [["o"]]
    assert rank_replicas(hint, [holder], PAGE, POLICY) == [["h"]]  # nothing else is left
    assert RouteHint.to("x").replica == "x"
