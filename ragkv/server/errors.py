"""Exception handlers that answer every error in the OpenAI envelope with the right status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragkv.errors import RagkvError, error_envelope

log = logging.getLogger("ragkv.server")

_HTTP_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def error_response(error: RagkvError) -> JSONResponse:
    """JSONResponse for a domain error, with its status and headers (e.g. Retry-After)."""
    return JSONResponse(error.to_envelope(), status_code=error.status_code, headers=error.headers)


async def _ragkv_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RagkvError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        body = error_envelope(
            f"request body is not valid JSON: {first.get('msg', '')}",
            "invalid_request_error",
            None,
            "invalid_json",
        )
        return JSONResponse(body, status_code=400)
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in errors[:5]
    )
    body = error_envelope(
        detail or "invalid request", "invalid_request_error", param, "invalid_value"
    )
    return JSONResponse(body, status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error_type, code = _HTTP_TYPES.get(exc.status_code, ("invalid_request_error", "http_error"))
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route for {request.method} {request.url.path}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    body = error_envelope(message, error_type, None, code)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    body = error_envelope("internal server error", "server_error", None, "internal_error")
    return JSONResponse(body, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the OpenAI error envelope."""
    app.add_exception_handler(RagkvError, _ragkv_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
