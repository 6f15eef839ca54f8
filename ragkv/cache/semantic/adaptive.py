"""Load-adaptive thresholds: under engine load, relax each category toward its floor.

Two modes with hysteresis: `normal` (thresholds as configured) and `relaxed` (entered when load
reaches `load_high`, left when it falls to `load_low`, never switching faster than
`min_dwell_s`). While relaxed, the relaxation follows the load: fraction
`(load - load_low) / (1 - load_low)` of the way from threshold to floor, never past the floor.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ragkv.errors import InvalidRequest
from ragkv.settings import CategoryPolicy

Clock = Callable[[], float]


class LoadAdapter:
    """Turn a load signal (0..1, pushed by the engine) into effective thresholds; thread-safe."""

    def __init__(
        self,
        load_high: float,
        load_low: float,
        min_dwell_s: float,
        clock: Clock = time.monotonic,
    ) -> None:
        if load_low > load_high:
            raise InvalidRequest("semantic_cache.load_low must not be above load_high")
        self.load_high = load_high
        self.load_low = load_low
        self.min_dwell_s = min_dwell_s
        self._clock = clock
        self._lock = threading.Lock()
        self._load = 0.0
        self._relaxed = False
        self._switched_at = float("-inf")

    @property
    def relaxed(self) -> bool:
        """True while thresholds are relaxed."""
        return self._relaxed

    @property
    def load(self) -> float:
        """The last load signal seen."""
        return self._load

    def update(self, load: float) -> None:
        """Record a new load signal in [0, 1] and switch modes if the hysteresis allows."""
        if not isinstance(load, int | float) or not 0.0 <= float(load) <= 1.0:
            raise InvalidRequest(f"load must be a number in [0, 1], got {load!r}")
        now = self._clock()
        with self._lock:
            self._load = float(load)
            may_switch = now - self._switched_at >= self.min_dwell_s
            if not self._relaxed and self._load >= self.load_high and may_switch:
                self._relaxed, self._switched_at = True, now
            elif self._relaxed and self._load <= self.load_low and may_switch:
                self._relaxed, self._switched_at = False, now

    def relaxation(self) -> float:
        """How far toward the floor thresholds are moved now: 0 (normal) .. 1 (at the floor)."""
        if not self._relaxed:
            return 0.0
        span = 1.0 - self.load_low
        if span <= 0.0:
            return 1.0
        return min(1.0, max(0.0, (self._load - self.load_low) / span))

    def threshold(self, policy: CategoryPolicy) -> float:
        """The effective threshold of `policy` under the current load (>= policy.floor)."""
        relaxed = policy.threshold - self.relaxation() * (policy.threshold - policy.floor)
        return max(policy.floor, relaxed)
