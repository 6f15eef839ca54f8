"""Search latency as the operator sees it: the last searches' durations, kept in memory."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager


class SearchTimings:
    """Durations (ms) of the last `window` searches; thread-safe."""

    def __init__(self, window: int = 1000) -> None:
        self._ms: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.count = 0

    @contextmanager
    def measure(self) -> Iterator[None]:
        """Time the block as one search (counted when it ends, also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self._ms.append((time.perf_counter() - started) * 1000)
                self.count += 1

    def summary(self) -> dict[str, float | int | None]:
        """Searches since start and p50/p95 (ms) of the recent ones (None before any)."""
        with self._lock:
            recent = list(self._ms)
            count = self.count
        if len(recent) < 2:
            value = recent[0] if recent else None
            return {"searches": count, "p50_ms": value, "p95_ms": value}
        cuts = statistics.quantiles(recent, n=20, method="inclusive")
        return {"searches": count, "p50_ms": statistics.median(recent), "p95_ms": cuts[18]}
