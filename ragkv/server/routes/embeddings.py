"""`POST /v1/embeddings`: OpenAI-format sentence embeddings from the MiniLM embedder."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from ragkv.errors import NotFound, Unprocessable
from ragkv.retrieval.embedder import Embedder
from ragkv.server.auth import Tenant

router = APIRouter(tags=["embeddings"])

MAX_INPUTS = 2048
MODEL_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request: one string or a list of strings."""

    input: str | list[str] = Field(description="text or texts to embed")
    model: str = Field(description="the embedding model, e.g. all-MiniLM-L6-v2")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, description="must be the model's width when given")
    user: str | None = None


class Embedding(BaseModel):
    """One vector; base64 is little-endian float32, as OpenAI sends it."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    """Tokens the embedder read."""

    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    """OpenAI's embeddings answer."""

    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def _check(body: EmbeddingRequest, embedder: Embedder) -> list[str]:
    accepted = (
        {embedder.model_name, *MODEL_ALIASES}
        if embedder.settings.model_dir is None
        else {embedder.model_name}
    )
    if body.model not in accepted:
        raise NotFound(
            f"embedding model '{body.model}' is not served here; use '{embedder.model_name}'",
            param="model",
            code="model_not_found",
        )
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise Unprocessable("input must not be an empty list", param="input")
    if len(texts) > MAX_INPUTS:
        raise Unprocessable(f"input has {len(texts)} texts; at most {MAX_INPUTS}", param="input")
    for position, text in enumerate(texts):
        if not text.strip():
            raise Unprocessable(f"input[{position}] is empty", param="input")
    return texts


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, tenant: Tenant
) -> EmbeddingResponse:
    """Embed `input` with the served embedding model (vectors are L2-normalised)."""
    embedder: Embedder = request.app.state.components.embedder
    texts = _check(body, embedder)
    vectors = await run_in_threadpool(embedder.embed, texts)
    if body.dimensions is not None and body.dimensions != vectors.shape[1]:
        raise Unprocessable(
            f"dimensions must be {vectors.shape[1]} for '{embedder.model_name}'",
            param="dimensions",
        )
    num_tokens = await run_in_threadpool(embedder.count_tokens, texts)
    data = [
        Embedding(index=i, embedding=_encode(vector, body.encoding_format))
        for i, vector in enumerate(vectors)
    ]
    usage = EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens)
    return EmbeddingResponse(data=data, model=embedder.model_name, usage=usage)


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()
