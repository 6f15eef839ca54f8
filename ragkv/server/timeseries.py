"""The dashboard's memory: one point every 5 s for the last hour, kept by the gateway.

`Sampler` is an asyncio task started and stopped with the app. Each tick `ServerProbe` reads
figures that never wait for the engine step: `LLMEngine.load_info()`, the engine's and the
chunk blender's plain counters (ints, at most one step old), the semantic cache's counters
and the latency histograms of the pipeline. Figures that need the step lock (radix tree
size, chunk tiers) are not sampled: the dashboard shows their current values from the
stats endpoint. Points hold cumulative counters; rates are differences of two points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import Histogram

if TYPE_CHECKING:
    from ragkv.server.components import Components

log = logging.getLogger("ragkv.server")

SAMPLE_INTERVAL_S = 5.0
MAX_POINTS = 720  # one hour at one point per 5 s
LATENCY_WINDOW_POINTS = 12  # percentiles over the last minute of samples

Point = dict[str, float | None]
Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending bounds


class TimeSeries:
    """At most `max_points` points, oldest dropped first; each point has a time `t` (unix s)."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        if max_points < 1:
            raise ValueError("max_points must be at least 1")
        self.max_points = max_points
        self._points: deque[Point] = deque(maxlen=max_points)

    def __len__(self) -> int:
        return len(self._points)

    def append(self, point: Point) -> None:
        """Add the newest point (dropping the oldest when full)."""
        self._points.append(point)

    def points(self, since: float | None = None) -> list[Point]:
        """A copy of the points, oldest first; only those with `t > since` when given."""
        if since is None:
            return list(self._points)
        return [point for point in self._points if (point["t"] or 0.0) > since]

    def latest(self) -> Point | None:
        """The newest point, or None before the first sample."""
        return self._points[-1] if self._points else None


def histogram_buckets(histogram: Histogram) -> Buckets:
    """Cumulative bucket counts of `histogram`, summed over its label values."""
    totals: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                totals[bound] = totals.get(bound, 0.0) + sample.value
    return sorted(totals.items())


def quantile(q: float, buckets: Buckets) -> float | None:
    """The `q` quantile (0..1) of cumulative `buckets`, interpolated inside its bucket as
    Prometheus' `histogram_quantile` does; None when the buckets are empty. A quantile in the
    +Inf bucket is reported as the largest finite bound."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank and count > lower_count:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return lower_bound


def bucket_delta(newer: Buckets, older: Buckets | None) -> Buckets:
    """`newer` minus `older` bucket by bucket (same bounds): the observations in between."""
    if older is None:
        return newer
    before = dict(older)
    return [(bound, count - before.get(bound, 0.0)) for bound, count in newer]


class LatencyWindow:
    """Percentiles (ms) of one histogram over the last `window` samples."""

    def __init__(self, histogram: Histogram, window: int = LATENCY_WINDOW_POINTS) -> None:
        self.histogram = histogram
        self._history: deque[Buckets] = deque(maxlen=window + 1)

    def sample(self) -> tuple[float | None, float | None]:
        """Take the histogram now; (p50, p95) in ms of what it saw during the window."""
        buckets = histogram_buckets(self.histogram)
        self._history.append(buckets)
        recent = bucket_delta(buckets, self._history[0] if len(self._history) > 1 else None)
        return _ms(quantile(0.5, recent)), _ms(quantile(0.95, recent))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


ENGINE_FIGURES = (
    "running", "waiting", "blends_in_flight", "pool_pages", "free_pages", "step_tokens",
    "engine_requests", "prompt_tokens", "cached_tokens", "generated_tokens",
    "chunk_requests", "chunk_tokens", "chunk_tokens_reused",
)  # fmt: skip


class ServerProbe:
    """Reads one point from a gateway's components without waiting for the engine step."""

    def __init__(self, parts: Components) -> None:
        self.parts = parts
        metrics = parts.pipeline.metrics
        self.ttft = LatencyWindow(metrics.ttft) if metrics is not None else None
        self.inter_token = LatencyWindow(metrics.inter_token) if metrics is not None else None

    def __call__(self) -> Point:
        """Engine load, per-level counters (cumulative) and latency percentiles (last minute)."""
        figures = self.parts.engine.figures()
        point: Point = {name: figures.get(name) for name in ENGINE_FIGURES}
        point.update(self._semantic())
        for name, window in (("ttft", self.ttft), ("itl", self.inter_token)):
            p50, p95 = window.sample() if window is not None else (None, None)
            point[f"{name}_p50_ms"], point[f"{name}_p95_ms"] = p50, p95
        return point

    def _semantic(self) -> Point:
        cache = self.parts.semantic_cache
        totals = {"lookups": 0, "hits": 0, "guard_rejections": 0, "false_hit_reports": 0}
        if cache is not None:
            for counts in cache.stats.snapshot().values():
                for event in totals:
                    totals[event] += counts.get(event, 0)
        return {f"semantic_{event}": float(count) for event, count in totals.items()}


class Sampler:
    """Appends `read()` (stamped with `t`) to `series` every `interval_s` on the running
    event loop; the first point is taken at `start`. A failing read is logged and skipped."""

    def __init__(
        self,
        read: Callable[[], Point],
        interval_s: float = SAMPLE_INTERVAL_S,
        max_points: int = MAX_POINTS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.read = read
        self.interval_s = interval_s
        self.series = TimeSeries(max_points)
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start sampling (call inside the running event loop)."""
        self._task = asyncio.create_task(self._run(), name="ragkv-dashboard-sampler")

    async def stop(self) -> None:
        """Stop sampling and wait for the task to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return self._task is not None and not self._task.done()

    def sample(self) -> Point:
        """Take one point now and append it."""
        point: Point = {"t": round(self.clock(), 3), **self.read()}
        self.series.append(point)
        return point

    async def _run(self) -> None:
        while True:
            try:  # in a thread: a cluster's semantic cache is a remote call away
                await asyncio.to_thread(self.sample)
            except Exception:  # a dashboard figure must never take the gateway down
                log.exception("dashboard sample failed")
            await asyncio.sleep(self.interval_s)

    def to_json(self, since: float | None = None) -> dict[str, Any]:
        """The series as the dashboard reads it: interval, bound and points after `since`."""
        return {
            "interval_s": self.interval_s,
            "max_points": self.series.max_points,
            "points": self.series.points(since),
        }


def start_sampler(parts: Components) -> Sampler:
    """A running sampler over the gateway's components (stop it before closing them)."""
    sampler = Sampler(ServerProbe(parts))
    sampler.start()
    return sampler
