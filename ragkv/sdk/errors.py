"""Errors of the SDK: the server's OpenAI error envelope raised as typed exceptions.

Every class is a `ragkv.RagkvError`, so `except ragkv.RagkvError` catches all of them. Each
carries `status` (None for a connection error), `code`, `param` and `message`.
"""

from __future__ import annotations

from typing import Any

from ragkv.errors import RagkvError


class APIError(RagkvError):
    """An error answer of the server (or no answer at all: `APIConnectionError`)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.status = status
        self.type = error_type
        self.body = body

    def __str__(self) -> str:
        where = f" (HTTP {self.status}, {self.code})" if self.status is not None else ""
        return f"{self.message}{where}"


class BadRequestError(APIError):
    """The request was malformed or impossible (400, 422)."""


class AuthenticationError(APIError):
    """No API key or an unknown one (401)."""


class PermissionDeniedError(APIError):
    """A valid key without the right to this resource (403)."""


class NotFoundError(APIError):
    """The named resource does not exist (404)."""


class ConflictError(APIError):
    """The resource exists already or is in a conflicting state (409)."""


class PayloadTooLargeError(APIError):
    """The body or an upload is over the server's limit (413)."""


class RateLimitError(APIError):
    """Too many requests (429)."""


class OverloadedError(APIError):
    """The server's queue is full or it is starting (503); `retry_after` in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.retry_after = retry_after


class InternalServerError(APIError):
    """The server failed (5xx other than 503)."""


class APIConnectionError(APIError):
    """The server could not be reached or did not answer in time."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: BadRequestError,
    429: RateLimitError,
    503: OverloadedError,
}


def error_from_response(status: int, body: Any, retry_after: float | None) -> APIError:
    """The typed error of an HTTP error answer (`body`: the parsed JSON, or text)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(body)[:500] or f"HTTP {status}"}
    cls = _BY_STATUS.get(status, InternalServerError if status >= 500 else BadRequestError)
    fields: dict[str, Any] = {
        "status": status,
        "code": error.get("code"),
        "param": error.get("param"),
        "error_type": error.get("type"),
        "body": body,
    }
    message = str(error.get("message") or f"HTTP {status}")
    if cls is OverloadedError:
        return OverloadedError(message, retry_after=retry_after, **fields)
    return cls(message, **fields)
