"""Tool-aware KV pins (Continuum): when an agent's turn ends in tool calls, its conversation's
KV is pinned until the agent comes back with the results, for a TTL the pipeline predicts
from how long that tool's round trips take, within a bounded share of the pool.

The pin key is the conversation itself (its page-aligned prompt tokens): no session id is
needed. The follow-up turn starts with the same tokens; when it is admitted the pin is hit and
released (the follow-up's own lock keeps the pages while it runs). A pin whose TTL passes
first is counted as expired unused. Pins never hold more than `max_share` of the pool.

Which pin goes when room is short follows Belady: the one whose agent is predicted back last
(the latest expiry: TTLs are predicted from each tool's round trips) is given up first, since
its pages would sit idle longest. A new pin displaces held pins predicted back after it; when
the ones left come back sooner, it pins only its first pages that still fit (a prefix is
still a prefix hit), or nothing. A running sequence short of pages takes them from pins, the
one predicted back last first, before the scheduler preempts anything.
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
        pages = min(len(token_ids) // self.page_size, self.max_pages)
        key = (namespace, tuple(token_ids[: pages * self.page_size]))
        if key in self._pins:
            self._drop(key)  # the same conversation pinned again: a fresh TTL
        until = self.clock() + ttl_s
        while self.pinned_pages + pages > self.max_pages:
            last = self._back_last()
            if last is None or self._pins[last].until <= until:
                break  # every held pin comes back sooner than this one
            self._drop(last)
            self.counts["displaced"] += 1
        # What does not fit keeps its first pages pinned (a prefix is still a prefix hit).
        pages = min(pages, self.max_pages - self.pinned_pages)
        key = (namespace, tuple(token_ids[: pages * self.page_size]))
        if key in self._pins:
            self._drop(key)
        pinned = self.radix.pin(namespace, key[1], ttl_s) if pages else 0
        if not pinned:
            # not a whole page, no room before pins back sooner, or not cached (evicted
            # already, or prefix cache off)
            self.counts["refused"] += 1
            return 0
        self._pins[key] = _Pin(namespace, key[1], until, pinned // self.page_size)
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
        """Drop the pin predicted back last, for a running sequence that needs pages (it goes
        before a waiting agent: dropping a pin costs that agent a prefill later, preempting
        costs the running one its progress now); False when no pin is held."""
        self.expire()
        last = self._back_last()
        if last is None:
            return False
        self._drop(last)
        self.counts["yielded"] += 1
        return True

    def clear(self) -> None:
        """Forget every pin (the prefix cache was flushed)."""
        self._pins.clear()

    def stats(self) -> dict[str, object]:
        """Pins made, hit, expired unused, displaced (by a pin predicted back sooner), refused
        (not cached, or no room left before pins predicted back sooner), yielded (to a running
        sequence short of pages); active pins and pool share."""
        self.expire()
        return {
            **self.counts,
            "active": len(self._pins),
            "pinned_pages": self.pinned_pages,
            "max_pages": self.max_pages,
        }

    def _back_last(self) -> tuple[str, tuple[int, ...]] | None:
        """The held pin whose agent is predicted back last (latest expiry), if any."""
        return max(self._pins, key=lambda k: self._pins[k].until, default=None)

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        pin = self._pins.pop(key)
        self.radix.unpin(pin.namespace, pin.path)
