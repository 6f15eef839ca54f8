"""Shapes of OpenAI responses: usage, the ragkv object, logprobs, SSE framing."""

from __future__ import annotations

import json
from typing import Any

from ragkv.engine.sampling import TokenLogprob
from ragkv.engine.sequence import RequestOutput
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import RagkvError


def usage(final: RequestOutput) -> dict[str, Any]:
    """OpenAI usage with `prompt_tokens_details.cached_tokens`."""
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": final.cached_tokens},
    }


def ragkv_info(
    final: RequestOutput, kv_reuse: str, semantic: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The response's `ragkv` object: what each cache level contributed.

    `semantic` is the semantic-cache outcome (None: the request did not take part).
    """
    return {
        "semantic_cache": (semantic or {}).get("semantic_cache", "skipped"),
        "semantic": semantic,
        "kv_reuse": kv_reuse,
        "selector": final.selector,
        "prefix_tokens_reused": final.cached_tokens,
        "chunk_tokens_reused": final.chunk_tokens_reused,
        "tokens_recomputed": final.tokens_recomputed
        if final.tokens_recomputed is not None
        else final.prompt_tokens - final.cached_tokens,
        "ttft_ms": round(final.ttft_ms, 2) if final.ttft_ms is not None else None,
    }


def cache_header(final: RequestOutput) -> str:
    """Value of `x-ragkv-cache` for an answer the engine produced."""
    return "kv-hit" if final.cached_tokens > 0 or final.chunk_tokens_reused > 0 else "miss"


def cached_output(prompt_tokens: int, completion_tokens: int) -> RequestOutput:
    """A finished output standing for an answer served from the semantic cache."""
    return RequestOutput(
        request_id="semantic-cache",
        text="",
        token_ids=[],
        logprobs=[],
        finished=True,
        finish_reason="stop",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cached_tokens=0,
        ttft_ms=None,
    )


def _token_entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = tokenizer.decode([token_id], skip_special_tokens=False)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer: Tokenizer, items: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[].logprobs` of a chat completion."""
    content = []
    for item in items:
        entry = _token_entry(tokenizer, item.token_id, item.logprob)
        entry["top_logprobs"] = [_token_entry(tokenizer, t, lp) for t, lp in item.top]
        content.append(entry)
    return {"content": content}


def completion_logprobs(tokenizer: Tokenizer, items: list[TokenLogprob]) -> dict[str, Any]:
    """`choices[].logprobs` of a text completion (legacy shape)."""
    tokens = [tokenizer.decode([i.token_id], skip_special_tokens=False) for i in items]
    offsets, position = [], 0
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [i.logprob for i in items],
        "top_logprobs": [
            {tokenizer.decode([t], skip_special_tokens=False): lp for t, lp in i.top} for i in items
        ],
        "text_offset": offsets,
    }


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event line pair."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def sse_error(error: RagkvError) -> str:
    """An error in the middle of a stream: a final event carrying the OpenAI envelope."""
    return sse(error.to_envelope())
