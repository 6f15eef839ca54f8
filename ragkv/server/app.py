"""The app factory: `build_app(settings)` wires settings, middleware, error handlers and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from ragkv import __version__
from ragkv.assets import generation_model_path
from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.config import load_config
from ragkv.engine.engine import LLMEngine
from ragkv.pipeline.pipeline import Pipeline
from ragkv.pipeline.semantic import SemanticStep
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import Retriever
from ragkv.server.errors import install_error_handlers
from ragkv.server.metrics import ChunkStoreCollector, KVMetrics, build_registry
from ragkv.server.metrics import router as metrics_router
from ragkv.server.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from ragkv.server.routes import (
    cache,
    cache_admin,
    chat,
    collections,
    embeddings,
    health,
    models,
    rag,
)
from ragkv.settings import Settings

log = logging.getLogger("ragkv.server")


def model_card(settings: Settings) -> models.ModelCard:
    """Describe the configured generation model from its own file (id, context length)."""
    path = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
    config = load_config(path)
    model_id = settings.model.served_name or (path.name if path.is_dir() else Path(path).stem)
    created = int(path.stat().st_mtime)
    return models.ModelCard(id=model_id, created=created, context_length=config.context_length)


def build_app(settings: Settings) -> FastAPI:
    """A ready-to-serve FastAPI app for `settings`; components load in the lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.model_card = model_card(settings)
        app.state.embedder = Embedder(settings.embedding)
        app.state.semantic_cache = await run_in_threadpool(
            cache.open_semantic_cache, settings, app.state.embedder, app.state.metrics_registry
        )
        model_path = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
        engine = await run_in_threadpool(
            LLMEngine.from_path,
            model_path,
            settings.model,
            settings.engine,
            settings.chunk_cache,
            settings.data_dir,
        )
        app.state.engine = AsyncEngine(engine)
        app.state.metrics_registry.register(ChunkStoreCollector(engine.chunk_stats))
        app.state.engine.start()
        app.state.semantic_step = None
        if app.state.semantic_cache is not None:
            app.state.semantic_step = SemanticStep(
                app.state.semantic_cache, app.state.embedder, app.state.model_card.id
            )
        app.state.tokenizer = engine.tokenizer  # chunk token ids must be the serving model's
        app.state.retriever = Retriever(
            settings.retrieval, settings.data_dir, app.state.embedder, app.state.tokenizer
        )
        await run_in_threadpool(app.state.retriever.open)
        app.state.pipeline = Pipeline(
            app.state.engine,
            settings.engine.default_max_tokens,
            app.state.retriever,
            settings.retrieval.chunk_tokens,
            settings.chunk_cache.context_variant,
        )
        if not settings.auth.enabled:
            log.warning("no API keys configured: auth is off, serving localhost only")
        app.state.ready = True
        log.info("ragkv %s ready, model %s", __version__, app.state.model_card.id)
        try:
            yield
        finally:
            app.state.ready = False
            await app.state.engine.stop()
            await run_in_threadpool(engine.close)
            await run_in_threadpool(app.state.retriever.close)
            if app.state.semantic_cache is not None:
                await run_in_threadpool(app.state.semantic_cache.close)

    app = FastAPI(
        title="ragkv",
        version=__version__,
        description="Cache-aware serving middleware for RAG and agents (OpenAI-compatible).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.metrics_registry = build_registry()
    app.state.kv_metrics = KVMetrics(app.state.metrics_registry)
    app.state.semantic_cache = None
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.server.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, log_requests=settings.server.access_log)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(chat.router)
    app.include_router(rag.router)
    app.include_router(embeddings.router)
    app.include_router(collections.router)
    app.include_router(cache.router)
    app.include_router(cache_admin.router)
    app.include_router(metrics_router)
    return app
