"""What the pipeline gives back: an `Answer` to iterate for text deltas, which knows at the
end its usage and what each cache level contributed (the `ragkv` object)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from ragkv.engine.sampling import TokenLogprob
from ragkv.engine.sequence import RequestOutput
from ragkv.pipeline.context import Source


@dataclass(frozen=True)
class ToolCall:
    """A call the model made: id, function name, arguments as a JSON string."""

    id: str
    name: str
    arguments: str

    @classmethod
    def new(cls, name: str, arguments: Any) -> ToolCall:
        """A call with a fresh id; `arguments` a JSON value (dumped) or a JSON string."""
        text = arguments if isinstance(arguments, str) else json.dumps(arguments)
        return cls(f"call_{uuid.uuid4().hex[:24]}", name, text)

    def to_json(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI's `tool_calls` entry (with `index` in a stream delta)."""
        entry: dict[str, Any] = {} if index is None else {"index": index}
        function = {"name": self.name, "arguments": self.arguments}
        return entry | {"id": self.id, "type": "function", "function": function}


@dataclass(frozen=True)
class CallPiece:
    """A piece of a tool call being streamed: the call's position, the start of its JSON
    arguments or more of them, and the call itself (id and name) on its first piece."""

    index: int
    arguments: str
    call: ToolCall | None = None

    def to_json(self) -> dict[str, Any]:
        """OpenAI's streamed `tool_calls` entry: id, type and name only on the first piece."""
        if self.call is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return self.call.to_json(self.index) | {
            "function": {"name": self.call.name, "arguments": self.arguments}
        }


@dataclass(frozen=True)
class Delta:
    """A piece of the answer: new text, its tokens' logprobs (when asked), the finish reason
    on the last piece, and the tool calls the answer made: whole (on its last piece), or
    streamed as `call_pieces`."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    call_pieces: tuple[CallPiece, ...] = ()


@dataclass(frozen=True)
class Usage:
    """OpenAI usage: prompt and completion tokens, prompt tokens served from cached KV."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        """OpenAI's `usage` with `prompt_tokens_details.cached_tokens`."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass(frozen=True)
class CacheReport:
    """The response's `ragkv` object: what each cache level contributed.

    `semantic` is the semantic-cache outcome (None: the request did not take part);
    `sources` the context chunks of a RAG request (None: not a RAG request).
    """

    kv_reuse: str
    semantic: dict[str, Any] | None = None
    selector: str | None = None
    prefix_tokens_reused: int = 0
    chunk_tokens_reused: int = 0
    tokens_recomputed: int = 0
    ttft_ms: float | None = None
    sources: tuple[Source, ...] | None = None
    approx_tokens_reused: int = 0
    replica: str | None = None

    @classmethod
    def of_engine(
        cls,
        final: RequestOutput,
        kv_reuse: str,
        semantic: dict[str, Any] | None,
        sources: tuple[Source, ...] | None,
    ) -> CacheReport:
        """The report of an answer the engine produced, from its final output."""
        recomputed = final.tokens_recomputed
        if recomputed is None:
            recomputed = final.prompt_tokens - final.cached_tokens
        return cls(
            kv_reuse=kv_reuse,
            semantic=semantic,
            selector=final.selector,
            prefix_tokens_reused=final.cached_tokens,
            chunk_tokens_reused=final.chunk_tokens_reused,
            tokens_recomputed=recomputed,
            ttft_ms=final.ttft_ms,
            sources=sources,
            approx_tokens_reused=final.approx_tokens_reused,
            replica=final.replica,
        )

    def to_json(self) -> dict[str, Any]:
        """The `ragkv` object as the API shows it."""
        info: dict[str, Any] = {
            "semantic_cache": (self.semantic or {}).get("semantic_cache", "skipped"),
            "semantic": self.semantic,
            "kv_reuse": self.kv_reuse,
            "selector": self.selector,
            "prefix_tokens_reused": self.prefix_tokens_reused,
            "approx_tokens_reused": self.approx_tokens_reused,
            "chunk_tokens_reused": self.chunk_tokens_reused,
            "tokens_recomputed": self.tokens_recomputed,
            "ttft_ms": round(self.ttft_ms, 2) if self.ttft_ms is not None else None,
        }
        if self.sources is not None:
            info["sources"] = [source.to_json() for source in self.sources]
        if self.replica is not None:
            info["replica"] = self.replica
        return info


class Answer:
    """An answer as it is produced. Iterate it (once) for `Delta`s; when the iteration has
    ended, `usage`, `report` and `finish_reason` are set. `cache_status` (the
    `x-ragkv-cache` header: `semantic-hit`, `kv-hit` or `miss`) is known before the first
    delta. Errors of the engine surface from the iteration."""

    def __init__(
        self, cache_status: str, deltas: Callable[[Answer], AsyncGenerator[Delta, None]]
    ) -> None:
        self.cache_status = cache_status
        self.usage: Usage | None = None
        self.report: CacheReport | None = None
        self.finish_reason: str | None = None
        self.call_text: str | None = None  # what a constrained call answer wrote, whole
        self.collected = False  # read whole by `collect` (a non-stream response), not streamed
        self._deltas = deltas(self)

    def finish(self, usage: Usage, report: CacheReport, finish_reason: str | None) -> None:
        """Record the end of the answer (called by the pipeline before the last delta)."""
        self.usage, self.report, self.finish_reason = usage, report, finish_reason

    def __aiter__(self) -> AsyncGenerator[Delta, None]:
        return self._deltas

    async def aclose(self) -> None:
        """Stop producing (the client went away): the engine request is aborted."""
        await self._deltas.aclose()

    async def collect(self) -> Delta:
        """The whole answer as one delta: text, every logprob, finish reason, tool calls
        (for non-stream responses)."""
        self.collected = True
        text: list[str] = []
        logprobs: list[TokenLogprob] = []
        calls: list[ToolCall] = []
        pieces: list[CallPiece] = []
        async for delta in self._deltas:
            text.append(delta.text)
            logprobs.extend(delta.logprobs)
            calls.extend(delta.tool_calls)
            pieces.extend(delta.call_pieces)
        if self.call_text is not None and self.finish_reason != "tool_calls":
            # A streamed call cut short (max_tokens): a whole answer returns it as text.
            text.append(self.call_text)
        else:
            calls.extend(joined_calls(pieces))
        return Delta("".join(text), logprobs, self.finish_reason, tuple(calls))


def joined_calls(pieces: list[CallPiece]) -> list[ToolCall]:
    """The whole calls that streamed pieces make up, in order."""
    started: dict[int, ToolCall] = {}
    arguments: dict[int, list[str]] = {}
    for piece in pieces:
        if piece.call is not None:
            started[piece.index] = piece.call
        arguments.setdefault(piece.index, []).append(piece.arguments)
    return [
        ToolCall(call.id, call.name, "".join(arguments[index]))
        for index, call in sorted(started.items())
    ]
