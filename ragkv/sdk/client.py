"""`Client` and `AsyncClient`: the ragkv API over httpx, one connection pool each.

    with ragkv.Client("http://127.0.0.1:8000", api_key="sk-...") as client:
        answer = client.rag("Who painted the Mona Lisa?", collection="wikipedia")
        print(answer.answer, [s.title for s in answer.sources], answer.cache.semantic)

Full queues (503, honouring Retry-After) and requests that never reached the server are
retried up to `max_retries` times with backoff; 4xx answers never are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ragkv.sdk._http import (
    DONE,
    NOT_SENT,
    Call,
    StreamReader,
    backoff_s,
    checked,
    connection_error,
    should_retry,
    sse_event,
)
from ragkv.sdk.api import API, Messages, chat_body
from ragkv.sdk.errors import APIError
from ragkv.sdk.types import ChatDelta

DEFAULT_URL = "http://127.0.0.1:8000"


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client(API):
    """Synchronous client. `api_key` is a tenant key (or the admin key for `admin.*`)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(base_url, max_retries)
        self._http = httpx.Client(base_url=self.base_url, headers=_headers(api_key),
                                  timeout=timeout)  # fmt: skip

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                try:
                    request = self._http.build_request(
                        call.method, call.path, **call.request_args()
                    )
                    return checked(self._http.send(request, stream=stream))
                except NOT_SENT as exc:
                    raise connection_error(exc, self.base_url) from exc
            except APIError as error:
                if not should_retry(error, attempt, self.max_retries):
                    raise
                time.sleep(backoff_s(error, attempt))
                attempt += 1

    def _run(self, call: Call) -> Any:
        try:
            return call.parse(self._send(call))
        except httpx.HTTPError as exc:
            raise connection_error(exc, self.base_url) from exc

    def chat_stream(self, messages: Messages, **params: Any) -> Iterator[ChatDelta]:
        """Stream a chat answer: text deltas and tool-call pieces, then a final item with
        `usage`, `cache`, `sources` and the whole tool calls. Takes the keywords of `chat`."""
        body = chat_body(messages, model=params.pop("model", self.model), stream=True, **params)
        response = self._send(Call("POST", "/v1/chat/completions", json=body), stream=True)
        reader = StreamReader()
        try:
            for line in response.iter_lines():
                event = sse_event(line)
                if event is DONE:
                    break
                delta = reader.feed(event) if event is not None else None
                if delta is not None:
                    yield delta
        except httpx.HTTPError as exc:
            raise connection_error(exc, self.base_url) from exc
        finally:
            response.close()


class AsyncClient(API):
    """Asynchronous client: the methods of `Client`, each awaitable; `chat_stream` is an
    async iterator. Use `async with AsyncClient(...) as client`."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        super().__init__(base_url, max_retries)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=_headers(api_key),
                                       timeout=timeout)  # fmt: skip

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _send(self, call: Call, stream: bool = False) -> httpx.Response:
        attempt = 0
        while True:
            try:
                try:
                    request = self._http.build_request(
                        call.method, call.path, **call.request_args()
                    )
                    return checked(await self._http.send(request, stream=stream))
                except NOT_SENT as exc:
                    raise connection_error(exc, self.base_url) from exc
            except APIError as error:
                if not should_retry(error, attempt, self.max_retries):
                    raise
                await asyncio.sleep(backoff_s(error, attempt))
                attempt += 1

    async def _run(self, call: Call) -> Any:  # type: ignore[override]
        try:
            return call.parse(await self._send(call))
        except httpx.HTTPError as exc:
            raise connection_error(exc, self.base_url) from exc

    async def chat_stream(self, messages: Messages, **params: Any) -> AsyncIterator[ChatDelta]:
        """Stream a chat answer (see `Client.chat_stream`)."""
        body = chat_body(messages, model=params.pop("model", self.model), stream=True, **params)
        response = await self._send(Call("POST", "/v1/chat/completions", json=body), stream=True)
        reader = StreamReader()
        try:
            async for line in response.aiter_lines():
                event = sse_event(line)
                if event is DONE:
                    break
                delta = reader.feed(event) if event is not None else None
                if delta is not None:
                    yield delta
        except httpx.HTTPError as exc:
            raise connection_error(exc, self.base_url) from exc
        finally:
            await response.aclose()
