"""Semantic cache administration (admin key): stats, flush, category policies, feedback."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from ragkv.errors import Unprocessable
from ragkv.pipeline.semantic import source_collection
from ragkv.server.auth import DEFAULT_TENANT, Admin
from ragkv.server.deps import Components, Engine, SemanticAdmin, semantic_admin_of
from ragkv.settings import CategoryPolicy, SemanticCacheSettings

router = APIRouter(tags=["cache admin"])


class FlushRequest(BaseModel):
    """What to flush: everything by default, or one tenant and/or category, or the answers
    built from one collection of a tenant (semantic level)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(None, min_length=1, max_length=256)
    category: str | None = Field(None, min_length=1, max_length=64)
    collection: str | None = Field(None, min_length=1, max_length=64)
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
async def stats(_: Admin, parts: Components, engine: Engine) -> dict[str, Any]:
    """Cache statistics per level: `semantic` per tenant and category; `prefix` (radix KV,
    tool pins); `chunk` (chunk KV: reuse, tiers, load-or-recompute decisions). A level that
    is turned off is null (the others are still reported)."""
    semantic = None
    if parts.semantic_cache is not None:
        semantic = await run_in_threadpool(semantic_admin_of(parts).stats_report)
    return {
        "semantic": semantic,
        "prefix": await engine.prefix_stats(),
        "chunk": await engine.chunk_stats(),
    }


@router.post("/admin/cache/flush")
async def flush(body: FlushRequest, _: Admin, parts: Components) -> dict[str, Any]:
    """Drop cached entries; `{}` drops everything (`level` picks one of semantic, prefix,
    chunk)."""
    flushed: dict[str, Any] = {}
    if body.collection is not None:
        return {"flushed": {"semantic": await _flush_collection(body, parts)}}
    if body.level in ("all", "semantic"):
        admin = semantic_admin_of(parts)
        flushed["semantic"] = await run_in_threadpool(admin.flush, body.tenant, body.category)
    if body.level in ("all", "prefix") and body.category is None:
        flushed["prefix_pages"] = await parts.engine.flush_prefix(body.tenant)
    if body.level in ("all", "chunk") and body.category is None:
        flushed["chunk_entries"] = await parts.engine.flush_chunks(body.tenant)
    return {"flushed": flushed}


async def _flush_collection(body: FlushRequest, parts: Components) -> int:
    """Drop the cached answers built from one collection (its chunk KV is keyed by content and
    stays valid, so only the semantic level is flushed)."""
    if body.level not in ("all", "semantic") or body.category is not None:
        raise Unprocessable(
            "collection flushes the semantic answers built from it; it cannot be combined "
            "with a category or with level prefix/chunk",
            param="collection",
        )
    tenant = body.tenant
    if tenant is None:
        if parts.settings.auth.enabled:
            raise Unprocessable("collection needs the tenant it belongs to", param="tenant")
        tenant = DEFAULT_TENANT
    key = source_collection(tenant, body.collection or "")
    return await run_in_threadpool(semantic_admin_of(parts).invalidate_sources, key, None)


@router.get("/admin/cache/categories", response_model=CategoriesBody)
async def get_categories(_: Admin, admin: SemanticAdmin) -> CategoriesBody:
    """The category policies in force."""
    return CategoriesBody(categories=admin.categories(), default_category=admin.default_category())


@router.put("/admin/cache/categories", response_model=CategoriesBody)
async def put_categories(body: CategoriesBody, _: Admin, admin: SemanticAdmin) -> CategoriesBody:
    """Replace the category policies (persisted); the default category must stay defined."""
    default = admin.default_category()
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
    await run_in_threadpool(admin.set_categories, checked.categories)
    return CategoriesBody(categories=admin.categories(), default_category=default)


@router.post("/admin/cache/feedback")
async def feedback(body: FeedbackRequest, _: Admin, admin: SemanticAdmin) -> dict[str, Any]:
    """Report a served hit: wrong drops the entry and counts a false hit; both train verified."""
    return await run_in_threadpool(admin.feedback, body.entry_id, body.correct, body.similarity)
