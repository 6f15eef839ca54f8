"""`POST /v1/chat/completions` and `POST /v1/completions` (OpenAI-compatible): parse, call
the pipeline, format its answer as JSON or SSE."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ragkv.engine.sampling import SamplingParams, TokenLogprob
from ragkv.engine.sequence import Constraint, KVReuse
from ragkv.errors import InvalidRequest, NotFound
from ragkv.pipeline import request as contract
from ragkv.pipeline.answer import Delta
from ragkv.pipeline.tools import ToolSpec, ToolUse
from ragkv.server import openai_format as fmt
from ragkv.server.auth import Tenant
from ragkv.server.deps import Components, Pipe
from ragkv.server.respond import Completion, respond
from ragkv.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    RagkvOptions,
    SamplingFields,
)

router = APIRouter(tags=["generation"])
ScopedRequest = TypeVar("ScopedRequest", contract.ChatRequest, contract.CompletionRequest)
NOT_SUPPORTED = ("presence_penalty", "frequency_penalty", "logit_bias")
# OpenAI chat fields accepted and not acted on: storage, tracing and routing hints.
IGNORED_FIELDS = frozenset(
    {"store", "metadata", "service_tier", "safety_identifier", "prompt_cache_key"}
)


def check_model(served: str, body: SamplingFields) -> None:
    """Refuse a model this gateway does not serve and sampling fields it does not support."""
    if body.model not in (None, "", "default", served):
        raise NotFound(
            f"model '{body.model}' is not served here; use '{served}' or 'default'",
            param="model",
            code="model_not_found",
        )
    for name in NOT_SUPPORTED:
        if getattr(body, name):
            raise InvalidRequest(f"{name} is not supported; leave it out", param=name)


def scoped(request: ScopedRequest, parts: Any, http: Request, user: str | None) -> ScopedRequest:
    """Under `cache.scope = user`, the request keyed by its user's own caches (the `user`
    field, else the x-ragkv-user header; without either, the tenant's caches)."""
    if parts.settings.cache.scope != "user":
        return request
    user = user or http.headers.get("x-ragkv-user")
    if not user:
        return request
    return replace(request, cache=replace(request.cache, user=user[:256]))


def cache_options(options: RagkvOptions) -> contract.CacheOptions:
    """The `ragkv` extension object as the pipeline takes it (`kv_reuse` parsed here, once)."""
    return contract.CacheOptions(
        semantic_cache=options.semantic_cache,
        category=options.category,
        kv_reuse=KVReuse(options.kv_reuse),
        recompute_ratio=options.recompute_ratio,
        session_id=options.session_id,
        pin_ttl_s=options.pin_ttl_s,
    )


def sampling(
    body: SamplingFields, max_tokens: int | None, logprobs: bool, top_logprobs: int
) -> SamplingParams:
    """Sampling parameters of the body (`max_tokens` None: filled in by the pipeline)."""
    return SamplingParams(
        max_tokens=max_tokens or 1,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        ignore_eos=body.ignore_eos,
    )


def check_fields(body: ChatCompletionRequest) -> None:
    """Refuse, by name, any field of the body ragkv does not implement (never drop it)."""
    for name in body.model_extra or {}:
        if name not in IGNORED_FIELDS:
            raise InvalidRequest(
                f"'{name}' is not supported by this server; leave it out", param=name
            )


def tool_use(body: ChatCompletionRequest) -> ToolUse:
    """`tools`, `tool_choice`, `parallel_tool_calls` and `response_format`, checked."""
    tools = tuple(
        ToolSpec(t.function.name, t.function.description, t.function.parameters, t.function.strict)
        for t in body.tools or []
    )
    if len({tool.name for tool in tools}) != len(tools):
        raise InvalidRequest("tool names must be unique", param="tools")
    choice, function = body.tool_choice or ("auto" if tools else "none"), None
    if not isinstance(choice, str):
        function = choice.function.get("name", "")
        choice = "function"
        if not any(tool.name == function for tool in tools):
            raise InvalidRequest(
                f"tool_choice names '{function}', not in tools", param="tool_choice"
            )
    if choice in ("required", "function") and not tools:
        raise InvalidRequest(f"tool_choice '{choice}' needs tools", param="tool_choice")
    response_format = None
    if body.response_format is not None and body.response_format.type == "json_object":
        response_format = Constraint("json_object")
    elif body.response_format is not None and body.response_format.json_schema is not None:
        json_schema = body.response_format.json_schema
        strict = json_schema.strict is not False  # unset: strict, as ragkv always was
        response_format = Constraint("json_schema", json.dumps(json_schema.schema_), strict=strict)
    return ToolUse(tools, choice, function, body.parallel_tool_calls, response_format)


def chat_request(body: ChatCompletionRequest, tenant: str) -> contract.ChatRequest:
    """The pipeline's request for a chat completion body."""
    check_fields(body)
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    rag = body.rag
    return contract.ChatRequest(
        tenant=tenant,
        messages=[m.to_dict() for m in body.messages],
        tools=tool_use(body),
        params=sampling(body, max_tokens, body.logprobs, body.top_logprobs or 0),
        max_tokens_set=max_tokens is not None,
        documents=tuple(contract.InlineDocument(d.text, d.id) for d in body.documents or []),
        rag=contract.RagQuery(rag.collection, rag.top_k) if rag is not None else None,
        cache=cache_options(body.ragkv),
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, http: Request, tenant: Tenant, parts: Components, pipeline: Pipe
) -> JSONResponse | StreamingResponse:
    """Chat completion over the served model. With `documents` or `rag`, the context chunks
    are placed before the question and their cached KV is blended (`ragkv.kv_reuse`)."""
    check_model(parts.model_card.id, body)
    request = scoped(chat_request(body, tenant), parts, http, body.user)
    answer = await pipeline.chat(request, http.is_disconnected)
    completion = chat_completion(parts.model_card.id, pipeline, body.logprobs)
    completion.expose_cache = parts.settings.server.expose_cache_status
    return await respond(answer, completion, body.stream)


def chat_completion(model_id: str, pipeline: Any, logprobs: bool) -> Completion:
    """The chat completion's shapes (`chat.completion` and its chunks)."""
    tokenizer = pipeline.tokenizer

    def logprobs_of(items: list[TokenLogprob]) -> dict[str, Any] | None:
        return fmt.chat_logprobs(tokenizer, items) if logprobs else None

    def message(delta: Delta) -> dict[str, Any]:
        if delta.tool_calls:
            calls = [call.to_json() for call in delta.tool_calls]
            return {"role": "assistant", "content": None, "tool_calls": calls}
        return {"role": "assistant", "content": delta.text}

    def piece(delta: Delta) -> dict[str, Any]:
        if delta.call_pieces:
            return {"tool_calls": [piece.to_json() for piece in delta.call_pieces]}
        if delta.tool_calls:
            return {"tool_calls": [c.to_json(i) for i, c in enumerate(delta.tool_calls)]}
        return {"content": delta.text} if delta.text else {}

    return Completion(
        "chat.completion",
        "chat.completion.chunk",
        "chatcmpl",
        model_id,
        choice_full=lambda delta: {
            "index": 0,
            "message": message(delta),
            "logprobs": logprobs_of(delta.logprobs),
            "finish_reason": delta.finish_reason,
        },
        choice_delta=lambda delta: {
            "index": 0,
            "delta": piece(delta),
            "logprobs": logprobs_of(delta.logprobs),
            "finish_reason": delta.finish_reason,
        },
        first_delta={
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        },
    )


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, http: Request, tenant: Tenant, parts: Components, pipeline: Pipe
) -> JSONResponse | StreamingResponse:
    """Plain-prompt completion (no chat template)."""
    check_model(parts.model_card.id, body)
    tokenizer = pipeline.tokenizer
    prompt_ids = prompt_token_ids(tokenizer, body.prompt)
    want_logprobs = body.logprobs is not None
    request = contract.CompletionRequest(
        tenant=tenant,
        prompt_ids=prompt_ids,
        params=sampling(body, body.max_tokens, want_logprobs, body.logprobs or 0),
        max_tokens_set=body.max_tokens is not None,
        cache=cache_options(body.ragkv),
    )
    answer = await pipeline.complete(scoped(request, parts, http, body.user), http.is_disconnected)
    prefix = tokenizer.decode(prompt_ids) if body.echo else ""

    def choice(delta: Delta, prefix: str = "") -> dict[str, Any]:
        return {
            "index": 0,
            "text": prefix + delta.text,
            "logprobs": (
                fmt.completion_logprobs(tokenizer, delta.logprobs) if want_logprobs else None
            ),
            "finish_reason": delta.finish_reason,
        }

    completion = Completion(
        "text_completion",
        "text_completion",
        "cmpl",
        parts.model_card.id,
        choice_full=lambda delta: choice(delta, prefix),
        choice_delta=choice,
    )
    completion.expose_cache = parts.settings.server.expose_cache_status
    return await respond(answer, completion, body.stream)


def prompt_token_ids(tokenizer: Any, prompt: str | list[str] | list[int]) -> list[int]:
    """Token ids of a plain prompt (text, one-element text list, or token ids)."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt)
    if prompt and isinstance(prompt[0], str):
        return tokenizer.encode(str(prompt[0]))
    if not all(isinstance(t, int) for t in prompt):
        raise InvalidRequest("prompt must be text or a list of token ids", param="prompt")
    return [int(t) for t in prompt]
