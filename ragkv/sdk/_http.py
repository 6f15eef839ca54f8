"""What the sync and async clients share: a request as data (`Call`), error mapping, the
retry policy and the SSE decoder. Only sending differs between them."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from ragkv.sdk.errors import APIConnectionError, APIError, OverloadedError, error_from_response
from ragkv.sdk.types import CacheInfo, ChatDelta, Usage, _sources

# Exceptions raised before the request reached the server: safe to retry for any call.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_BACKOFF_S = 8.0


def _json(response: httpx.Response) -> Any:
    return response.json()


@dataclass(frozen=True)
class Call:
    """One API request: method, path, body, and how to read the answer."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    parse: Callable[[httpx.Response], Any] = _json

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments of `httpx.Client.request` for this call."""
        args: dict[str, Any] = {"params": self.params}
        if self.files is not None:
            args["files"] = self.files
        elif self.json is not None:
            args["json"] = self.json
        return args


def retry_after_s(response: httpx.Response) -> float | None:
    """The server's `Retry-After` in seconds, if it sent one as a number."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def checked(response: httpx.Response) -> httpx.Response:
    """The response if it succeeded; otherwise its typed `APIError`."""
    if response.status_code < 400:
        return response
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    raise error_from_response(response.status_code, body, retry_after_s(response))


def connection_error(exc: httpx.HTTPError, base_url: str) -> APIConnectionError:
    """A transport failure as the SDK's error."""
    return APIConnectionError(f"could not reach ragkv at {base_url}: {exc}")


def should_retry(error: APIError, attempt: int, max_retries: int) -> bool:
    """Retry a full queue (503) or a request that was never sent; never a 4xx."""
    return attempt < max_retries and isinstance(error, OverloadedError | APIConnectionError)


def backoff_s(error: APIError, attempt: int) -> float:
    """Wait before retry `attempt` (0-based): the server's Retry-After, else exponential
    backoff with jitter, at most `MAX_BACKOFF_S`."""
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        return min(retry_after, MAX_BACKOFF_S)
    return min(MAX_BACKOFF_S, 0.25 * 2**attempt) * (0.5 + random.random() / 2)


DONE: dict[str, Any] = {}  # the `[DONE]` event


def sse_event(line: str) -> dict[str, Any] | None:
    """The JSON event of one SSE line (None for other lines, `DONE` at the end); an
    in-band error event is raised as its `APIError`."""
    if not line.startswith("data: "):
        return None
    data = line[len("data: ") :]
    if data == "[DONE]":
        return DONE
    event = json.loads(data)
    if "error" in event:
        raise error_from_response(500, event, None)
    return event


class StreamReader:
    """Turns a chat stream's chunks into SDK items, one `feed` per event: text deltas,
    tool-call pieces as they arrive, and a final item carrying `usage`, `cache`, `sources`
    and the whole tool calls assembled from their pieces (as `ChatResult.tool_calls`)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def feed(self, event: dict[str, Any]) -> ChatDelta | None:
        """The item of one chat-completion chunk (None for a chunk with nothing in it)."""
        choices = event.get("choices") or []
        if not choices:
            ragkv = event.get("ragkv")
            return ChatDelta(
                text="",
                usage=Usage.of(event.get("usage")),
                cache=CacheInfo.of(ragkv),
                sources=_sources(ragkv),
                final=True,
                tool_calls=[self._calls[index] for index in sorted(self._calls)],
            )
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        pieces = delta.get("tool_calls") or []
        for piece in pieces:
            self._add(piece)
        if not text and not pieces and choice.get("finish_reason") is None:
            return None
        return ChatDelta(text=text, finish_reason=choice.get("finish_reason"), tool_calls=pieces)

    def _add(self, piece: dict[str, Any]) -> None:
        """Fold one streamed `tool_calls` entry into its call: id, type and name come with
        the call's first piece, `arguments` arrive in parts that join in order."""
        call = self._calls.setdefault(
            piece.get("index", len(self._calls)),
            {"id": None, "type": "function", "function": {"name": None, "arguments": ""}},
        )
        function = piece.get("function") or {}
        if piece.get("id"):
            call["id"] = piece["id"]
        if function.get("name"):
            call["function"]["name"] = function["name"]
        call["function"]["arguments"] += function.get("arguments") or ""
