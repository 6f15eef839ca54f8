"""Tool-aware pins on a real radix tree: bounded share, the end of an overdue pin and then of
the pin due back last go first (Belady-like, fractional: a trimmed pin keeps its first pages), a
hit when the follow-up arrives, expiry that lets the pages go."""

from __future__ import annotations

from ragkv.cache.kv.radix import RadixCache
from ragkv.engine.tool_pins import ToolPins

PAGE = 16


class Clock:
    """A clock the test moves by hand (the tree and the pins read the same one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def conversation(index: int, pages: int = 4) -> list[int]:
    return [index * 10_000 + i for i in range(pages * PAGE)]


def setup(pool_pages: int = 64, share: float = 0.25, on_demand: bool = False):
    clock = Clock()
    radix = RadixCache(PAGE, clock=clock)
    next_page = iter(range(10_000))

    def cache(tokens: list[int]) -> None:
        radix.insert_prefix("ns", tokens, [next(next_page) for _ in range(len(tokens) // PAGE)])

    return clock, radix, ToolPins(radix, pool_pages, PAGE, share, on_demand), cache


def test_pins_never_pass_their_share_and_keep_the_agents_due_soonest() -> None:
    clock, radix, pins, cache = setup()
    ttls = [50.0, 20.0, 40.0, 10.0, 30.0, 60.0, 5.0, 45.0, 15.0, 35.0]
    for index, ttl in enumerate(ttls):  # 10 agents on tools, 4 pages each; the share is 16
        cache(conversation(index))
        pinned = pins.pin("ns", conversation(index) + [7], ttl_s=ttl)
        assert pinned in (0, 4 * PAGE)
        assert pins.pinned_pages <= 16
        assert radix.size_info().pinned_pages <= 16
    stats = pins.stats()
    # 50, 20, 40, 10 fill the share; 30 displaces 50; 60 is due last: refused; 5 displaces
    # 40; 45 refused; 15 displaces 30; 35 refused
    assert (stats["made"], stats["active"], stats["displaced"], stats["refused"]) == (7, 4, 3, 3)
    # the survivors are the four due soonest (5, 10, 15, 20 s), expiring in that order
    for expired, at in enumerate((5.5, 10.5, 15.5, 20.5), start=1):
        clock.now = 1000.0 + at
        assert pins.stats()["expired_unused"] == expired
    assert pins.stats()["active"] == 0


def test_an_overdue_pin_goes_first_then_the_end_of_the_one_due_last() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    for index, (ttl, due) in enumerate([(30.0, 10.0), (60.0, 40.0), (20.0, 20.0)]):
        cache(conversation(index))
        assert pins.pin("ns", conversation(index), ttl_s=ttl, due_s=due) == 4 * PAGE
    cache(conversation(5, pages=8))
    # 8 more pages do not fit, and every held pin is due back before this one: it gets the
    # 4 pages left, its first ones
    assert pins.pin("ns", conversation(5, pages=8), ttl_s=90.0, due_s=60.0) == 4 * PAGE
    assert pins.stats()["partial"] == 1 and radix.size_info().pinned_pages == 16
    clock.now += 15.0  # the first agent is overdue (due at 10 s, its pin lasts to 30 s)
    # pinned again (the older pin of the same conversation goes); the overdue pin gives up
    # its pages first, here all 4 (displaced)
    assert pins.pin("ns", conversation(5, pages=8), ttl_s=90.0, due_s=60.0) == 8 * PAGE
    stats = pins.stats()
    assert (stats["displaced"], stats["refused"], stats["active"]) == (1, 0, 3)
    assert pins.pinned_pages == 16 and radix.size_info().pinned_pages == 16
    # a running sequence needs 3 pages: the pin due last (75 s) gives up its last 3
    assert pins.yield_pages(3)
    assert pins.pinned_pages == 13 and radix.size_info().pinned_pages == 13
    assert (pins.stats()["yielded"], pins.stats()["trimmed"]) == (1, 1)
    # evictable now: the overdue agent's 4 pages and the trimmed end (pages 17-19), no more
    assert sorted(radix.evict(16)) == [0, 1, 2, 3, 17, 18, 19]
    pins.on_admit("ns", conversation(5, pages=8) + [1])  # back: its first 5 pages were kept
    pins.on_admit("ns", conversation(2) + [1])
    pins.on_admit("ns", conversation(1) + [1])
    assert pins.stats()["hit"] == 3 and pins.pinned_pages == 0


def test_an_overdue_pin_gives_up_its_end_first_and_keeps_its_first_pages() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    cache(conversation(0, pages=8))
    assert pins.pin("ns", conversation(0, pages=8), ttl_s=30.0, due_s=10.0) == 8 * PAGE
    cache(conversation(1, pages=8))
    assert pins.pin("ns", conversation(1, pages=8), ttl_s=60.0, due_s=40.0) == 8 * PAGE
    clock.now += 15.0  # the first agent is overdue, not gone: it may be only late
    assert pins.yield_pages(3)  # a running sequence: the overdue pin's end, not the other's
    cache(conversation(2))
    assert pins.pin("ns", conversation(2), ttl_s=20.0, due_s=20.0) == 4 * PAGE
    stats = pins.stats()
    assert (stats["trimmed"], stats["displaced"], stats["active"]) == (2, 0, 3)
    assert pins.pinned_pages == 16 and radix.size_info().pinned_pages == 16
    assert sorted(radix.evict(16)) == [4, 5, 6, 7]  # only the overdue pin's last 4 pages
    pins.on_admit("ns", conversation(0, pages=8) + [1])  # back late: a 4-page prefix hit
    assert radix.match_prefix("ns", conversation(0, pages=8)).num_tokens == 4 * PAGE
    assert pins.stats()["hit"] == 1


def test_a_new_pin_due_sooner_trims_the_pin_due_last_instead_of_dropping_it() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    cache(conversation(1, pages=12))
    assert pins.pin("ns", conversation(1, pages=12), ttl_s=60.0) == 12 * PAGE
    cache(conversation(2, pages=6))
    assert pins.pin("ns", conversation(2, pages=6), ttl_s=10.0) == 6 * PAGE
    stats = pins.stats()
    assert (stats["trimmed"], stats["displaced"], stats["active"]) == (1, 0, 2)
    # the agent due last keeps its first 10 pages: a prefix hit of 160 tokens when it is back
    assert pins.pinned_pages == 16 and radix.size_info().pinned_pages == 16
    assert radix.match_prefix("ns", conversation(1, pages=12)).num_tokens == 12 * PAGE
    assert len(radix.evict(16)) == 2  # only its last two pages became evictable
    assert radix.match_prefix("ns", conversation(1, pages=12)).num_tokens == 10 * PAGE


def test_pins_sharing_first_pages_stay_pinned_when_one_goes() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.5)  # 32 pages
    shared = conversation(7, pages=2)
    first, second = shared + conversation(1, pages=2), shared + conversation(2, pages=2)
    cache(first)
    radix.insert_prefix("ns", second, [100, 101, 102, 103])  # the same system prompt pages
    assert pins.pin("ns", first, ttl_s=30.0) == 4 * PAGE
    assert pins.pin("ns", second, ttl_s=60.0) == 4 * PAGE
    pins.on_admit("ns", first + [1])  # the first agent is back: its pin goes
    assert radix.size_info().pinned_pages == 4  # the second's, shared pages included
    assert sorted(radix.evict(8)) == [2, 3]  # only the first agent's own pages


def test_the_follow_up_hits_and_releases_its_pin() -> None:
    clock, radix, pins, cache = setup()
    cache(conversation(1))
    pins.pin("ns", conversation(1), ttl_s=60.0)
    pins.on_admit("ns", conversation(2))  # another conversation: no hit
    assert pins.stats()["hit"] == 0
    pins.on_admit("ns", conversation(1) + [5, 6, 7])  # the agent is back with tool results
    assert pins.stats()["hit"] == 1 and pins.stats()["active"] == 0
    assert radix.size_info().pinned_pages == 0


def test_an_expired_pin_is_counted_and_its_pages_can_be_evicted() -> None:
    clock, radix, pins, cache = setup()
    cache(conversation(3))
    pins.pin("ns", conversation(3), ttl_s=5.0)
    assert radix.evict(4) == []  # pinned: nothing to evict
    clock.now += 6.0
    assert pins.stats()["expired_unused"] == 1 and pins.pinned_pages == 0
    assert len(radix.evict(4)) == 4


def test_a_pin_longer_than_the_share_keeps_its_first_pages_and_uncached_is_refused() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.05)  # 3 pages
    cache(conversation(4))
    assert pins.pin("ns", conversation(4), 30.0) == 3 * PAGE
    assert radix.size_info().pinned_pages == 3 and pins.pinned_pages == 3
    assert pins.pin("ns", conversation(9, pages=1), 30.0) == 0  # never cached
    assert pins.pin("ns", [1, 2, 3], 30.0) == 0  # not a whole page
    assert (pins.stats()["refused"], pins.stats()["made"]) == (2, 1)


def test_a_partial_pin_is_hit_only_by_its_own_conversation() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    cache(conversation(3, pages=14))
    assert pins.pin("ns", conversation(3, pages=14), ttl_s=10.0) == 14 * PAGE
    shared = conversation(7, pages=2)  # a system prompt other agents start with too
    mine = shared + conversation(1, pages=14)
    cache(mine)
    # the agent due soonest keeps its pin; this one gets the two pages left, its first
    assert pins.pin("ns", mine, ttl_s=60.0) == 2 * PAGE
    assert pins.stats()["partial"] == 1
    pins.on_admit("ns", shared + conversation(2, pages=3) + [1])  # another agent: not a hit
    assert (pins.stats()["hit"], pins.stats()["active"]) == (0, 2)
    pins.on_admit("ns", mine + [1])  # this agent is back
    assert (pins.stats()["hit"], pins.stats()["active"]) == (1, 1)


def test_on_demand_a_pin_holds_nothing_until_eviction_reaches_its_conversation() -> None:
    clock, radix, pins, cache = setup(on_demand=True)  # 16 pages
    cache(conversation(1))  # page ids 0-3
    assert pins.pin("ns", conversation(1), ttl_s=60.0, due_s=30.0) == 4 * PAGE  # cached
    stats = pins.stats()
    assert (stats["made"], stats["held"], stats["waiting"], stats["active"]) == (1, 0, 1, 0)
    assert pins.pinned_pages == 0 and radix.size_info().pinned_pages == 0
    clock.now += 1.0
    cache(conversation(2))  # a one-shot prompt (4-7), used after the agent's turn
    assert sorted(radix.evict(4)) == [4, 5, 6, 7]  # ranked before the agent: still waiting
    assert pins.stats()["waiting"] == 1
    # eviction reaches the conversation: pinned then, and nothing else is left to evict
    assert radix.evict(2) == []
    stats = pins.stats()
    assert (stats["held"], stats["waiting"], stats["active"], stats["pinned_pages"]) == (
        1, 0, 1, 4,
    )  # fmt: skip
    assert radix.size_info().pinned_pages == 4
    pins.on_admit("ns", conversation(1) + [1])
    assert (pins.stats()["hit"], pins.stats()["not_needed"]) == (1, 0)
    assert radix.size_info().pinned_pages == 0


def test_on_demand_a_conversation_the_cache_keeps_is_never_pinned() -> None:
    clock, radix, pins, cache = setup(on_demand=True)
    cache(conversation(1))
    cache(conversation(2))
    pins.pin("ns", conversation(1), ttl_s=60.0)
    pins.pin("ns", conversation(2), ttl_s=10.0)
    pins.on_admit("ns", conversation(1) + [1])  # back before anything was evicted
    clock.now += 11.0  # the other agent never comes back
    stats = pins.stats()
    assert (stats["made"], stats["held"], stats["hit"], stats["expired_unused"]) == (2, 0, 1, 1)
    assert stats["not_needed"] == 2 and stats["waiting"] == 0
    assert len(radix.evict(8)) == 8  # nothing was held
    assert pins.pin("ns", conversation(3), ttl_s=10.0) == 0  # never cached: refused
    assert pins.stats()["refused"] == 1


def test_on_demand_a_pin_reached_later_but_due_sooner_trims_the_held_one() -> None:
    clock, radix, pins, cache = setup(on_demand=True)  # 16 pages
    cache(conversation(1, pages=12))  # page ids 0-11
    cache(conversation(2, pages=8))  # 12-19
    pins.pin("ns", conversation(1, pages=12), ttl_s=30.0)  # ranked at 30 s: reached first
    pins.pin("ns", conversation(2, pages=8), ttl_s=40.0, due_s=5.0)  # due back first
    # the first is pinned when reached (12 pages); the second, due sooner, takes 4 of them
    # from its end when reached, and those are evicted next
    assert sorted(radix.evict(20)) == [8, 9, 10, 11]
    stats = pins.stats()
    assert (stats["held"], stats["trimmed"], stats["partial"], stats["active"]) == (2, 1, 0, 2)
    assert pins.pinned_pages == 16 and radix.size_info().pinned_pages == 16


def test_on_demand_a_pin_reached_when_the_share_is_held_by_agents_due_sooner() -> None:
    clock, radix, pins, cache = setup(on_demand=True)  # 16 pages
    cache(conversation(1, pages=12))  # page ids 0-11
    cache(conversation(2, pages=8))  # 12-19
    pins.pin("ns", conversation(1, pages=12), ttl_s=10.0)
    pins.pin("ns", conversation(2, pages=8), ttl_s=60.0, due_s=40.0)
    # the second gets the 4 pages left, its first; its end is evicted
    assert sorted(radix.evict(20)) == [16, 17, 18, 19]
    stats = pins.stats()
    assert (stats["held"], stats["partial"], stats["active"]) == (2, 1, 2)
    assert radix.match_prefix("ns", conversation(2, pages=8), touch=False).num_tokens == 4 * PAGE
    # with the share full and nothing else to evict, an eviction that must not deadlock
    # the pool takes no pin on demand
    cache(conversation(3))
    pins.pin("ns", conversation(3), ttl_s=60.0)
    assert sorted(radix.evict(4, rescue=False)) == [20, 21, 22, 23]


def test_path_of_a_node_names_its_namespace_and_tokens() -> None:
    radix = RadixCache(PAGE)
    radix.insert_prefix("a", conversation(1, pages=3), [0, 1, 2])
    radix.insert_prefix("b", conversation(1, pages=2), [3, 4])
    node = radix.match_prefix("a", conversation(1, pages=2), touch=False).node
    assert radix.path_of(node) == ("a", tuple(conversation(1, pages=2)))


def test_pages_of_an_agent_due_back_are_evicted_after_other_unused_pages() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    cache(conversation(1, pages=16))
    assert pins.pin("ns", conversation(1, pages=16), ttl_s=10.0) == 16 * PAGE  # the share
    cache(conversation(2))  # an agent now waiting on a tool: no room left to pin it
    assert pins.pin("ns", conversation(2), ttl_s=60.0, due_s=30.0) == 0
    clock.now += 1.0
    cache(conversation(3))  # a one-shot prompt, used after the agent's turn
    # the one-shot prompt's pages go first, though the agent's were used before them
    assert sorted(radix.evict(4)) == list(range(20, 24))
    assert radix.size_info().pinned_pages == 16
    # still evictable (an order, not a hold), once nothing else is
    assert sorted(radix.evict(4)) == list(range(16, 20))


def test_pages_a_pin_gives_up_are_evicted_after_pages_used_since_it_was_made() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    cache(conversation(1, pages=12))
    assert pins.pin("ns", conversation(1, pages=12), ttl_s=90.0, due_s=60.0) == 12 * PAGE
    clock.now += 1.0
    cache(conversation(3))  # a one-shot prompt, used after the pin was made
    clock.now += 1.0
    cache(conversation(2, pages=6))
    # due sooner: the first pin gives up its last two pages (page ids 10, 11)
    assert pins.pin("ns", conversation(2, pages=6), ttl_s=10.0) == 6 * PAGE
    assert pins.stats()["trimmed"] == 1
    # the one-shot prompt goes first: the trimmed end is ranked as used when its pin would
    # have expired, not when it was pinned (which is before the one-shot prompt's use)
    assert sorted(radix.evict(4)) == list(range(12, 16))
    cached = radix.match_prefix("ns", conversation(1, pages=12), touch=False)  # not a use
    assert cached.num_tokens == 12 * PAGE
    # an overdue pin gives up its end first: those pages too outlast pages used since it
    # was made
    clock.now += 70.0  # the first agent is overdue (due at 60 s, its pin lasts to 90 s)
    cache(conversation(4))
    cache(conversation(5, pages=14))
    assert pins.pin("ns", conversation(5, pages=14), ttl_s=30.0) == 14 * PAGE
    assert (pins.stats()["trimmed"], pins.stats()["displaced"]) == (2, 0)
    # first the expired pin's pages (ranked at its expiry, 12 s) and the later one-shot
    # prompt; the overdue agent's pages, ranked at its expiry (90 s), are all still cached
    assert sorted(radix.evict(10)) == list(range(16, 26))
    assert radix.match_prefix("ns", conversation(1, pages=12)).num_tokens == 12 * PAGE


def test_an_agent_back_late_finds_the_unpinned_end_of_its_conversation() -> None:
    clock, radix, pins, cache = setup(pool_pages=64, share=0.25)  # 16 pages
    cache(conversation(1, pages=16))
    assert pins.pin("ns", conversation(1, pages=16), ttl_s=10.0) == 16 * PAGE  # the share
    cache(conversation(2))
    # due after the held pin: no room, not pinned, but ranked as used when its pin would end
    assert pins.pin("ns", conversation(2), ttl_s=30.0, due_s=20.0) == 0
    clock.now += 25.0  # past its due time (20 s), before its TTL (30 s): back late
    cache(conversation(3))  # a one-shot prompt, used after the agent was due
    # the expired pin's pages and the one-shot prompt go; the late agent's stay
    assert sorted(radix.evict(20)) == list(range(0, 16)) + list(range(20, 24))
    assert radix.match_prefix("ns", conversation(2), touch=False).num_tokens == 4 * PAGE


def test_a_hint_orders_eviction_until_the_next_use() -> None:
    clock = Clock()
    radix = RadixCache(PAGE, clock=clock)
    radix.insert_prefix("ns", conversation(1, pages=2), [0, 1])
    clock.now += 1.0
    radix.insert_prefix("ns", conversation(2, pages=2), [2, 3])
    assert radix.keep_until("ns", conversation(1, pages=2), clock.now + 50.0) == 2 * PAGE
    assert sorted(radix.evict(2)) == [2, 3]  # the later-used but unhinted pages go first
    radix.insert_prefix("ns", conversation(2, pages=2), [2, 3])
    radix.match_prefix("ns", conversation(1, pages=2))  # used again: a plain stamp, now
    clock.now += 1.0
    radix.match_prefix("ns", conversation(2, pages=2))
    assert sorted(radix.evict(2)) == [0, 1]
