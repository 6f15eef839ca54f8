"""Tool-aware KV pins (Continuum): when an agent's turn ends in tool calls, its conversation's
KV is pinned until the agent comes back with the results, for a TTL the pipeline predicts
from how long that tool's round trips take, within a bounded share of the pool.

The pin key is the conversation itself (its page-aligned prompt tokens): no session id is
needed. The follow-up turn starts with the same tokens; when it is admitted the pin is hit and
released (the follow-up's own lock keeps the pages while it runs). A pin whose TTL passes
first is counted as expired unused. Pins never hold more than `max_share` of the pool: a new
pin displaces the ones expiring soonest, and one longer than the share pins its first pages.
A running sequence short of pages takes them from pins (soonest-expiring first) before the
scheduler preempts anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ragkv.cache.kv.radix import RadixCache


@dataclass
class _Pin:
    namespace: str
    path: tuple[int, ...]
    until: float
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

    def pin(self, namespace: str, token_ids: Sequence[int], ttl_s: float) -> int:
        """Pin the cached whole pages of `token_ids` for `ttl_s`; returns tokens pinned."""
        self.expire()
        # A conversation longer than the whole share keeps its first pages pinned (a prefix
        # is still a prefix hit); it displaces every other pin.
        pages = min(len(token_ids) // self.page_size, self.max_pages)
        path = tuple(token_ids[: pages * self.page_size])
        if not pages:
            self.counts["refused"] += 1
            return 0
        key = (namespace, path)
        if key in self._pins:
            self._drop(key)
        while self.pinned_pages + pages > self.max_pages:
            soonest = min(self._pins, key=lambda k: self._pins[k].until)
            self._drop(soonest)
            self.counts["displaced"] += 1
        pinned = self.radix.pin(namespace, path, ttl_s)
        if not pinned:
            self.counts["refused"] += 1  # not cached (evicted already, or prefix cache off)
            return 0
        self._pins[key] = _Pin(namespace, path, self.clock() + ttl_s, pinned // self.page_size)
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
        """Drop the pin expiring soonest, for a running sequence that needs pages (it goes
        before a waiting agent: dropping a pin costs that agent a prefill later, preempting
        costs the running one its progress now); False when no pin is held."""
        self.expire()
        if not self._pins:
            return False
        self._drop(min(self._pins, key=lambda k: self._pins[k].until))
        self.counts["yielded"] += 1
        return True

    def clear(self) -> None:
        """Forget every pin (the prefix cache was flushed)."""
        self._pins.clear()

    def stats(self) -> dict[str, object]:
        """Pins made, hit, expired unused, displaced (by another pin), refused, yielded (to a
        running sequence short of pages); active pins and pool share."""
        self.expire()
        return {
            **self.counts,
            "active": len(self._pins),
            "pinned_pages": self.pinned_pages,
            "max_pages": self.max_pages,
        }

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        pin = self._pins.pop(key)
        self.radix.unpin(pin.namespace, pin.path)
