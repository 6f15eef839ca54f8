"""Tool-aware KV pins (Continuum): when an agent's turn ends in tool calls, its conversation's
KV is pinned until the agent comes back with the results, for a TTL the pipeline predicts
from how long that tool's round trips take, within a bounded share of the pool.

The pin key is the conversation itself (its page-aligned prompt tokens): no session id is
needed. The follow-up turn starts with the same tokens; when it is admitted the pin is hit and
released (the follow-up's own lock keeps the pages while it runs). A pin whose TTL passes
first is counted as expired unused. Pins never hold more than `max_share` of the pool.

Which pin goes when room is short: a pin whose agent is overdue (past its due time, the high
percentile of its tools' round trips: later than most trips, maybe never coming back) goes
first, the most overdue first; then, Belady-like, the one due last, since its pages would sit
idle longest. A new pin displaces held pins in that order while they are overdue or due
after it, and is refused when the ones left are all due sooner. A running sequence short of
pages takes them from pins in the same order before the scheduler preempts anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragkv.cache.kv.radix import RadixCache


@dataclass
class _Pin:
    namespace: str
    path: tuple[int, ...]
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
    ) -> None:
        self.radix = radix
        self.page_size = page_size
        self.max_pages = int(max_share * pool_pages)
        self.clock = radix.clock  # the tree's clock: its pins lapse when ours do
        self._pins: dict[tuple[str, tuple[int, ...]], _Pin] = {}
        self.counts = {"made": 0, "hit": 0, "expired_unused": 0, "displaced": 0, "refused": 0,
                       "yielded": 0}  # fmt: skip

    @property
    def pinned_pages(self) -> int:
        """Pages under tool pins now (overlapping pins counted once each)."""
        return sum(pin.pages for pin in self._pins.values())

    def pin(
        self, namespace: str, token_ids: Sequence[int], ttl_s: float, due_s: float | None = None
    ) -> int:
        """Pin the cached whole pages of `token_ids` for `ttl_s`, the agent due back within
        `due_s` (default `ttl_s`); returns tokens pinned."""
        self.expire()
        # A conversation longer than the whole share keeps its first pages pinned (a prefix
        # is still a prefix hit).
        pages = min(len(token_ids) // self.page_size, self.max_pages)
        key = (namespace, tuple(token_ids[: pages * self.page_size]))
        if key in self._pins:
            self._drop(key)  # the same conversation pinned again: a fresh TTL
        now = self.clock()
        until = now + ttl_s
        due = until if due_s is None else min(until, now + due_s)
        while pages and self.pinned_pages + pages > self.max_pages:
            first = self._give_up_first()
            held = self._pins[first]
            if now < held.due <= due:
                break  # every held pin is due back sooner than this one
            self._drop(first)
            self.counts["displaced"] += 1
        pinned = 0
        if pages and self.pinned_pages + pages <= self.max_pages:
            pinned = self.radix.pin(namespace, key[1], ttl_s)
        if not pinned:
            # not a whole page, no room before pins due sooner, or not cached (evicted
            # already, or prefix cache off)
            self.counts["refused"] += 1
            return 0
        self._pins[key] = _Pin(namespace, key[1], until, due, pinned // self.page_size)
        self.counts["made"] += 1
        return pinned

    def on_admit(self, namespace: str, token_ids: Sequence[int]) -> None:
        """A request was admitted: a pin its prompt starts with is hit and released."""
        for key, pin in list(self._pins.items()):
            if pin.namespace == namespace and tuple(token_ids[: len(pin.path)]) == pin.path:
                self._drop(key)
                self.counts["hit"] += 1

    def expire(self) -> None:
        """Forget pins whose TTL passed (the tree's own pin has lapsed by then)."""
        now = self.clock()
        for key, pin in list(self._pins.items()):
            if pin.until <= now:
                del self._pins[key]
                self.counts["expired_unused"] += 1

    def yield_one(self) -> bool:
        """Give up one pin (overdue first, then the one due last), for a running sequence
        that needs pages (it goes before a waiting agent: dropping a pin costs that agent a
        prefill later, preempting costs the running one its progress now); False when no pin
        is held."""
        self.expire()
        first = self._give_up_first()
        if first is None:
            return False
        self._drop(first)
        self.counts["yielded"] += 1
        return True

    def clear(self) -> None:
        """Forget every pin (the prefix cache was flushed)."""
        self._pins.clear()

    def stats(self) -> dict[str, object]:
        """Pins made, hit, expired unused, displaced (by a pin due sooner, or overdue), refused
        (not cached, or no room before pins due sooner), yielded (to a running sequence short
        of pages); active pins and pool share."""
        self.expire()
        return {
            **self.counts,
            "active": len(self._pins),
            "pinned_pages": self.pinned_pages,
            "max_pages": self.max_pages,
        }

    def _give_up_first(self) -> tuple[str, tuple[int, ...]] | None:
        """The pin to give up first: the most overdue, else the one due back last."""
        now = self.clock()

        def rank(key: tuple[str, tuple[int, ...]]) -> tuple[bool, float]:
            due = self._pins[key].due
            return (True, -due) if due <= now else (False, due)

        return max(self._pins, key=rank, default=None)

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        pin = self._pins.pop(key)
        self.radix.unpin(pin.namespace, pin.path)
