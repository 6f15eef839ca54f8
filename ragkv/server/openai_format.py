"""Shapes of OpenAI responses: logprobs and SSE framing."""

from __future__ import annotations

import json
from typing import Any

from ragkv.engine.sampling import TokenLogprob
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import RagkvError


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
