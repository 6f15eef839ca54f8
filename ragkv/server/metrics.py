"""Prometheus metrics: one registry per app (on `app.state.metrics_registry`) and `GET /metrics`.

Components register their metrics on the app's registry, never on prometheus_client's global
default one, so several apps in one process (tests) do not clash.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

router = APIRouter(tags=["metrics"])


def build_registry() -> CollectorRegistry:
    """A fresh registry for one app."""
    return CollectorRegistry(auto_describe=True)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Every metric of this app in the Prometheus text format."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
