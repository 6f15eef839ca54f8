"""Tool-aware KV pins (Continuum): when an agent's turn ends in tool calls, its conversation's
KV is pinned until the agent comes back with the results, for a TTL the pipeline predicts
from how long that tool's round trips take, within a bounded share of the pool.

The pin key is the conversation itself (its page-aligned prompt tokens): no session id is
needed. The follow-up turn starts with the same tokens; when it is admitted the pin is hit and
released (the follow-up's own lock keeps the pages while it runs). A pin whose TTL passes
first is counted as expired unused. Pins never hold more than `max_share` of the pool.

Which pages go when room is short: a pin whose agent is overdue (past its due time, the high
percentile of its tools' round trips: later than most trips, maybe never coming back; with
no round trips seen yet, its TTL) goes first, the most overdue first; then, Belady-like, the
pin due last, since its pages would sit idle longest. Either is trimmed, not dropped: it
gives up only the pages needed, from its end, and keeps its first pages (a prefix still saves
its agent that much prefill: every pinned page saves one page of recompute, so the share is
best filled by the agents due soonest, the last of them in part). An overdue agent is often
only late (every agent came back in the benchmark's runs without abandonment): dropped whole,
its conversation was evicted and its return a full miss; trimmed, the pages it keeps block
nothing, since it gives them up first whenever room is short.
A new pin takes room from held pins in that order while they are overdue or due after it;
when the ones left are all due sooner it gets what room is left, its first pages, and is
refused only when none is. A running sequence short of pages takes them from pins in the
same order before the scheduler preempts anything.

On demand (the engine's default), a pin holds nothing until it is needed: the conversation waits
unpinned, ranked late (below), and is pinned at the moment eviction reaches it, by the same
rules (`rescue`, called by the tree before it evicts a page). Until then its pages are still
evictable by anyone who needs them after every page ranked before; a conversation the cache
keeps by itself until its agent is back is never pinned at all (counted `not_needed`). Made
at the turn's end instead (`on_demand=False`, what fixed pins do), a pin holds its pages from
the tool call on, whether or not anything would have evicted them.

Every page of the conversation, pinned or not (waiting, no room in the share, trimmed,
displaced), is ranked for eviction as if used when the pin expires: its agent may come back
until then (past its due time too: a late round trip is not an abandoned one), and pages
nobody is coming back for (one-shot prompts, older turns) are evicted before it. That is an
order, not a hold: those pages stay evictable, so other traffic is never refused for them.
Pinning is not a use and leaves that rank as it is. (Ranked at the due time instead, the
unpinned end of a partial pin whose agent came back a few seconds late had gone behind every
page used in between: a miss that fixed 60 s pins, hinting 60 s ahead, did not have.)
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ragkv.cache.kv.radix import RadixCache, RadixNode

log = logging.getLogger(__name__)  # DEBUG: one line per pin event (benchmarks' --pin-log)


@dataclass
class _Pin:
    namespace: str
    path: tuple[int, ...]  # the pinned prefix (all of `conversation`, its first pages, or
    # none: waiting on demand)
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
        on_demand: bool = False,
    ) -> None:
        self.radix = radix
        self.page_size = page_size
        self.max_pages = int(max_share * pool_pages)
        self.on_demand = on_demand
        self.clock = radix.clock  # the tree's clock: its pins lapse when ours do
        self._pins: dict[tuple[str, tuple[int, ...]], _Pin] = {}
        self.counts = {"made": 0, "held": 0, "hit": 0, "expired_unused": 0, "displaced": 0,
                       "refused": 0, "yielded": 0, "partial": 0, "trimmed": 0,
                       "not_needed": 0}  # fmt: skip
        if on_demand:
            radix.rescue = self._rescue

    @property
    def pinned_pages(self) -> int:
        """Pages under tool pins now (overlapping pins counted once each)."""
        return sum(pin.pages for pin in self._pins.values())

    def pin(
        self, namespace: str, token_ids: Sequence[int], ttl_s: float, due_s: float | None = None
    ) -> int:
        """Pin the cached whole pages of `token_ids` for `ttl_s`, the agent due back within
        `due_s` (default `ttl_s`); returns tokens pinned (its first pages only when the share
        has no room for all of them), or on demand the tokens cached that a pin will hold
        once eviction reaches them."""
        self.expire()
        for key in [k for k in self._pins if _same_conversation(k, namespace, token_ids)]:
            self._drop(key)  # the same conversation pinned again: a fresh TTL
        # A conversation longer than the whole share keeps its first pages pinned (a prefix
        # is still a prefix hit).
        pages = min(len(token_ids) // self.page_size, self.max_pages)
        now = self.clock()
        until = now + ttl_s
        due = until if due_s is None else min(until, now + due_s)
        conversation = tuple(token_ids[: pages * self.page_size])
        if self.max_pages > 0:
            self.radix.keep_until(namespace, token_ids, until)  # unpinned: evicted late
        cached = self.radix.match_prefix(namespace, conversation, touch=False).num_tokens
        if not self.on_demand or not cached:
            return self._hold(_Pin(namespace, (), conversation, until, due, pages))
        self._pins[(namespace, conversation)] = _Pin(namespace, (), conversation, until, due, 0)
        self.counts["made"] += 1
        log.debug("wait %s ttl %.1f due %.1f cached %d", _Tag(conversation), ttl_s, due - now,
                  cached // self.page_size)  # fmt: skip
        return cached

    def _hold(self, pin: _Pin) -> int:
        """Pin the pages of `pin.conversation` (its first pages when room is short), giving up
        pages of held pins in the order of the module docstring; tokens pinned."""
        now = self.clock()
        pages = len(pin.conversation) // self.page_size
        key = (pin.namespace, pin.conversation)
        while pages and self.pinned_pages + pages > self.max_pages:
            first = self._give_up_first()
            held = self._pins[first]
            if now < held.due <= pin.due:
                break  # every held pin is due back sooner than this one
            self._give_up(first, self.pinned_pages + pages - self.max_pages)
        room = min(pages, self.max_pages - self.pinned_pages)
        pinned = 0
        if room > 0:
            path = pin.conversation[: room * self.page_size]
            pinned = self.radix.pin(pin.namespace, path, pin.until - now)
        if not pinned:
            # not a whole page, no room before pins due sooner, or not cached (evicted
            # already, or prefix cache off)
            self.counts["refused"] += 1
            self._pins.pop(key, None)
            log.debug("refused %s pinned %d", _Tag(pin.conversation), self.pinned_pages)
            return 0
        path = pin.conversation[:pinned]
        self._pins[key] = replace(pin, path=path, pages=pinned // self.page_size)
        self.counts["made"] += not self.on_demand
        self.counts["held"] += 1
        self.counts["partial"] += room < pages
        log.debug("hold %s %d/%d pages, pinned %d", _Tag(pin.conversation),
                  pinned // self.page_size, pages, self.pinned_pages)  # fmt: skip
        return pinned

    def _rescue(self, node: RadixNode) -> bool:
        """Eviction reached `node`: when it is a page of a conversation waiting on demand, pin
        that conversation now (see the module docstring); whether a waiting pin was taken
        up (held or refused)."""
        waiting = [pin for pin in self._pins.values() if not pin.path]
        if not waiting:
            return False
        namespace, tokens = self.radix.path_of(node)
        now = self.clock()
        mine = [
            pin
            for pin in waiting
            if pin.namespace == namespace
            and pin.conversation[: len(tokens)] == tokens
            and pin.until > now
        ]
        if not mine:
            return False
        self._hold(min(mine, key=lambda pin: pin.due))
        return True

    def on_admit(self, namespace: str, token_ids: Sequence[int]) -> None:
        """A request was admitted: the pin of the conversation its prompt continues is hit
        and released."""
        for key in list(self._pins):
            if _same_conversation(key, namespace, token_ids):
                pin = self._pins[key]
                self.counts["not_needed"] += not pin.path
                log.debug("hit %s held %d", _Tag(pin.conversation), pin.pages)
                self._drop(key)
                self.counts["hit"] += 1

    def expire(self) -> None:
        """Forget pins whose TTL passed (the tree's own pin has lapsed by then)."""
        now = self.clock()
        for key, pin in list(self._pins.items()):
            if pin.until <= now:
                del self._pins[key]
                log.debug("expired %s held %d", _Tag(pin.conversation), pin.pages)
                self.counts["expired_unused"] += 1
                self.counts["not_needed"] += not pin.path

    def yield_pages(self, count: int) -> bool:
        """Give up `count` pinned pages (the end of the most overdue pin, else of the one due
        last, see the module docstring) for a running sequence that needs pages: it goes
        before a waiting agent, since unpinned pages cost that agent a prefill later and
        preempting costs the running one its progress now. False when no pin is held."""
        self.expire()
        first = self._give_up_first()
        if first is None:
            return False
        log.debug("yield %d", count)
        self._give_up(first, max(1, count))
        self.counts["yielded"] += 1
        return True

    def clear(self) -> None:
        """Forget every pin (the prefix cache was flushed)."""
        self._pins.clear()

    def stats(self) -> dict[str, object]:
        """Pins made, held (pages pinned: at once, or on demand once eviction reached them;
        partial: their first pages only), not needed (on demand: hit or expired without
        holding a page), hit, expired unused, displaced (dropped whole: every page needed),
        trimmed (gave up their last pages), refused (not cached, or no room before pins due
        sooner), yielded (to a running sequence short of pages); pins active
        (holding pages) and waiting (on demand, holding none yet), and pool share."""
        self.expire()
        held = sum(1 for pin in self._pins.values() if pin.path)
        return {
            **self.counts,
            "active": held,
            "waiting": len(self._pins) - held,
            "pinned_pages": self.pinned_pages,
            "max_pages": self.max_pages,
        }

    def _give_up_first(self) -> tuple[str, tuple[int, ...]] | None:
        """The pin to give up first: the most overdue, else the one due back last."""
        now = self.clock()

        def rank(key: tuple[str, tuple[int, ...]]) -> tuple[bool, float]:
            due = self._pins[key].due
            return (True, -due) if due <= now else (False, due)

        held = [key for key, pin in self._pins.items() if pin.path]
        return max(held, key=rank, default=None)

    def _give_up(self, key: tuple[str, tuple[int, ...]], count: int) -> None:
        """Free `count` pages of pin `key`: its last `count` pages (its first ones stay pinned
        until its expiry), the whole pin when it has no more."""
        pin = self._pins[key]
        keep = pin.pages - count
        self._drop(key)
        if keep <= 0:
            self.counts["displaced"] += 1
            log.debug("displaced %s held %d overdue %s", _Tag(pin.conversation), pin.pages,
                      pin.due <= self.clock())  # fmt: skip
            return
        path = pin.path[: keep * self.page_size]
        pinned = self.radix.pin(pin.namespace, path, pin.until - self.clock())
        self._pins[key] = replace(pin, path=path, pages=pinned // self.page_size)
        self.counts["trimmed"] += 1
        log.debug("trim %s %d -> %d", _Tag(pin.conversation), pin.pages, pinned // self.page_size)

    def _drop(self, key: tuple[str, tuple[int, ...]]) -> None:
        pin = self._pins.pop(key)
        if not pin.path:
            return  # waiting on demand: nothing held
        self.radix.unpin(pin.namespace, pin.path)
        # Unpinning clears the whole path in the tree: pins sharing its first pages (agents
        # with one system prompt) are pinned again for what is left of their TTL.
        now = self.clock()
        for other in self._pins.values():
            if (
                other.path
                and other.namespace == pin.namespace
                and other.path[: self.page_size] == pin.path[: self.page_size]
            ):
                self.radix.pin(other.namespace, other.path, other.until - now)


def _same_conversation(key: tuple[str, tuple[int, ...]], namespace: str, tokens: Sequence[int]):
    """Whether pin `key` is of a conversation `tokens` (in `namespace`) continues: the agent
    back with its tool results, or its conversation pinned again. A pin holding only its first
    pages still matches on the whole conversation: those pages may be a prefix that other
    conversations share (a system prompt, the tools block)."""
    return key[0] == namespace and tuple(tokens[: len(key[1])]) == key[1]


class _Tag:
    """A short name of a conversation for the debug log: its first tokens' checksum (one per
    agent when agents have their own system prompts) and its length in tokens. Lazy: made
    only when a record is written, so pin events cost nothing with DEBUG off."""

    __slots__ = ("conversation",)

    def __init__(self, conversation: tuple[int, ...]) -> None:
        self.conversation = conversation

    def __str__(self) -> str:
        head = ",".join(map(str, self.conversation[:256])).encode()
        return f"{zlib.crc32(head) % 10000:04d}/{len(self.conversation)}"
