"""`POST /v1/rag/chat`: ask a collection a question; the answer comes with its sources."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ragkv.server.auth import Tenant
from ragkv.server.routes.chat import run_chat
from ragkv.server.schemas import ChatCompletionRequest, RagChatRequest, RagQuery

router = APIRouter(tags=["rag"])


@router.post("/v1/rag/chat", response_model=None)
async def rag_chat(
    body: RagChatRequest, http: Request, tenant: Tenant
) -> JSONResponse | StreamingResponse:
    """Retrieve the `top_k` chunks of `collection`, answer from them (chunk KV blended).

    Non-stream: `{id, object: "rag.answer", model, answer, finish_reason, sources, usage,
    ragkv}`. Stream: the chat-completion SSE chunks; the last one before `[DONE]` carries
    `usage` and `ragkv` with `sources`.
    """
    messages = [{"role": "user", "content": body.question}]
    if body.system:
        messages.insert(0, {"role": "system", "content": body.system})
    chat = ChatCompletionRequest(
        messages=messages,
        model=body.model,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        stream=body.stream,
        rag=RagQuery(collection=body.collection, top_k=body.top_k),
        ragkv=body.ragkv,
    )
    response = await run_chat(chat, http, tenant)
    if body.stream or not isinstance(response, JSONResponse):
        return response
    completion = json.loads(bytes(response.body))
    choice = completion["choices"][0]
    ragkv = completion.get("ragkv") or {}
    answer = {
        "id": completion["id"].replace("chatcmpl-", "rag-", 1),
        "object": "rag.answer",
        "created": completion["created"],
        "model": completion["model"],
        "answer": choice["message"]["content"],
        "finish_reason": choice["finish_reason"],
        "sources": ragkv.get("sources"),
        "usage": completion["usage"],
        "ragkv": ragkv,
    }
    headers = {"x-ragkv-cache": response.headers.get("x-ragkv-cache", "miss")}
    return JSONResponse(answer, headers=headers)
