"""Every long-lived component of one gateway, built from `Settings` in one place: the
embedder, the semantic cache, the engine (with its radix tree and chunk KV store), the
retriever and the request pipeline over them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.concurrency import run_in_threadpool

from ragkv.assets import generation_model_path
from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.compute import ComputeThread
from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.config import load_config
from ragkv.engine.engine import LLMEngine
from ragkv.pipeline.agents import ToolLatency
from ragkv.pipeline.context import ContextBuilder
from ragkv.pipeline.metrics import KVMetrics
from ragkv.pipeline.pipeline import Pipeline
from ragkv.pipeline.semantic import SemanticStep, source_collection
from ragkv.retrieval.chunker import Chunker
from ragkv.retrieval.documents import RemovalListener
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import Retriever
from ragkv.server.demo import DemoSeeder
from ragkv.server.metrics import ChunkStoreCollector, EngineCollector, StateCollector
from ragkv.server.schemas import ModelCard, ModelRuntimeInfo
from ragkv.settings import Settings

log = logging.getLogger("ragkv.server")


def model_card(settings: Settings) -> ModelCard:
    """Describe the configured generation model from its own file (id, context length)."""
    path = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
    config = load_config(path)
    model_id = settings.model.served_name or (path.name if path.is_dir() else Path(path).stem)
    created = int(path.stat().st_mtime)
    return ModelCard(id=model_id, created=created, context_length=config.context_length)


def open_semantic_cache(
    settings: Settings, embedder: Embedder, registry: CollectorRegistry
) -> SemanticCache | None:
    """The semantic cache under `<data_dir>/semantic_cache`, or None when disabled."""
    if not settings.semantic_cache.enabled:
        return None
    path = Path(settings.data_dir) / "semantic_cache"
    return SemanticCache(settings.semantic_cache, path, embed=embedder.embed, registry=registry)


@dataclass
class Attached:
    """Components that live elsewhere (a Ray Serve cluster, `ragkv/cluster/`) with the same
    surface as the local ones: the engine front (`AsyncEngine` or a fleet of replicas), the
    semantic cache and its admin (None when off) and the retriever. `llm` is the local
    engine, None when the engines are remote."""

    engine: Any
    semantic_cache: Any
    semantic_admin: Any
    retriever: Any
    llm: LLMEngine | None = None
    runtime: ModelRuntimeInfo | None = None
    by_replica: Callable[[], dict[str, dict[str, Any]]] | None = None  # engine figures each


@dataclass
class Components:
    """The gateway's components. `llm` is the engine the `engine` front drives (owned here,
    used directly only by tests and the metrics collectors); None when the engines are Ray
    Serve replicas (then `engine` is their fleet, `semantic_cache` and `retriever` stand-ins
    for the shared owners)."""

    settings: Settings
    model_card: ModelCard
    embedder: Embedder
    semantic_cache: SemanticCache | None
    llm: LLMEngine | None
    engine: AsyncEngine
    retriever: Retriever
    pipeline: Pipeline
    semantic_admin: SemanticCacheAdmin | None = None
    demo: DemoSeeder | None = None
    compute: ComputeThread | None = None

    @classmethod
    async def open(
        cls, settings: Settings, registry: CollectorRegistry, attached: Attached | None = None
    ) -> Components:
        """Load every component (takes seconds: the model and the embedder) and start the
        engine loop on the running event loop. With `attached`, the engine, the semantic
        cache and the retriever are those (only the embedder and the pipeline load here)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        card = model_card(settings)
        compute = ComputeThread()  # every torch computation runs here (see ragkv/compute.py)
        embedder = Embedder(settings.embedding, compute)
        local = attached is None
        if attached is None:
            attached = await open_local(settings, registry, compute, embedder)
        engine = attached.engine
        registry.register(EngineCollector(engine.load_info, attached.by_replica))
        if attached.runtime is not None:
            card = card.model_copy(update={"ragkv": attached.runtime})
        engine.start()
        semantic = None
        if attached.semantic_cache is not None:
            semantic = SemanticStep(
                attached.semantic_cache,
                embedder,
                card.id,
                settings.semantic_cache.single_flight_wait_s,
            )
        # Chunk token ids must be the serving model's: the retriever chunks with its tokenizer.
        chunker = Chunker(engine.tokenizer, settings.retrieval.chunk_tokens)
        pipeline = Pipeline(
            engine,
            ContextBuilder(chunker, attached.retriever),
            settings.engine.default_max_tokens,
            semantic,
            KVMetrics(registry),
            settings.chunk_cache.context_variant,
            ToolLatency(
                settings.engine.tool_pin_ttl_s,
                settings.engine.tool_pin_min_ttl_s,
                settings.engine.tool_pin_max_ttl_s,
            ),
        )
        parts = cls(
            settings, card, embedder, attached.semantic_cache, attached.llm, engine,
            attached.retriever, pipeline, attached.semantic_admin, compute=compute,
        )  # fmt: skip
        registry.register(state_collector(parts))
        if local and not settings.auth.enabled and settings.server.demo_documents:
            parts.demo = DemoSeeder(attached.retriever, settings.server.demo_documents)
            await run_in_threadpool(parts.demo.start)
        return parts

    async def close(self) -> None:
        """Stop the engine and close every store (everything written is already durable)."""
        if self.demo is not None:
            await run_in_threadpool(self.demo.stop)
        await self.engine.close()
        if self.llm is None:  # the stores belong to their shared owners
            if self.compute is not None:
                await run_in_threadpool(self.compute.close)
            return
        await run_in_threadpool(self.retriever.close)
        if self.semantic_cache is not None:
            await run_in_threadpool(self.semantic_cache.close)
        if self.compute is not None:
            await run_in_threadpool(self.compute.close)


async def open_local(
    settings: Settings, registry: CollectorRegistry, compute: ComputeThread, embedder: Embedder
) -> Attached:
    """The engine, semantic cache and retriever of a single-process gateway, in this process
    (the retriever's removals drop the cached answers built from removed chunks)."""
    semantic_cache = await run_in_threadpool(open_semantic_cache, settings, embedder, registry)
    llm = await compute.run(
        LLMEngine.from_path,
        generation_model_path(settings.model.gguf_path, settings.model.hf_dir),
        settings.model,
        settings.engine,
        settings.chunk_cache,
        settings.data_dir,
    )
    registry.register(ChunkStoreCollector(llm.chunk_stats))
    retriever = Retriever(settings.retrieval, settings.data_dir, embedder, llm.tokenizer)
    await run_in_threadpool(retriever.open)
    admin = None
    if semantic_cache is not None:
        admin = SemanticCacheAdmin(semantic_cache)
        retriever.removals.subscribe(answers_die_with_sources(semantic_cache))
    runtime = ModelRuntimeInfo(**llm.runtime.to_json())
    return Attached(AsyncEngine(llm, compute), semantic_cache, admin, retriever, llm, runtime)


def state_collector(parts: Components) -> StateCollector:
    """The scrape-time collector of what the caches and the documents hold."""

    def retrieval_sizes() -> tuple[int, int, int]:
        collections = parts.retriever.store.list_collections()
        documents = sum(c.num_documents for c in collections)
        return len(collections), documents, sum(c.num_chunks for c in collections)

    semantic = parts.semantic_admin.stats_report if parts.semantic_admin is not None else None
    prefix_stats = parts.llm.prefix_stats if parts.llm is not None else parts.engine.prefix_figures
    return StateCollector(prefix_stats, semantic, retrieval_sizes, parts.retriever.timings.summary)


def answers_die_with_sources(cache: SemanticCache) -> RemovalListener:
    """A retrieval removal listener that drops the cached RAG answers built from the removed
    chunks (or from any chunk of a deleted collection)."""
    admin = SemanticCacheAdmin(cache)

    def invalidate(tenant: str, collection: str, chunk_ids: list[str] | None) -> None:
        dropped = admin.invalidate_sources(source_collection(tenant, collection), chunk_ids)
        if dropped:
            log.info("dropped %d cached answers built from changed sources of '%s'",
                     dropped, collection)  # fmt: skip

    return invalidate
