"""`POST /v1/chat/completions` and `POST /v1/completions` (OpenAI-compatible)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ragkv.engine.sampling import SamplingParams, TokenLogprob
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import InvalidRequest, NotFound
from ragkv.pipeline.pipeline import Pipeline, PromptSpec
from ragkv.server import openai_format as fmt
from ragkv.server.auth import Tenant
from ragkv.server.generation import Completion, StoreBack, respond, respond_cached
from ragkv.server.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

router = APIRouter(tags=["generation"])
NOT_SUPPORTED = ("presence_penalty", "frequency_penalty")


def _pipeline(http: Request) -> Pipeline:
    return http.app.state.pipeline


def _check_model(http: Request, body: SamplingFields) -> str:
    served = http.app.state.model_card.id
    if body.model not in (None, "", "default", served):
        raise NotFound(
            f"model '{body.model}' is not served here; use '{served}' or 'default'",
            param="model",
            code="model_not_found",
        )
    for name in NOT_SUPPORTED:
        if getattr(body, name):
            raise InvalidRequest(f"{name} is not supported; leave it at 0", param=name)
    return served


def _spec(
    body: SamplingFields,
    tenant: str,
    prompt_ids: list[int],
    max_tokens: int,
    logprobs: bool,
    top_logprobs: int,
) -> PromptSpec:
    """The engine-facing request: sampling from the body, cache controls from `ragkv`."""
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=body.stop_list(),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )
    return PromptSpec(
        prompt_ids=prompt_ids,
        params=params,
        tenant=tenant,
        kv_reuse=body.ragkv.kv_reuse,
        pin_ttl_s=body.ragkv.pin_ttl_s,
        session_id=body.ragkv.session_id,
        recompute_ratio=body.ragkv.recompute_ratio,
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, http: Request, tenant: Tenant
) -> JSONResponse | StreamingResponse:
    """Chat completion over the served model. With `documents` or `rag`, the context chunks
    are placed before the question and their cached KV is blended (`ragkv.kv_reuse`)."""
    return await run_chat(body, http, tenant)


async def run_chat(
    body: ChatCompletionRequest, http: Request, tenant: str
) -> JSONResponse | StreamingResponse:
    """The chat pipeline: semantic cache -> context -> prompt -> engine -> store-back."""
    model_id = _check_model(http, body)
    pipeline = _pipeline(http)
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    prompt_ids = pipeline.chat_prompt_ids(messages)
    max_tokens = pipeline.max_tokens(body.max_completion_tokens or body.max_tokens, len(prompt_ids))
    spec = _spec(body, tenant, prompt_ids, max_tokens, body.logprobs, body.top_logprobs or 0)
    tokenizer = pipeline.tokenizer
    store_back = StoreBack(None, None)
    step = getattr(http.app.state, "semantic_step", None)
    if step is not None and not body.logprobs:
        probe = await step.probe(
            tenant,
            _keyed_by_context(messages, body),
            body.temperature,
            body.ragkv.semantic_cache,
            body.ragkv.category,
            http.app.state.engine.load,
        )
        store_back = StoreBack(step, probe)
    completion = _chat_completion(model_id, tokenizer, body.logprobs)
    hit = store_back.probe.hit if store_back.probe is not None else None
    if hit is not None:
        num_tokens = len(tokenizer.encode(hit.response))
        return respond_cached(hit.response, completion, body.stream, spec, store_back, num_tokens)
    extra: dict[str, Any] = {}
    if body.documents or body.rag:
        context = await pipeline.context(
            tenant,
            messages[-1]["content"] if messages[-1]["role"] == "user" else "",
            [(d.id, d.text) for d in body.documents or []],
            body.rag.collection if body.rag else None,
            body.rag.top_k if body.rag else 4,
        )
        extra["sources"] = [source.to_json() for source in context.sources]
        if context.chunks:
            prompt = pipeline.rag_prompt(messages, context)
            requested = body.max_completion_tokens or body.max_tokens
            max_tokens = pipeline.max_tokens(requested, len(prompt.token_ids))
            spec = _spec(
                body, tenant, prompt.token_ids, max_tokens, body.logprobs, body.top_logprobs or 0
            )
            spec = replace(
                spec, chunk_spans=tuple(prompt.spans), chunk_context=pipeline.chunk_context
            )
    return await respond(pipeline, spec, completion, body.stream, http, store_back, extra)


def _keyed_by_context(
    messages: list[dict[str, str]], body: ChatCompletionRequest
) -> list[dict[str, str]]:
    """Messages as the semantic cache keys them: a RAG answer is only reused for the same
    context (the same inline documents, or the same collection and top_k)."""
    if not body.documents and not body.rag:
        return messages
    digest = hashlib.sha256()
    for document in body.documents or []:
        digest.update(f"{document.id}\x00{document.text}\x00".encode())
    if body.rag:
        digest.update(f"rag\x00{body.rag.collection}\x00{body.rag.top_k}".encode())
    marker = {"role": "system", "content": f"ragkv-context:{digest.hexdigest()[:32]}"}
    return [marker, *messages]


def _chat_completion(model_id: str, tokenizer: Tokenizer, logprobs: bool) -> Completion:
    def logprobs_of(items: list[TokenLogprob]) -> dict[str, Any] | None:
        return fmt.chat_logprobs(tokenizer, items) if logprobs else None

    return Completion(
        "chat.completion",
        "chat.completion.chunk",
        "chatcmpl",
        model_id,
        choice_full=lambda text, lps, reason: {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs_of(lps),
            "finish_reason": reason,
        },
        choice_delta=lambda text, lps, reason: {
            "index": 0,
            "delta": {"content": text} if text else {},
            "logprobs": logprobs_of(lps),
            "finish_reason": reason,
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
    body: CompletionRequest, http: Request, tenant: Tenant
) -> JSONResponse | StreamingResponse:
    """Plain-prompt completion (no chat template)."""
    model_id = _check_model(http, body)
    pipeline = _pipeline(http)
    prompt_ids = pipeline.text_prompt_ids(body.prompt)
    max_tokens = pipeline.max_tokens(body.max_tokens, len(prompt_ids))
    want_logprobs = body.logprobs is not None
    spec = _spec(body, tenant, prompt_ids, max_tokens, want_logprobs, body.logprobs or 0)
    tokenizer = pipeline.tokenizer
    prefix = tokenizer.decode(prompt_ids) if body.echo else ""

    def choice(text: str, lps: list[TokenLogprob], reason: str | None) -> dict[str, Any]:
        return {
            "index": 0,
            "text": text,
            "logprobs": fmt.completion_logprobs(tokenizer, lps) if want_logprobs else None,
            "finish_reason": reason,
        }

    completion = Completion(
        "text_completion",
        "text_completion",
        "cmpl",
        model_id,
        choice_full=lambda text, lps, reason: choice(prefix + text, lps, reason),
        choice_delta=choice,
    )
    return await respond(pipeline, spec, completion, body.stream, http)
