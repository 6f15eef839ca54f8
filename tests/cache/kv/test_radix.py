"""Radix prefix cache as a pure data structure: matching, insertion, locks, LRU, pins."""

from __future__ import annotations

import pytest

from ragkv.cache.kv.radix import RadixCache

PAGE = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tokens(start: int, count: int) -> list[int]:
    return list(range(start, start + count))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> RadixCache:
    return RadixCache(PAGE, clock=clock)


def test_match_is_page_granular(cache: RadixCache) -> None:
    result = cache.insert_prefix("t", tokens(0, 10), [7, 8, 9])
    assert result.num_cached_tokens == 8  # 2 full pages; the partial third is not cached
    assert result.new_page_ids == [7, 8]
    match = cache.match_prefix("t", tokens(0, 11))
    assert (match.page_ids, match.num_tokens) == ([7, 8], 8)
    assert cache.match_prefix("t", tokens(0, 7)).page_ids == [7]
    assert cache.match_prefix("t", [99, *tokens(1, 9)]).page_ids == []
    cache.check_integrity()


def test_duplicate_insert_keeps_old_pages(cache: RadixCache) -> None:
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    again = cache.insert_prefix("t", tokens(0, 12), [5, 6, 7])
    assert again.new_page_ids == [7]
    assert cache.match_prefix("t", tokens(0, 12)).page_ids == [1, 2, 7]
    cache.check_integrity()


def test_branching_prefixes_share_the_common_pages(cache: RadixCache) -> None:
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    branch = [*tokens(0, 4), 50, 51, 52, 53]
    assert cache.insert_prefix("t", branch, [1, 3]).new_page_ids == [3]
    assert cache.match_prefix("t", branch).page_ids == [1, 3]
    assert cache.size_info().total_pages == 3


def test_namespaces_are_isolated(cache: RadixCache) -> None:
    cache.insert_prefix("tenant-a", tokens(0, 8), [1, 2])
    assert cache.match_prefix("tenant-b", tokens(0, 8)).num_tokens == 0


def test_lru_eviction_takes_oldest_unlocked_leaves(cache: RadixCache, clock: Clock) -> None:
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    clock.now = 1
    cache.insert_prefix("t", tokens(100, 8), [3, 4])
    clock.now = 2
    cache.match_prefix("t", tokens(0, 8))  # touch: now the 100.. branch is older
    assert cache.evict(2) == [4, 3]
    assert cache.match_prefix("t", tokens(100, 8)).num_tokens == 0
    assert cache.match_prefix("t", tokens(0, 8)).num_tokens == 8
    cache.check_integrity()


def test_locked_paths_are_not_evicted(cache: RadixCache) -> None:
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    node = cache.match_prefix("t", tokens(0, 8)).node
    cache.lock(node)
    assert cache.evict(10) == []
    assert cache.size_info().locked_pages == 2
    cache.unlock(node)
    assert sorted(cache.evict(10)) == [1, 2]
    with pytest.raises(ValueError):
        cache.unlock(node)


def test_pin_survives_until_ttl(cache: RadixCache, clock: Clock) -> None:
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    cache.insert_prefix("t", tokens(100, 8), [3, 4])
    assert cache.pin("t", tokens(0, 8), ttl_s=30) == 8
    assert sorted(cache.evict(10)) == [3, 4]  # only the unpinned branch goes
    assert cache.size_info().pinned_pages == 2
    clock.now = 31
    assert sorted(cache.evict(10)) == [1, 2]


def test_a_pin_is_not_a_use_its_pages_keep_their_lru_rank(cache: RadixCache, clock: Clock) -> None:
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    clock.now = 1
    cache.insert_prefix("t", tokens(100, 8), [3, 4])
    clock.now = 2
    assert cache.pin("t", tokens(0, 8), ttl_s=5) == 8  # pinned after the 100.. branch's use
    clock.now = 8  # the pin has lapsed
    # ranked by their last use (0), not the pin (2): they go before the 100.. branch
    assert cache.evict(2) == [2, 1]
    cache.insert_prefix("t", tokens(0, 8), [1, 2])
    clock.now = 9
    assert cache.keep_until("t", tokens(100, 8), 50.0) == 8
    cache.pin("t", tokens(100, 8), ttl_s=1)
    clock.now = 11
    assert cache.evict(2) == [2, 1]  # the hint survived the pin


def test_unpin_and_flush(cache: RadixCache) -> None:
    cache.insert_prefix("a", tokens(0, 8), [1, 2])
    cache.insert_prefix("b", tokens(0, 8), [3, 4])
    cache.pin("a", tokens(0, 8), ttl_s=100)
    cache.unpin("a", tokens(0, 8))
    assert cache.size_info().pinned_pages == 0
    assert sorted(cache.evict(3)) in ([1, 2, 4], [2, 3, 4])  # leaves first, then a parent
    assert len(cache.flush()) == 1
    assert cache.size_info().total_pages == 0
    cache.check_integrity()


def test_insert_needs_a_page_per_full_page(cache: RadixCache) -> None:
    with pytest.raises(ValueError, match="page ids"):
        cache.insert_prefix("t", tokens(0, 8), [1])


def test_approximate_pages_are_labelled_and_skipped_by_exact_matches():
    tree = RadixCache(page_size=4)
    tokens = list(range(20))  # five pages
    tree.insert_prefix("ns", tokens, [10, 11, 12, 13, 14], approx_from=9)  # in page 2
    match = tree.match_prefix("ns", tokens)
    assert match.num_tokens == 20 and match.approx_from == 8  # page 2 starts at token 8
    exact = tree.match_prefix("ns", tokens, exact_only=True)
    assert exact.num_tokens == 8 and exact.page_ids == [10, 11] and exact.approx_from is None
    assert tree.size_info().approx_pages == 3
    tree.check_integrity()


def test_pages_below_an_approximate_page_are_approximate_and_old_labels_stay():
    tree = RadixCache(page_size=4)
    tree.insert_prefix("ns", list(range(8)), [1, 2], approx_from=0)
    # An exact prefill of a longer prompt: its new pages hang below approximate ones.
    result = tree.insert_prefix("ns", list(range(16)), [5, 6, 7, 8])
    assert result.new_page_ids == [7, 8]
    assert tree.match_prefix("ns", list(range(16)), exact_only=True).num_tokens == 0
    assert tree.size_info().approx_pages == 4
    exact_first = RadixCache(page_size=4)
    exact_first.insert_prefix("ns", list(range(8)), [1, 2])
    exact_first.insert_prefix("ns", list(range(8)), [3, 4], approx_from=0)  # already exact
    assert exact_first.match_prefix("ns", list(range(8)), exact_only=True).num_tokens == 8
    tree.check_integrity()
    exact_first.check_integrity()
