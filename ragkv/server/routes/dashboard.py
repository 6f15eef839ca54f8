"""Operator pages served from the package, with no CDN: the cache dashboard
(`/admin/dashboard`, its data at `/admin/dashboard/data`) and the API docs (`/docs`,
`/redoc`) with their scripts served locally.

The dashboard page itself holds no data, so it loads without a key; it asks for the admin
key and sends it as a bearer header to the data endpoint and the existing admin routes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ragkv.server.auth import Admin
from ragkv.server.deps import Components, Engine, semantic_admin_of
from ragkv.server.routes import cache_admin
from ragkv.server.timeseries import Sampler

router = APIRouter(tags=["cache admin"])

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
STATIC_URL = "/static/ragkv"
API_DOCS_URL = "/static/apidocs"
TOP_TENANTS = 20
TOP_COLLECTIONS = 20


def api_docs_assets() -> Path:
    """The folder of swagger-ui and redoc files shipped by the `fastapi-offline` package."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the API docs assets need the fastapi-offline package installed")
    return Path(spec.submodule_search_locations[0]) / "static"


def mount_static(app: FastAPI) -> None:
    """Serve the dashboard's files and the API docs' scripts from the installed packages."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="ragkv-static")
    app.mount(API_DOCS_URL, StaticFiles(directory=api_docs_assets()), name="api-docs-static")


# -- the dashboard ------------------------------------------------------------------------


@router.get("/admin/dashboard", include_in_schema=False)
async def dashboard_page() -> FileResponse:
    """The dashboard page (no data in it: it asks for the admin key, then polls the data)."""
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html")


@router.get("/admin/dashboard/data")
async def dashboard_data(
    request: Request,
    _: Admin,
    parts: Components,
    engine: Engine,
    since: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
) -> dict[str, Any]:
    """What the dashboard shows: `stats` (exactly `/admin/cache/stats`), a summary per level
    (tokens and estimated prefill seconds saved), categories with their effective
    thresholds, the top tenants, engine load, retrieval sizes and the time series (one point
    per 5 s for the last hour; only points after `since`, a unix time, when given)."""
    stats = await cache_admin.stats(None, parts, engine)
    sampler: Sampler | None = getattr(request.app.state, "sampler", None)
    series = sampler.to_json(since) if sampler is not None else None
    latest = sampler.series.latest() if sampler is not None else None
    semantic = stats["semantic"]
    return {
        "stats": stats,
        "levels": level_summary(stats, prefill_tokens_per_s(parts, stats["chunk"])),
        "categories": await run_in_threadpool(category_rows, parts, semantic),
        "tenants": tenant_rows(semantic),
        "engine": {**parts.engine.load_info(), **latency_of(latest)},
        "retrieval": await run_in_threadpool(retrieval_summary, parts),
        "series": series,
    }


def level_summary(stats: dict[str, Any], prefill_tokens_s: float | None) -> dict[str, Any]:
    """Per level: requests, what was looked up (`unit`), hits, hit rate, tokens saved and the
    prefill seconds that saved (estimated at `prefill_tokens_s`; None when unknown).

    Semantic saves whole answers (tokens: the mean prompt plus answer of an engine request),
    prefix its cached prompt tokens, chunk the chunk tokens whose KV was kept (chunk tokens
    minus the recomputed ones)."""
    prefix, chunk, semantic = stats["prefix"], stats["chunk"], stats["semantic"]
    requests = prefix["requests"]
    mean_prompt = prefix["prompt_tokens"] / requests if requests else 0.0
    mean_answer = prefix["generated_tokens"] / requests if requests else 0.0

    def row(requests: int, looked_up: int, hits: int, unit: str, saved: float, prefill: float):
        seconds = round(prefill / prefill_tokens_s, 3) if prefill_tokens_s else None
        rate = hits / looked_up if looked_up else 0.0
        return {
            "requests": requests,
            "looked_up": looked_up,
            "hits": hits,
            "unit": unit,
            "hit_rate": rate,
            "tokens_saved": round(saved),
            "prefill_s_saved": seconds,
        }

    levels: dict[str, Any] = {"prefill_tokens_per_s": prefill_tokens_s}
    levels["semantic"] = None
    if semantic is not None:
        totals = semantic["totals"]
        hits = totals["hits"]
        answer_tokens = hits * (mean_prompt + mean_answer)
        lookups = totals["lookups"]
        levels["semantic"] = row(
            lookups, lookups, hits, "questions", answer_tokens, hits * mean_prompt
        )
    cached = prefix["cached_tokens"]
    levels["prefix"] = row(
        requests, prefix["prompt_tokens"], cached, "prompt tokens", cached, cached
    )
    levels["chunk"] = None
    if chunk is not None:
        counters = chunk["counters"]
        hits = sum(count for name, count in counters.items() if name.startswith("hits_"))
        kept = chunk["chunk_tokens_reused"]
        levels["chunk"] = row(
            chunk["requests"], counters.get("lookups", 0), hits, "chunks", kept, kept
        )
    return levels


def prefill_tokens_per_s(parts: Components, chunk: dict[str, Any] | None) -> float | None:
    """The engine's prefill speed: the chunk store's measured figure when the chunk cache is
    on, else prompt tokens computed over the time to first token of engine requests."""
    if chunk is not None and chunk["cost_model"].get("prefill_tokens_s"):
        return float(chunk["cost_model"]["prefill_tokens_s"])
    metrics = parts.pipeline.metrics
    if metrics is None:
        return None
    seconds = _sample_total(metrics.ttft, "_sum")
    tokens = _sample_total(metrics.recomputed, "_total")
    return round(tokens / seconds, 1) if seconds > 0 and tokens > 0 else None


def _sample_total(metric: Any, suffix: str) -> float:
    """The sum over label values of a prometheus_client metric's samples named `*suffix`."""
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.name.endswith(suffix)
    )


def category_rows(parts: Components, semantic: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each category's counters with its policy: configured and effective (load-adapted)
    threshold, floor, TTL. Empty when the semantic cache is off."""
    if semantic is None:
        return []
    admin = semantic_admin_of(parts)
    counted = semantic["categories"]
    rows = []
    for name, policy in sorted(admin.categories().items()):
        row = dict(counted.get(name) or {})
        row.update(
            category=name,
            threshold=policy.threshold,
            effective_threshold=round(admin.cache.adapter.threshold(policy), 4),
            floor=policy.floor,
            ttl_s=policy.ttl_s,
        )
        rows.append(row)
    return rows


def tenant_rows(semantic: dict[str, Any] | None, limit: int = TOP_TENANTS) -> list[dict[str, Any]]:
    """Semantic-cache totals per tenant (all categories), the `limit` busiest first."""
    if semantic is None:
        return []
    rows = []
    for tenant, categories in semantic["tenants"].items():
        total = {"tenant": tenant, "lookups": 0, "hits": 0, "entries": 0, "bytes": 0}
        for row in categories.values():
            for key in ("lookups", "hits", "entries", "bytes"):
                total[key] += row[key]
        total["hit_rate"] = total["hits"] / total["lookups"] if total["lookups"] else 0.0
        rows.append(total)
    rows.sort(key=lambda row: (-row["lookups"], -row["entries"], row["tenant"]))
    return rows[:limit]


def retrieval_summary(parts: Components) -> dict[str, Any]:
    """Collections, documents and chunks of every tenant, search latency; the largest
    collections first."""
    collections = parts.retriever.store.list_collections()
    largest = sorted(collections, key=lambda c: (-c.num_chunks, c.tenant, c.name))
    return {
        "collections": len(collections),
        "documents": sum(c.num_documents for c in collections),
        "chunks": sum(c.num_chunks for c in collections),
        "search": parts.retriever.timings.summary(),  # embedding + index + rows, recent
        "largest": [
            {
                "tenant": c.tenant,
                "name": c.name,
                "documents": c.num_documents,
                "chunks": c.num_chunks,
            }
            for c in largest[:TOP_COLLECTIONS]
        ],
    }


def latency_of(point: dict[str, Any] | None) -> dict[str, Any]:
    """TTFT and inter-token percentiles (ms, last minute) from the newest sampled point."""
    names = ("ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms")
    return {name: (point or {}).get(name) for name in names}


# -- the API docs, with local assets -------------------------------------------------------


@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI over this app's OpenAPI schema, its scripts served by the gateway."""
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=root + "/docs/oauth2-redirect",
        swagger_js_url=f"{root}{API_DOCS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{API_DOCS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{API_DOCS_URL}/favicon.png",
    )


@router.get("/docs/oauth2-redirect", include_in_schema=False)
async def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    """ReDoc over this app's OpenAPI schema, its script served by the gateway."""
    root = request.scope.get("root_path", "")
    return get_redoc_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{API_DOCS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{API_DOCS_URL}/favicon.png",
        with_google_fonts=False,
    )
