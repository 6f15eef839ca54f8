"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Every component is loaded and the server can take work (503 while starting)."""
    is_ready = bool(getattr(request.app.state, "ready", False))
    status = 200 if is_ready else 503
    return JSONResponse({"status": "ready" if is_ready else "starting"}, status_code=status)
