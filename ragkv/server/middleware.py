"""Pure ASGI middleware: request ids with a JSON access log, and the request body limits."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragkv.errors import InvalidRequest, PayloadTooLarge, RagkvError
from ragkv.json_limits import MAX_JSON_DEPTH, nests_deeper_than

access_log = logging.getLogger("ragkv.access")


class RequestContextMiddleware:
    """Give each request an id (`x-request-id`, echoed or made) and log one JSON line for it;
    with `instance` (a gateway replica of a cluster), name it in `x-ragkv-instance`."""

    def __init__(
        self, app: ASGIApp, *, log_requests: bool = True, instance: str | None = None
    ) -> None:
        self.app = app
        self.log_requests = log_requests
        self.extra = [(b"x-ragkv-instance", instance.encode("latin-1"))] if instance else []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming[:128] if incoming else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                    *self.extra,
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.log_requests:
                record: dict[str, Any] = {
                    "request_id": request_id,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status["code"],
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": (scope.get("client") or ("", 0))[0],
                }
                access_log.info(json.dumps(record))


class BodySizeLimitMiddleware:
    """Refuse request bodies over `max_body_bytes` with 413, by header or by counting bytes,
    and JSON bodies no route could parse safely with 400 (see `json_refusal`).

    The body is read up front (it is bounded by the limit), so the app never sees a
    truncated body and a chunked upload over the limit is refused before any handler runs.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._reject(send, self._too_large())
            return
        chunks: list[bytes] = []
        received = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body
            chunk = message.get("body", b"")
            received += len(chunk)
            if received > self.max_body_bytes:
                await self._reject(send, self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        refusal = json_refusal(body)
        if refusal is not None:
            await self._reject(send, refusal)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"request body is over the limit of {self.max_body_bytes} bytes "
            "(settings server.max_body_bytes)"
        )

    async def _reject(self, send: Send, error: RagkvError) -> None:
        body = json.dumps(error.to_envelope()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def json_refusal(body: bytes) -> InvalidRequest | None:
    """Why a JSON body is refused before a route parses it (nested deeper than
    MAX_JSON_DEPTH, or a string with a lone surrogate), or None."""
    if body.lstrip()[:1] in (b"[", b"{") and nests_deeper_than(body, MAX_JSON_DEPTH):
        return InvalidRequest(
            f"the JSON body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep; "
            "flatten it",
            code="json_too_deep",
        )
    where = lone_surrogate(body) if b"\\ud" in body.lower() else None
    if where is None:
        return None
    message = (
        f"{where or 'the body'} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape "
        "without its pair), which is not text; send valid Unicode"
    )
    return InvalidRequest(message, param=where or None)


def lone_surrogate(body: bytes) -> str | None:
    """Where a JSON body holds a string with a lone surrogate (`messages.0.content`; '' for
    the body itself), or None. Escaped pairs (an emoji) decode to one character and pass;
    a body that is not JSON is left to the route's own validation."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or too deep): the route refuses it
        return None
    stack: list[tuple[object, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if any("\ud800" <= char <= "\udfff" for char in item):
                return path
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items())
            stack.extend((k, path) for k in item)
        elif isinstance(item, list):
            stack.extend((v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(item))
    return None
