"""One engine replica as a Ray Serve deployment: the engine with its radix tree and chunk KV
store, streaming its outputs back through the handle, and reporting what it holds to the
routers (`record_routing_stats`, which Ray calls every `cluster.stats_period_s`).

Every call carries a `RouteHint` first (the router reads it); the replica ignores it. Each
replica keeps its chunk KV disk tier under `<data_dir>/engine-<rank>`, so a replica that Ray
restarts in the same rank finds its chunks again."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

from ray import serve

from ragkv.assets import generation_model_path
from ragkv.cluster.affinity import RouteHint
from ragkv.compute import ComputeThread
from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.engine import LLMEngine
from ragkv.engine.sequence import Request, RequestOutput
from ragkv.errors import InvalidRequest
from ragkv.settings import Settings

log = logging.getLogger("ragkv.cluster")

ADMIN_CALLS = ("prefix_stats", "chunk_stats", "pin_tool_turn", "flush_prefix", "flush_chunks")


class Hello(NamedTuple):
    """The first item of every `generate` stream: which replica serves it."""

    replica: str


class EngineReplica:
    """The deployment class (`cluster/app.py` wraps it with `serve.deployment`)."""

    def __init__(self, settings: Settings) -> None:
        context = serve.get_replica_context()
        self.replica_id = context.replica_tag
        rank = getattr(context.rank, "rank", context.rank)
        self.settings = settings
        self.compute = ComputeThread()
        self.llm = self.compute.call(
            LLMEngine.from_path,
            generation_model_path(settings.model.gguf_path, settings.model.hf_dir),
            settings.model,
            settings.engine,
            settings.chunk_cache,
            settings.data_dir / f"engine-{rank}",
        )
        self.engine = AsyncEngine(self.llm, self.compute)
        self.started = False
        log.info("engine replica %s (rank %s) loaded", self.replica_id, rank)

    def ensure_started(self) -> None:
        """Start the engine loop on the replica's event loop (there is none in __init__)."""
        if not self.started:
            self.engine.start()
            self.started = True

    async def generate(
        self, hint: RouteHint, request: Request
    ) -> AsyncIterator[Hello | RequestOutput]:
        """`Hello`, then the request's outputs until it finishes (a cancelled stream aborts
        the request and frees its pages)."""
        self.ensure_started()
        yield Hello(self.replica_id)
        async for output in self.engine.stream(request):
            yield output

    async def admin(self, hint: RouteHint, call: str, *args: Any) -> Any:
        """One of `ADMIN_CALLS` on this replica's engine, or `figures` / `replica_id`."""
        self.ensure_started()
        if call == "figures":
            return self.engine.figures()
        if call == "replica_id":
            return self.replica_id
        if call not in ADMIN_CALLS:
            raise InvalidRequest(f"unknown engine call '{call}'")
        return await getattr(self.engine, call)(*args)

    def prewarm(self, hint: RouteHint, tenant: str, chunks: list[list[int]],
                context: tuple[int, ...]) -> int:  # fmt: skip
        """Compute and store the KV of `chunks` not cached here yet; how many were computed."""
        return self.engine.prewarm(tenant, chunks, context)

    async def record_routing_stats(self) -> dict[str, Any]:
        """What the routers read (`cluster/router.py`): prefix digests, chunk hashes, load."""
        cluster = self.settings.cluster
        return await self.engine.cache_report(
            cluster.max_reported_pages, cluster.max_reported_chunks
        )

    async def check_health(self) -> None:
        """Ray's health probe: a replica whose engine loop died is unhealthy (restarted)."""
        if self.started and not self.engine.alive:
            raise RuntimeError("the engine loop has stopped")

    def __del__(self) -> None:
        self.compute.close()
