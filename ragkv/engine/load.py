"""How fast the engine drains its queue, measured: the Retry-After of a 503 is the time the
requests ahead take to finish at the rate requests finished lately, not a constant."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class DrainRate:
    """Requests finished per second over the last `window_s` seconds (thread-safe: the
    engine thread records, the event loop and the metrics scrape read)."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._finished: deque[float] = deque()
        self._lock = threading.Lock()

    def finished(self) -> None:
        """Record one finished request (now)."""
        with self._lock:
            self._finished.append(self.clock())
            self._trim()

    def _trim(self) -> None:
        horizon = self.clock() - self.window_s
        while self._finished and self._finished[0] < horizon:
            self._finished.popleft()

    def per_s(self) -> float | None:
        """Finishes per second over the window; None before two finishes in it (no rate)."""
        with self._lock:
            self._trim()
            if len(self._finished) < 2:
                return None
            span_s = max(self.clock() - self._finished[0], 1e-3)
            return len(self._finished) / span_s

    def retry_after_s(self, queued: int, floor_s: int, cap_s: int = 120) -> int:
        """Seconds until `queued` requests have drained at the measured rate, within
        `floor_s..cap_s` (`floor_s` while no rate is known)."""
        rate = self.per_s()
        if rate is None:
            return floor_s
        return int(min(cap_s, max(floor_s, math.ceil(queued / rate))))
