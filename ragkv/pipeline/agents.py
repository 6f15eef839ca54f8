"""How long agents take to come back from their tools, per tenant and tool: the TTL of the
KV pin made when a turn ends in tool calls (`engine/tool_pins.py`).

A call is recorded when the answer with it is sent; its round trip ends when a later request
of the same tenant carries a `tool` message answering that call id. The TTL for a new pin is
a high percentile of the recent round trips of the tools called, times a margin, within
`[min_s, max_s]`; with fewer than `min_samples` round trips seen it is `default_s`. The agent
is due back by that percentile itself (`due`). A tool with too few round trips seen is due
by the same percentile of all the tenant's recent round trips, whatever the tool (the agents
of a tenant call tools of like speed more often than not; without it, a first call of a tool
was ranked due at its TTL, after every predicted pin, and its pages went first although its
agent came back as soon as the others); with too few of those too, it has no due time (a
default TTL is not a prediction: nobody is overdue before it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

from ragkv.pipeline.answer import ToolCall

MAX_OPEN_CALLS = 10_000  # calls waiting for their result that are remembered (oldest dropped)


class ToolLatency:
    """Round-trip times of tool calls, and the pin TTL they predict."""

    def __init__(
        self,
        default_s: float,
        min_s: float,
        max_s: float,
        quantile: float = 0.9,
        margin: float = 1.5,
        window: int = 64,
        min_samples: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.default_s, self.min_s, self.max_s = default_s, min_s, max_s
        self.quantile, self.margin, self.window, self.min_samples = (
            quantile,
            margin,
            window,
            min_samples,
        )
        self.clock = clock
        self._open: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()
        self._seen: dict[tuple[str, str], deque[float]] = {}
        self._seen_by_tenant: dict[str, deque[float]] = {}  # every tool's, for `due`
        self._lock = threading.Lock()

    def issued(self, tenant: str, calls: Iterable[ToolCall]) -> None:
        """An answer with these calls was sent: their round trips start now."""
        now = self.clock()
        with self._lock:
            for call in calls:
                self._open[(tenant, call.id)] = (call.name, now)
            while len(self._open) > MAX_OPEN_CALLS:
                self._open.popitem(last=False)

    def returned(self, tenant: str, messages: Iterable[dict[str, Any]]) -> None:
        """A request arrived: each `tool` message answering an open call ends its trip."""
        now = self.clock()
        with self._lock:
            for message in messages:
                if message.get("role") != "tool":
                    continue
                opened = self._open.pop((tenant, str(message.get("tool_call_id"))), None)
                if opened is not None:
                    name, started = opened
                    seen = self._seen.setdefault((tenant, name), deque(maxlen=self.window))
                    seen.append(now - started)
                    pooled = self._seen_by_tenant.setdefault(tenant, deque(maxlen=self.window))
                    pooled.append(now - started)

    def ttl(self, tenant: str, names: Iterable[str]) -> float:
        """The pin TTL for a turn calling `names`: the longest of their predictions."""
        with self._lock:
            return max((self._predict(tenant, name) for name in names), default=self.default_s)

    def due(self, tenant: str, names: Iterable[str]) -> float | None:
        """When a turn calling `names` is expected back at the latest: the longest of their
        round trips' high percentiles (the TTL without its margin; a tool with fewer than
        `min_samples` round trips seen: the tenant's, any tool); None while one of them has
        no such figure (the default TTL predicts nothing, so nothing is overdue before it)."""
        with self._lock:
            pooled = self._percentile(self._seen_by_tenant.get(tenant, ()))
            highs = [self._high(tenant, name) for name in names]
            highs = [pooled if high is None else high for high in highs]
        known = [high for high in highs if high is not None]
        if not known or len(known) < len(highs):
            return None
        return min(self.max_s, max(self.min_s, max(known)))

    def stats(self) -> dict[str, dict[str, float]]:
        """Per `tenant/tool`: round trips seen and the TTL they predict now."""
        with self._lock:
            return {
                f"{tenant}/{name}": {"round_trips": len(seen), "ttl_s": self._predict(tenant, name)}
                for (tenant, name), seen in self._seen.items()
            }

    def _predict(self, tenant: str, name: str) -> float:
        high = self._high(tenant, name)
        if high is None:
            return self.default_s
        return min(self.max_s, max(self.min_s, high * self.margin))

    def _high(self, tenant: str, name: str) -> float | None:
        """The high percentile of the tool's recent round trips; None with too few seen."""
        return self._percentile(self._seen.get((tenant, name), ()))

    def _percentile(self, round_trips: Iterable[float]) -> float | None:
        """The `quantile` of `round_trips`; None with fewer than `min_samples`."""
        seen = sorted(round_trips)
        if len(seen) < self.min_samples:
            return None
        return seen[min(len(seen) - 1, int(self.quantile * len(seen)))]
