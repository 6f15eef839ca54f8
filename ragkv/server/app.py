"""The app factory: `build_app(settings)` wires settings, middleware, error handlers and
routes; the components load in the lifespan (`Components.open`)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ragkv import __version__
from ragkv.server.components import Attached, Components
from ragkv.server.errors import install_error_handlers
from ragkv.server.metrics import build_registry
from ragkv.server.metrics import router as metrics_router
from ragkv.server.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from ragkv.server.routes import (
    cache,
    cache_admin,
    chat,
    collections,
    dashboard,
    embeddings,
    health,
    models,
    rag,
)
from ragkv.server.timeseries import start_sampler
from ragkv.settings import Settings

log = logging.getLogger("ragkv.server")


def build_app(
    settings: Settings,
    attach: Callable[[], Awaitable[Attached]] | None = None,
    instance: str | None = None,
) -> FastAPI:
    """A ready-to-serve FastAPI app for `settings`; components load in the lifespan.
    `attach`: called there for components that live elsewhere (a Ray Serve cluster);
    `instance`: this gateway replica's name, sent in `x-ragkv-instance`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        attached = await attach() if attach is not None else None
        components = await Components.open(settings, app.state.metrics_registry, attached)
        app.state.components = components
        app.state.sampler = start_sampler(components)
        if not settings.auth.enabled:
            log.warning(
                "no API keys configured: auth is off, serving localhost only; every client "
                "is one tenant and shares its caches"
            )
        app.state.ready = True
        log.info("ragkv %s ready, model %s", __version__, components.model_card.id)
        try:
            yield
        finally:
            app.state.ready = False
            await app.state.sampler.stop()
            await components.close()

    app = FastAPI(
        title="ragkv",
        version=__version__,
        description="Cache-aware serving middleware for RAG and agents (OpenAI-compatible).",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc are served with local assets (routes/dashboard.py)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.ready = False
    app.state.components = None
    app.state.metrics_registry = build_registry()
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.server.max_body_bytes)
    app.add_middleware(
        RequestContextMiddleware, log_requests=settings.server.access_log, instance=instance
    )
    routes = (health, models, chat, rag, embeddings, collections, cache, cache_admin, dashboard)
    for module in routes:
        app.include_router(module.router)
    dashboard.mount_static(app)
    app.include_router(metrics_router)
    return app
