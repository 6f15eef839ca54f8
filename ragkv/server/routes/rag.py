"""`POST /v1/rag/chat`: ask a collection a question; the answer comes with its sources."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ragkv.pipeline import request as contract
from ragkv.server.auth import Tenant
from ragkv.server.deps import Components, Pipe
from ragkv.server.respond import cache_headers, final_fields, respond
from ragkv.server.routes.chat import (
    cache_options,
    chat_completion,
    check_model,
    sampling,
    scoped,
)
from ragkv.server.schemas import RagChatRequest, SamplingFields

router = APIRouter(tags=["rag"])


@router.post("/v1/rag/chat", response_model=None)
async def rag_chat(
    body: RagChatRequest, http: Request, tenant: Tenant, parts: Components, pipeline: Pipe
) -> JSONResponse | StreamingResponse:
    """Retrieve the `top_k` chunks of `collection`, answer from them (chunk KV blended).

    Non-stream: `{id, object: "rag.answer", model, answer, finish_reason, sources, usage,
    ragkv}`. Stream: the chat-completion SSE chunks; the last one before `[DONE]` carries
    `usage` and `ragkv` with `sources`.
    """
    model_id = parts.model_card.id
    fields = SamplingFields(model=body.model, temperature=body.temperature)
    check_model(model_id, fields)
    messages = [{"role": "user", "content": body.question}]
    if body.system:
        messages.insert(0, {"role": "system", "content": body.system})
    request = contract.ChatRequest(
        tenant=tenant,
        messages=messages,
        params=sampling(fields, body.max_tokens, False, 0),
        max_tokens_set=body.max_tokens is not None,
        rag=contract.RagQuery(body.collection, body.top_k),
        cache=cache_options(body.ragkv),
    )
    answer = await pipeline.chat(scoped(request, parts, http, None), http.is_disconnected)
    completion = chat_completion(model_id, pipeline, logprobs=False)
    completion.expose_cache = expose = parts.settings.server.expose_cache_status
    if body.stream:
        return await respond(answer, completion, stream=True)
    text = (await answer.collect()).text
    final = final_fields(answer, expose)
    return JSONResponse(
        {
            "id": completion.completion_id.replace("chatcmpl-", "rag-", 1),
            "object": "rag.answer",
            "created": completion.created,
            "model": model_id,
            "answer": text,
            "finish_reason": answer.finish_reason,
            "sources": final["ragkv"].get("sources"),
            **final,
        },
        headers=cache_headers(answer, expose),
    )
