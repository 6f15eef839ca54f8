"""Run a `PromptSpec` through the pipeline and answer as JSON or as an SSE stream."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from ragkv.cache.streams import replay_chunks
from ragkv.engine.sampling import TokenLogprob
from ragkv.engine.sequence import RequestOutput
from ragkv.errors import ModelError, RagkvError
from ragkv.pipeline.pipeline import Pipeline, PromptSpec
from ragkv.pipeline.semantic import SemanticProbe, SemanticStep
from ragkv.server import openai_format as fmt
from ragkv.server.metrics import KVMetrics

log = logging.getLogger("ragkv.server")

# (text delta, logprobs delta, finish_reason) -> one chunk's `choices[0]`
ChoiceDelta = Callable[[str, list[TokenLogprob], str | None], dict[str, Any]]
# (full text, all logprobs, finish_reason) -> the non-stream `choices[0]`
ChoiceFull = Callable[[str, list[TokenLogprob], str | None], dict[str, Any]]


class Completion:
    """Everything that differs between chat and text completions."""

    def __init__(
        self,
        object_name: str,
        chunk_object_name: str,
        id_prefix: str,
        model_id: str,
        choice_full: ChoiceFull,
        choice_delta: ChoiceDelta,
        first_delta: dict[str, Any] | None = None,
    ) -> None:
        self.object_name = object_name
        self.chunk_object_name = chunk_object_name
        self.completion_id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model_id = model_id
        self.choice_full = choice_full
        self.choice_delta = choice_delta
        self.first_delta = first_delta

    def envelope(self, object_name: str, **fields: Any) -> dict[str, Any]:
        """Common top-level fields of a response or chunk."""
        return {
            "id": self.completion_id,
            "object": object_name,
            "created": self.created,
            "model": self.model_id,
            **fields,
        }


class StoreBack:
    """Where a finished answer goes afterwards: the semantic cache, for a probed miss."""

    def __init__(self, step: SemanticStep | None, probe: SemanticProbe | None) -> None:
        self.step = step
        self.probe = probe
        self.extra: dict[str, Any] = {}
        self.metrics: KVMetrics | None = None

    def ragkv(self, final: RequestOutput, kv_reuse: str) -> dict[str, Any]:
        """The response's whole `ragkv` object (counted in the KV metrics once)."""
        info = {**fmt.ragkv_info(final, kv_reuse, self.info()), **self.extra}
        if self.metrics is not None:
            self.metrics.observe(final, kv_reuse, info["tokens_recomputed"])
        return info

    def info(self) -> dict[str, Any] | None:
        """The semantic part of the `ragkv` object."""
        return self.probe.info() if self.probe is not None else None

    async def done(self, text: str, finish_reason: str | None) -> None:
        """Hand the whole answer to the semantic cache."""
        if self.step is not None and self.probe is not None:
            await self.step.store(self.probe, text, finish_reason)


async def respond(
    pipeline: Pipeline,
    spec: PromptSpec,
    completion: Completion,
    stream: bool,
    http: Request,
    store_back: StoreBack | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse | StreamingResponse:
    """Answer non-stream (one JSON body) or stream (SSE ending with usage, then [DONE]).
    `extra` is merged into the `ragkv` object (e.g. the RAG sources)."""
    store_back = store_back or StoreBack(None, None)
    store_back.extra = extra or {}
    store_back.metrics = getattr(http.app.state, "kv_metrics", None)
    outputs = pipeline.generate(spec, http.is_disconnected)
    if not stream:
        return await _collect(outputs, completion, spec, store_back)
    first = await _first_output(outputs)  # errors before the first token are plain HTTP errors
    headers = {"x-ragkv-cache": fmt.cache_header(first), "cache-control": "no-cache"}
    return StreamingResponse(
        _stream(first, outputs, completion, spec, store_back),
        media_type="text/event-stream",
        headers=headers,
    )


def respond_cached(
    hit_text: str,
    completion: Completion,
    stream: bool,
    spec: PromptSpec,
    store_back: StoreBack,
    completion_tokens: int,
) -> JSONResponse | StreamingResponse:
    """Serve a semantic-cache hit without the engine, as JSON or as a replayed stream."""
    final = fmt.cached_output(len(spec.prompt_ids), completion_tokens)
    info = fmt.ragkv_info(final, spec.kv_reuse, store_back.info())
    info["tokens_recomputed"] = 0
    headers = {"x-ragkv-cache": "semantic-hit"}
    if not stream:
        body = completion.envelope(
            completion.object_name,
            choices=[completion.choice_full(hit_text, [], "stop")],
            usage=fmt.usage(final),
            ragkv=info,
        )
        return JSONResponse(body, headers=headers)

    async def replay() -> AsyncIterator[str]:
        name = completion.chunk_object_name
        if completion.first_delta is not None:
            yield fmt.sse(completion.envelope(name, choices=[completion.first_delta]))
        pieces = list(replay_chunks(hit_text)) or [""]
        for index, piece in enumerate(pieces):
            reason = "stop" if index == len(pieces) - 1 else None
            choice = completion.choice_delta(piece, [], reason)
            yield fmt.sse(completion.envelope(name, choices=[choice]))
        usage = fmt.usage(final)
        yield fmt.sse(completion.envelope(name, choices=[], usage=usage, ragkv=info))
        yield fmt.sse("[DONE]")

    headers["cache-control"] = "no-cache"
    return StreamingResponse(replay(), media_type="text/event-stream", headers=headers)


async def _first_output(outputs: AsyncIterator[RequestOutput]) -> RequestOutput:
    async for output in outputs:
        return output
    raise ModelError("the engine finished without output")


async def _collect(
    outputs: AsyncIterator[RequestOutput],
    completion: Completion,
    spec: PromptSpec,
    store_back: StoreBack,
) -> JSONResponse:
    text: list[str] = []
    logprobs: list[TokenLogprob] = []
    final: RequestOutput | None = None
    async for output in outputs:
        text.append(output.text)
        logprobs.extend(output.logprobs)
        final = output
    if final is None:
        raise ModelError("the engine finished without output")
    await store_back.done("".join(text), final.finish_reason)
    body = completion.envelope(
        completion.object_name,
        choices=[completion.choice_full("".join(text), logprobs, final.finish_reason)],
        usage=fmt.usage(final),
        ragkv=store_back.ragkv(final, spec.kv_reuse),
    )
    return JSONResponse(body, headers={"x-ragkv-cache": fmt.cache_header(final)})


async def _stream(
    first: RequestOutput,
    outputs: AsyncIterator[RequestOutput],
    completion: Completion,
    spec: PromptSpec,
    store_back: StoreBack,
) -> AsyncIterator[str]:
    name = completion.chunk_object_name
    final = first
    recorded = [first.text]
    try:
        if completion.first_delta is not None:
            yield fmt.sse(completion.envelope(name, choices=[completion.first_delta]))
        yield _chunk(completion, first)
        if not first.finished:
            async for output in outputs:
                final = output
                recorded.append(output.text)
                yield _chunk(completion, output)
        await store_back.done("".join(recorded), final.finish_reason)
        yield fmt.sse(
            completion.envelope(
                name,
                choices=[],
                usage=fmt.usage(final),
                ragkv=store_back.ragkv(final, spec.kv_reuse),
            )
        )
        yield fmt.sse("[DONE]")
    except RagkvError as exc:
        yield fmt.sse_error(exc)
    except Exception as exc:  # the stream has started: report in-band, never drop silently
        log.exception("stream failed")
        yield fmt.sse_error(ModelError(f"generation failed: {exc}"))
    finally:
        await outputs.aclose()


def _chunk(completion: Completion, output: RequestOutput) -> str:
    choice = completion.choice_delta(output.text, output.logprobs, output.finish_reason)
    return fmt.sse(completion.envelope(completion.chunk_object_name, choices=[choice]))
