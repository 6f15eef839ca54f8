"""Typed FastAPI dependencies: the components a route needs, from the app's `Components`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.engine.async_engine import AsyncEngine
from ragkv.errors import Conflict, Overloaded
from ragkv.pipeline.pipeline import Pipeline
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import Retriever
from ragkv.server.components import Components as AppComponents


def components(request: Request) -> AppComponents:
    """The app's components; 503 while the server is still starting."""
    parts = getattr(request.app.state, "components", None)
    if parts is None:
        raise Overloaded("the server is starting; retry shortly", retry_after_s=5)
    return parts


Components = Annotated[AppComponents, Depends(components)]


def _pipeline(parts: Components) -> Pipeline:
    return parts.pipeline


def _engine(parts: Components) -> AsyncEngine:
    return parts.engine


def _retriever(parts: Components) -> Retriever:
    return parts.retriever


def _embedder(parts: Components) -> Embedder:
    return parts.embedder


def semantic_cache_of(parts: Components) -> SemanticCache:
    """The semantic cache; Conflict (409) when it is turned off."""
    if parts.semantic_cache is None:
        raise Conflict("the semantic cache is disabled (settings semantic_cache.enabled)")
    return parts.semantic_cache


Pipe = Annotated[Pipeline, Depends(_pipeline)]
Engine = Annotated[AsyncEngine, Depends(_engine)]
Retrieval = Annotated[Retriever, Depends(_retriever)]
Embedding = Annotated[Embedder, Depends(_embedder)]


def semantic_admin_of(parts: Components) -> SemanticCacheAdmin:
    """The semantic cache's admin operations; Conflict (409) when the cache is off."""
    if parts.semantic_admin is None:
        raise Conflict("the semantic cache is disabled (settings semantic_cache.enabled)")
    return parts.semantic_admin


SemanticCacheDep = Annotated[SemanticCache, Depends(semantic_cache_of)]
SemanticAdmin = Annotated[SemanticCacheAdmin, Depends(semantic_admin_of)]
