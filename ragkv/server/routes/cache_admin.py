"""Semantic cache administration (admin key): stats, flush, category policies, feedback."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ragkv.errors import Unprocessable
from ragkv.server.auth import Admin
from ragkv.server.routes.cache import cache_of
from ragkv.settings import CategoryPolicy, SemanticCacheSettings

router = APIRouter(tags=["cache admin"])


class FlushRequest(BaseModel):
    """What to flush: everything by default, or one tenant and/or category."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, min_length=1, max_length=256)
    category: str | None = Field(None, min_length=1, max_length=64)
    level: Literal["all", "semantic", "prefix", "chunk"] = "all"


class CategoriesBody(BaseModel):
    """The whole category policy table (PUT replaces it)."""

    model_config = ConfigDict(extra="forbid")

    categories: dict[str, CategoryPolicy]
    default_category: str | None = None


class FeedbackRequest(BaseModel):
    """A served hit was wrong (or, in verified mode, confirmed right) at `similarity`."""

    model_config = ConfigDict(extra="forbid")

    entry_id: int = Field(ge=1)
    correct: bool = False
    similarity: float | None = Field(None, ge=-1.0, le=1.0)


@router.get("/admin/cache/stats")
async def stats(request: Request, _: Admin) -> dict[str, Any]:
    """Cache statistics per level: `semantic` per tenant and category; `prefix` (radix KV);
    `chunk` (chunk KV: reuse, tiers, load-or-recompute decisions; null when disabled)."""
    cache = cache_of(request)
    engine = request.app.state.engine.engine
    return {
        "semantic": await run_in_threadpool(cache.stats_report),
        "prefix": await run_in_threadpool(engine.prefix_stats),
        "chunk": await run_in_threadpool(engine.chunk_stats),
    }


@router.post("/admin/cache/flush")
async def flush(body: FlushRequest, request: Request, _: Admin) -> dict[str, Any]:
    """Drop cached entries; `{}` drops everything (`level` picks one of semantic, prefix,
    chunk)."""
    flushed: dict[str, Any] = {}
    if body.level in ("all", "semantic"):
        cache = cache_of(request)
        flushed["semantic"] = await run_in_threadpool(cache.flush, body.tenant, body.category)
    if body.level in ("all", "prefix") and body.category is None:
        engine = request.app.state.engine.engine
        flushed["prefix_pages"] = await run_in_threadpool(engine.flush_prefix, body.tenant)
    if body.level in ("all", "chunk") and body.category is None:
        engine = request.app.state.engine.engine
        flushed["chunk_entries"] = await run_in_threadpool(engine.flush_chunks, body.tenant)
    return {"flushed": flushed}


@router.get("/admin/cache/categories", response_model=CategoriesBody)
async def get_categories(request: Request, _: Admin) -> CategoriesBody:
    """The category policies in force."""
    cache = cache_of(request)
    return CategoriesBody(
        categories=cache.categories(), default_category=cache.policies.default_category
    )


@router.put("/admin/cache/categories", response_model=CategoriesBody)
async def put_categories(body: CategoriesBody, request: Request, _: Admin) -> CategoriesBody:
    """Replace the category policies (persisted); the default category must stay defined."""
    cache = cache_of(request)
    default = cache.policies.default_category
    if body.default_category not in (None, default):
        raise Unprocessable(
            "default_category cannot change at run time; set semantic_cache.default_category",
            param="default_category",
        )
    try:
        checked = SemanticCacheSettings(categories=body.categories, default_category=default)
    except ValidationError as exc:
        message = "; ".join(str(error["msg"]) for error in exc.errors()[:3])
        raise Unprocessable(message, param="categories") from exc
    await run_in_threadpool(cache.set_categories, checked.categories)
    return CategoriesBody(categories=cache.categories(), default_category=default)


@router.post("/admin/cache/feedback")
async def feedback(body: FeedbackRequest, request: Request, _: Admin) -> dict[str, Any]:
    """Report a served hit: wrong drops the entry and counts a false hit; both train verified."""
    cache = cache_of(request)
    return await run_in_threadpool(cache.feedback, body.entry_id, body.correct, body.similarity)
