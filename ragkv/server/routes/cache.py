"""Semantic cache for tenants: `POST /v1/cache/entries` (warm) and `POST /v1/cache/lookup`."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ragkv.cache.semantic.keys import template_hash
from ragkv.cache.semantic.types import CacheWrite
from ragkv.server.auth import Tenant
from ragkv.server.deps import Components, Embedding, SemanticCacheDep

router = APIRouter(tags=["semantic cache"])

MAX_WARM_ENTRIES = 1000
MAX_QUERY_CHARS = 8_000


class Scope(BaseModel):
    """Which partition: the model (default: the served one) and the system prompt it used."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, max_length=256)
    system_prompt: str | None = Field(None, max_length=100_000)

    def partition(self, served_model: str) -> tuple[str, str]:
        """(model, template hash) of this request (`served_model` when none is named)."""
        return self.model or served_model, template_hash(self.system_prompt)


class WarmEntry(BaseModel):
    """A known question and its answer."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    response: str = Field(max_length=1_000_000)
    category: str | None = Field(None, min_length=1, max_length=64)
    ttl_s: float | None = Field(None, gt=0, description="default: the category's TTL")


class WarmRequest(Scope):
    """`POST /v1/cache/entries` body."""

    entries: list[WarmEntry] = Field(min_length=1, max_length=MAX_WARM_ENTRIES)


class WarmedEntry(BaseModel):
    """What happened to one warmed entry (`entry_id` None when refused, see `reason`)."""

    entry_id: int | None
    category: str
    stored: bool
    reason: str


class WarmResponse(BaseModel):
    """`POST /v1/cache/entries` answer, one item per entry in order."""

    entries: list[WarmedEntry]


class LookupRequest(Scope):
    """`POST /v1/cache/lookup` body."""

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    category: str | None = Field(None, min_length=1, max_length=64)


class LookupResponse(BaseModel):
    """Would this query hit, on which entry, how similar, under which category threshold."""

    hit: bool
    entry_id: int | None
    similarity: float | None
    category: str
    threshold: float
    reason: str
    cached_query: str | None = None
    response: str | None = None


@router.post("/v1/cache/entries", response_model=WarmResponse)
async def warm(
    body: WarmRequest,
    tenant: Tenant,
    cache: SemanticCacheDep,
    embedder: Embedding,
    parts: Components,
) -> WarmResponse:
    """Store known question/answer pairs in the caller's partitions (one transaction)."""
    model, template = body.partition(parts.model_card.id)
    vectors = await run_in_threadpool(embedder.embed, [entry.query for entry in body.entries])
    writes = [
        CacheWrite(entry.query, entry.response, vector, entry.category, entry.ttl_s)
        for entry, vector in zip(body.entries, vectors, strict=True)
    ]
    results = await run_in_threadpool(cache.store_many, tenant, model, template, writes)
    return WarmResponse(
        entries=[
            WarmedEntry(
                entry_id=r.entry_id,
                category=r.category,
                stored=r.entry_id is not None,
                reason=r.reason,
            )  # fmt: skip
            for r in results
        ]
    )


@router.post("/v1/cache/lookup", response_model=LookupResponse)
async def lookup(
    body: LookupRequest,
    tenant: Tenant,
    cache: SemanticCacheDep,
    embedder: Embedding,
    parts: Components,
) -> LookupResponse:
    """Dry run: the lookup a chat request would make, without counting it or serving it."""
    model, template = body.partition(parts.model_card.id)
    vector = await run_in_threadpool(embedder.embed_one, body.query)
    result = await run_in_threadpool(
        cache.lookup, tenant, model, template, body.query, vector, body.category, False
    )
    return LookupResponse(
        hit=result.hit is not None,
        entry_id=result.entry_id,
        similarity=result.similarity,
        category=result.category,
        threshold=result.threshold,
        reason=result.reason,
        cached_query=result.hit.query if result.hit else None,
        response=result.hit.response if result.hit else None,
    )
