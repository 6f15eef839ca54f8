"""Format a pipeline `Answer` as one JSON body or as an SSE stream (OpenAI shapes)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse

from ragkv.errors import ModelError, RagkvError
from ragkv.pipeline.answer import Answer, Delta
from ragkv.server import openai_format as fmt

log = logging.getLogger("ragkv.server")

# an answer's delta (or the whole answer as one) -> `choices[0]` of the answer or of a chunk
ChoiceShape = Callable[[Delta], dict[str, Any]]


class Completion:
    """Everything that differs between chat and text completions."""

    def __init__(
        self,
        object_name: str,
        chunk_object_name: str,
        id_prefix: str,
        model_id: str,
        choice_full: ChoiceShape,
        choice_delta: ChoiceShape,
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
        # server.expose_cache_status: False hides what the caches did (a timing and content
        # side channel between users); admin stats still count it.
        self.expose_cache = True

    def envelope(self, object_name: str, **fields: Any) -> dict[str, Any]:
        """Common top-level fields of a response or chunk."""
        return {
            "id": self.completion_id,
            "object": object_name,
            "created": self.created,
            "model": self.model_id,
            **fields,
        }

    def chunk(self, **fields: Any) -> str:
        """One SSE event of a streamed completion."""
        return fmt.sse(self.envelope(self.chunk_object_name, **fields))


async def respond(
    answer: Answer, completion: Completion, stream: bool
) -> JSONResponse | StreamingResponse:
    """Answer non-stream (one JSON body) or stream (SSE ending with usage, then [DONE])."""
    headers = cache_headers(answer, completion.expose_cache)
    if not stream:
        whole = await answer.collect()
        body = completion.envelope(
            completion.object_name,
            choices=[completion.choice_full(whole)],
            **final_fields(answer, completion.expose_cache),
        )
        return JSONResponse(body, headers=headers)
    headers["cache-control"] = "no-cache"
    return StreamingResponse(
        _events(answer, completion), media_type="text/event-stream", headers=headers
    )


def final_fields(answer: Answer, expose_cache: bool = True) -> dict[str, Any]:
    """`usage` and `ragkv` of a finished answer; without `expose_cache`, no cached-token
    count and no cache fields (a RAG answer keeps its `sources`)."""
    if answer.usage is None or answer.report is None:
        raise ModelError("the engine finished without a final output")
    usage, report = answer.usage.to_json(), answer.report.to_json()
    if expose_cache:
        return {"usage": usage, "ragkv": report}
    usage.pop("prompt_tokens_details", None)
    fields: dict[str, Any] = {"usage": usage}
    if "sources" in report:
        fields["ragkv"] = {"sources": report["sources"]}
    return fields


def cache_headers(answer: Answer, expose_cache: bool) -> dict[str, str]:
    """The `x-ragkv-cache` header, unless the cache status is hidden."""
    return {"x-ragkv-cache": answer.cache_status} if expose_cache else {}


async def _events(answer: Answer, completion: Completion) -> AsyncIterator[str]:
    try:
        if completion.first_delta is not None:
            yield completion.chunk(choices=[completion.first_delta])
        async for delta in answer:
            choice = completion.choice_delta(delta)
            yield completion.chunk(choices=[choice])
        if answer.usage is None:
            return  # the client went away before the end
        yield completion.chunk(choices=[], **final_fields(answer, completion.expose_cache))
        yield fmt.sse("[DONE]")
    except RagkvError as exc:
        yield fmt.sse_error(exc)
    except Exception as exc:  # the stream has started: report in-band, never drop silently
        log.exception("stream failed")
        yield fmt.sse_error(ModelError(f"generation failed: {exc}"))
    finally:
        await answer.aclose()
