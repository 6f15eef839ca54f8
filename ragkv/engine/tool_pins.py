"""Tool-aware KV pins (Continuum): when an agent's turn ends in tool calls, its conversation's
KV is pinned until the agent comes back with the results, for a TTL the pipeline predicts
from how long that tool's round trips take, within a bounded share of the pool.

The pin key is the conversation itself (its page-aligned prompt tokens): no session id is
needed. The follow-up turn starts with the same tokens; when it is admitted the pin is hit and
released (the follow-up's own lock keeps the pages while it runs). A pin whose TTL passes
first is counted as expired unused. Pins never hold more than `max_share` of the pool.

Which pages go when room is short: a pin whose agent is overdue (past its due time, the high
percentile of its tools' round trips: later than most trips, maybe never coming back; with
no round trips seen yet, its TTL) goes first and whole, the most overdue first; then,
Belady-like, the pin due last, since its pages would sit idle longest. That one is trimmed,
not dropped: it gives up only the pages needed, from its end, and keeps its first pages (a
prefix still saves its agent that much prefill: every pinned page saves one page of
recompute, so the share is best filled by the agents due soonest, the last of them in part).
A new pin takes room from held pins in that order while they are overdue or due after it;
when the ones left are all due sooner it gets what room is left, its first pages, and is
refused only when none is. A running sequence short of pages takes them from pins in the
same order before the scheduler preempts anything.

A pin is made only where it is needed. The conversation is ranked for eviction as if used
when its pin would expire (below), so eviction takes every page ranked before that first.
When those pages outnumber what the cache evicts until then at its recent rate (the
evictions of the last `retention_window_s`), the conversation would still be cached when its
agent is back without a pin, and pinning it would only hold pages that others may need
(Continuum pins by the same reasoning: a pin is worth its pages only when the tool call
outlasts what the cache keeps). With no eviction in that window the pressure is unknown and
the pin is made.

Every page of the conversation, pinned or not (no room in the share, trimmed, displaced, not
needed), is ranked for eviction as if used when the pin expires: its agent may come back
until then (past its due time too: a late round trip is not an abandoned one), and pages
nobody is coming back for (one-shot prompts, older turns) are evicted before it. That is an
order, not a hold: those pages stay evictable, so other traffic is never refused for them.
Pinning is not a use and leaves that rank as it is. (Ranked at the due time instead, the
unpinned end of a partial pin whose agent came back a few seconds late had gone behind every
page used in between: a miss that fixed 60 s pins, hinting 60 s ahead, did not have.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ragkv.cache.kv.radix import RadixCache


@dataclass
class _Pin:
    namespace: str
    path: tuple[int, ...]  # the pinned prefix (all of `conversation`, or its first pages)
    conversation: tuple[int, ...]  # what the agent comes back with: hits match all of it
    until: float  # expiry (the TTL)
    due: float  # when the agent is expected back at the latest (see the module docstring)
    pages: int


class ToolPins:
    """The tool pins of one engine (the engine's step thread calls it)."""

    def __init__(
        self,
        radix: RadixCache,
        pool_pages: int,
        page_size: int,
        max_share: float,
        retention_window_s: float = 0.0,
    ) -> None:
        self.radix = radix
        self.page_size = page_size
        self.max_pages = int(max_share * pool_pages)
        self.retention_window_s = retention_window_s  # 0: always pin
        self.clock = radix.clock  # the tree's clock: its pins lapse when ours do
        self._pins: dict[tuple[str, tuple[int, ...]], _Pin] = {}
        self.counts = {"made": 0, "hit": 0, "expired_unused": 0, "displaced": 0, "refused": 0,
                       "yielded": 0, "partial": 0, "trimmed": 0, "not_needed": 0}  # fmt: skip

    @property
    def pinned_pages(self) -> int:
        """Pages under tool pins now (overlapping pins counted once each)."""
        return sum(pin.pages for pin in self._pins.values())

    def pin(
        self, namespace: str, token_ids: Sequence[int], ttl_s: float, due_s: float | None = None
    ) -> int:
        """Pin the cached whole pages of `token_ids` for `ttl_s`, the agent due back within
        `due_s` (default `ttl_s`); returns tokens pinned (its first pages only when the share
        has no room for all of them)."""
        self.expire()
        for key in [k for k in self._pins if _same_conversation(k, namespace, token_ids)]:
            self._drop(key)  # the same conversation pinned again: a fresh TTL
        # A conversation longer than the whole share keeps its first pages pinned (a prefix
        # is still a prefix hit).
        pages = min(len(token_ids) // self.page_size, self.max_pages)
        now = self.clock()
        until = now + ttl_s
        due = until if due_s is None else min(until, now + due_s)
        if self.max_pages > 0:
            self.radix.keep_until(namespace, token_ids, until)  # unpinned: evicted late
        if self._survives_unpinned(until):
            self.counts["not_needed"] += 1  # the cache keeps it that long unpinned
            return 0
        while pages and self.pinned_pages + pages > self.max_pages:
            first = self._give_up_first()
            held = self._pins[first]
            if now < held.due <= due:
                break  # every held pin is due back sooner than this one
            self._give_up(first, self.pinned_pages + pages - self.max_pages)
        room = min(pages, self.max_pages - self.pinned_pages)
        pinned = 0
        if room > 0:
            pinned = self.radix.pin(namespace, token_ids[: room * self.page_size], ttl_s)
        if not pinned:
            # not a whole page, no room before pins due sooner, or not cached (evicted
            # already, or prefix cache off)
            self.counts["refused"] += 1
            return 0
        conversation = tuple(token_ids[: pages * self.page_size])
        pin = _Pin(
            namespace, conversation[:pinned], conversation, until, due, pinned // self.page_size
        )
        self._pins[(namespace, conversation)] = pin
        self.counts["made"] += 1
        self.counts["partial"] += room < pages
        return pinned

    def on_admit(self, namespace: str, token_ids: Sequence[int]) -> None:
        """A request was admitted: the pin of the conversation its prompt continues is hit
        and released."""
        for key in list(self._pins):
            if _same_conversation(key, namespace, token_ids):
                self._drop(key)
                self.counts["hit"] += 1

    def expire(self) -> None:
        """Forget pins whose TTL passed (the tree's own pin has lapsed by then)."""
        now = self.clock()
        for key, pin in list(self._pins.items()):
            if pin.until <= now:
                del self._pins[key]
                self.counts["expired_unused"] += 1

    def yield_pages(self, count: int) -> bool:
        """Give up `count` pinned pages (the most overdue pin whole, else the end of the one due
        last, see the module docstring) for a running sequence that needs pages: it goes
        before a waiting agent, since unpinned pages cost that agent a prefill later and
        preempting costs the running one its progress now. False when no pin is held."""
        self.expire()
        first = self._give_up_first()
        if first is None:
            return False
        self._give_up(first, max(1, count))
        self.counts["yielded"] += 1
        return True

    def clear(self) -> None:
        """Forget every pin (the prefix cache was flushed)."""
        self._pins.clear()

    def stats(self) -> dict[str, object]:
        """Pins made (partial: made with their first pages only), not needed (the cache keeps
        unused pages longer than the agent is due back in), hit, expired unused, displaced
        (dropped whole: overdue, or every page needed), trimmed (gave up their last pages),
        refused (not cached, or no room before pins due sooner), yielded (to a running
        sequence short of pages); active pins and pool share."""
        self.expire()
        return {
            **self.counts,
            "active": len(self._pins),
            "pinned_pages": self.pinned_pages,
            "max_pages": self.max_pages,
        }

    def _survives_unpinned(self, until: float) -> bool:
        """Whether a conversation ranked as used at `until` would outlast its pin unpinned:
        eviction takes more pages ranked before it than the cache evicts until then at its
        recent rate (no evictions seen: unknown, False)."""
        if self.retention_window_s <= 0 or self.max_pages <= 0:
            return False
        rate = self.radix.eviction_rate(self.retention_window_s)
        if rate is None:
            return False
        evicted = rate * (until - self.clock())  # pages the cache evicts until the expiry
        enough = int(evicted) + 1
        return self.radix.pages_ranked_before(until, enough) >= enough

    def _give_up_first(self) -> tuple[str, tuple[int, ...]] | None:
        """The pin to give up first: the most overdue, else the one due back last."""
        now = self.clock()

        def rank(key: tuple[str, tuple[int, ...]]) -> tuple[bool, float]:
            due = self._pins[key].due
            return (True, -due) if due <= now else (False, due)

        return max(self._pins, key=rank, default=None)

    def _give_up(self, key: tuple[str, tuple[int, ...]], count: int) -> None:
        """Free `count` pages of pin `key`: the whole pin when it is overdue or has no more,
        else its last `count` pages (its first ones stay pinned until its expiry)."""
        pin = self._pins[key]
        keep = pin.pages - count
        self._drop(key)
        if pin.due <= self.clock() or keep <= 0:
            self.counts["displaced"] += 1
            return
        path = pin.path[: keep * self.page_size]
        pinned = self.radix.pin(pin.namespace, path, pin.until - self.clock())
        self._pins[key] = replace(pin, path=path, pages=pinned // self.page_size)
        self.counts["trimmed"] += 1

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        pin = self._pins.pop(key)
        self.radix.unpin(pin.namespace, pin.path)
        # Unpinning clears the whole path in the tree: pins sharing its first pages (agents
        # with one system prompt) are pinned again for what is left of their TTL.
        now = self.clock()
        for other in self._pins.values():
            if (
                other.namespace == pin.namespace
                and other.path[: self.page_size] == pin.path[: self.page_size]
            ):
                self.radix.pin(other.namespace, other.path, other.until - now)


def _same_conversation(key: tuple[str, tuple[int, ...]], namespace: str, tokens: Sequence[int]):
    """Whether pin `key` is of a conversation `tokens` (in `namespace`) continues: the agent
    back with its tool results, or its conversation pinned again. A pin holding only its first
    pages still matches on the whole conversation: those pages may be a prefix that other
    conversations share (a system prompt, the tools block)."""
    return key[0] == namespace and tuple(tokens[: len(key[1])]) == key[1]
