"""Counters of the semantic cache per (tenant, category), mirrored to Prometheus metrics."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter

EVENTS = (
    "lookups",
    "hits",
    "misses",
    "stores",
    "evictions",
    "expirations",
    "guard_rejections",
    "false_hit_reports",
    "invalidations",
)


class SemanticCacheStats:
    """Event counts per (tenant, category); thread-safe. Prometheus gets the same events.

    `registry` is where the Prometheus metrics live (a per-app registry); None keeps a private
    one so that several caches in one process never clash.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        self._children: dict[tuple[str, str], Any] = {}
        self._events = PromCounter(
            "ragkv_semantic_cache_events",
            "Semantic cache events by kind and category",
            ["event", "category"],
            registry=self.registry,
        )
        self._lookup_seconds = Histogram(
            "ragkv_semantic_cache_lookup_seconds",
            "Semantic cache lookup time, embedding excluded",
            ["outcome"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1),
            registry=self.registry,
        )
        self._similarity = Histogram(
            "ragkv_semantic_cache_best_similarity",
            "Best candidate cosine similarity per lookup",
            buckets=(0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98, 1.0),
            registry=self.registry,
        )

    def count(self, tenant: str, category: str, event: str, amount: int = 1) -> None:
        """Add `amount` to one event counter."""
        if amount <= 0:
            return
        with self._lock:
            self._counts[(tenant, category)][event] += amount
            child = self._children.get((event, category))
            if child is None:  # labels() costs more than inc(); keep the children
                child = self._children[(event, category)] = self._events.labels(
                    event=event, category=category
                )
        child.inc(amount)

    def observe_lookup(self, seconds: float, hit: bool, best_similarity: float | None) -> None:
        """Record one lookup's latency (embedding excluded) and best similarity."""
        self._lookup_seconds.labels(outcome="hit" if hit else "miss").observe(seconds)
        if best_similarity is not None:
            self._similarity.observe(max(0.0, best_similarity))

    def snapshot(self) -> dict[tuple[str, str], dict[str, int]]:
        """A copy of every counter, keyed by (tenant, category)."""
        with self._lock:
            return {
                key: {event: counts.get(event, 0) for event in EVENTS}
                for key, counts in self._counts.items()
            }
