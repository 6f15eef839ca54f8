"""`GET /v1/models`: the model this gateway serves."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from ragkv.errors import NotFound
from ragkv.server.auth import Tenant
from ragkv.server.deps import Components
from ragkv.server.schemas import ModelCard

router = APIRouter(tags=["models"])


class ModelList(BaseModel):
    """The list answer of `GET /v1/models`."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


@router.get("/v1/models", response_model=ModelList)
async def list_models(tenant: Tenant, parts: Components) -> ModelList:
    """Models served here (one per gateway)."""
    return ModelList(data=[parts.model_card])


@router.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(model_id: str, tenant: Tenant, parts: Components) -> ModelCard:
    """One model by id."""
    card = parts.model_card
    if model_id not in (card.id, "default"):
        raise NotFound(f"model '{model_id}' is not served here; GET /v1/models lists the models")
    return card
