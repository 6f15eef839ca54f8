"""`GET /v1/models`: the model this gateway serves."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ragkv.errors import NotFound
from ragkv.server.auth import Tenant

router = APIRouter(tags=["models"])


class ModelCard(BaseModel):
    """One model, OpenAI's shape plus the context length."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragkv"
    context_length: int


class ModelList(BaseModel):
    """The list answer of `GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, tenant: Tenant) -> ModelList:
    """Models served here (one per gateway)."""
    return ModelList(data=[request.app.state.model_card])


@router.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(model_id: str, request: Request, tenant: Tenant) -> ModelCard:
    """One model by id."""
    card: ModelCard = request.app.state.model_card
    if model_id not in (card.id, "default"):
        raise NotFound(f"model '{model_id}' is not served here; GET /v1/models lists the models")
    return card
