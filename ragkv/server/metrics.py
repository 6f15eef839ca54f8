"""Prometheus metrics: one registry per app (on `app.state.metrics_registry`) and `GET /metrics`.

Components register their metrics on the app's registry, never on prometheus_client's global
default one, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

router = APIRouter(tags=["metrics"])


def build_registry() -> CollectorRegistry:
    """A fresh registry for one app."""
    return CollectorRegistry(auto_describe=True)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Every metric of this app in the Prometheus text format."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


class ChunkStoreCollector:
    """Chunk KV tiers (entries, bytes, evictions) and decisions, read at scrape time."""

    def __init__(self, chunk_stats: Callable[[], dict[str, Any] | None]) -> None:
        self.chunk_stats = chunk_stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.chunk_stats()
        if stats is None:
            return
        entries = GaugeMetricFamily("ragkv_chunk_kv_entries", "chunk KVs held", labels=["tier"])
        size = GaugeMetricFamily("ragkv_chunk_kv_bytes", "chunk KV bytes held", labels=["tier"])
        evictions = CounterMetricFamily(
            "ragkv_chunk_kv_evictions", "chunk KVs evicted", labels=["tier"]
        )
        for tier, info in stats["tiers"].items():
            entries.add_metric([tier], info["entries"])
            size.add_metric([tier], info["bytes"])
            evictions.add_metric([tier], info["evictions"])
        events = CounterMetricFamily(
            "ragkv_chunk_kv_events",
            "chunk KV lookups, hits per tier, misses, load-or-recompute decisions, refusals",
            labels=["event"],
        )
        for event, count in stats["counters"].items():
            events.add_metric([event], count)
        yield from (entries, size, evictions, events)


class EngineCollector:
    """Back-pressure as Prometheus reads it: queue, running sequences, blends in flight, KV
    pool pages, steps and the tokens they computed, failed requests, the measured drain
    rate; read at scrape time from `load_info` (never waits for the engine step)."""

    GAUGES = {
        "waiting": ("ragkv_engine_waiting", "requests queued for admission"),
        "running": ("ragkv_engine_running", "sequences admitted (decoding, prefilling, blending)"),
        "blends_in_flight": ("ragkv_engine_blends_in_flight", "blended prefills in progress"),
        "pool_pages": ("ragkv_kv_pool_pages", "KV pool pages in all"),
        "free_pages": ("ragkv_kv_pool_free_pages", "KV pool pages free"),
        "drain_per_s": ("ragkv_engine_drain_per_second", "requests finished per second (60 s)"),
    }
    COUNTERS = {
        "steps": ("ragkv_engine_steps", "engine steps that ran a batch"),
        "step_tokens": ("ragkv_engine_step_tokens", "tokens those steps computed"),
        "blend_steps": ("ragkv_engine_blend_steps", "engine steps that advanced a blend"),
        "failed_requests": ("ragkv_engine_failed_requests", "requests failed alone by the engine"),
    }

    def __init__(
        self,
        load_info: Callable[[], dict[str, float]],
        by_replica: Callable[[], dict[str, dict[str, Any]]] | None = None,
    ) -> None:
        self.load_info = load_info
        self.by_replica = by_replica  # engine replicas of a cluster: the same gauges each

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        info = self.load_info()
        for key, (name, text) in self.GAUGES.items():
            yield GaugeMetricFamily(name, text, value=info[key])
        for key, (name, text) in self.COUNTERS.items():
            yield CounterMetricFamily(name, text, value=info[key])
        if self.by_replica is not None:
            replicas = self.by_replica()
            for key, (name, text) in self.GAUGES.items():
                family = GaugeMetricFamily(f"{name}_by_replica", text, labels=["replica"])
                for replica, figures in sorted(replicas.items()):
                    family.add_metric([replica], float(figures.get(key) or 0.0))
                yield family


class StateCollector:
    """What the caches and the documents hold now, for Prometheus users (the dashboard page
    shows the same): semantic entries and bytes per category, radix tree pages by state,
    collections/documents/chunks and recent search latency. Read at scrape time; the radix
    figures wait for the engine step in progress (as `/admin/cache/stats` does)."""

    def __init__(
        self,
        prefix_stats: Callable[[], dict[str, Any]],
        semantic_report: Callable[[], dict[str, Any]] | None,
        retrieval_sizes: Callable[[], tuple[int, int, int]],
        search_summary: Callable[[], dict[str, Any]],
    ) -> None:
        self.prefix_stats = prefix_stats
        self.semantic_report = semantic_report
        self.retrieval_sizes = retrieval_sizes
        self.search_summary = search_summary

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        prefix = self.prefix_stats()
        pages = GaugeMetricFamily("ragkv_radix_pages", "radix tree pages", labels=["state"])
        for state in ("cached", "evictable", "locked", "pinned", "approx"):
            pages.add_metric([state], prefix[f"{state}_pages"])
        yield pages
        if self.semantic_report is not None:
            categories = self.semantic_report()["categories"]
            entries = GaugeMetricFamily(
                "ragkv_semantic_cache_entries", "semantic cache entries", labels=["category"]
            )
            size = GaugeMetricFamily(
                "ragkv_semantic_cache_bytes", "semantic cache bytes", labels=["category"]
            )
            for category, row in categories.items():
                entries.add_metric([category], row["entries"])
                size.add_metric([category], row["bytes"])
            yield from (entries, size)
        collections, documents, chunks = self.retrieval_sizes()
        yield GaugeMetricFamily("ragkv_retrieval_collections", "collections", value=collections)
        yield GaugeMetricFamily("ragkv_retrieval_documents", "documents", value=documents)
        yield GaugeMetricFamily("ragkv_retrieval_chunks", "chunks", value=chunks)
        search = self.search_summary()
        yield CounterMetricFamily(
            "ragkv_retrieval_searches", "searches since start", value=search["searches"]
        )
        latency = GaugeMetricFamily(
            "ragkv_retrieval_search_latency_seconds",
            "search latency of the recent searches (embedding, index, rows)",
            labels=["quantile"],
        )
        for quantile, key in (("0.5", "p50_ms"), ("0.95", "p95_ms")):  # NaN before a search
            value = search[key]
            latency.add_metric([quantile], float("nan") if value is None else value / 1000)
        yield latency
