"""The `RagkvError` hierarchy: each class carries its HTTP status and OpenAI error type/code.

Raise these with a message a user can act on; the server turns them into the OpenAI error
envelope `{"error": {"message", "type", "param", "code"}}` with the class's status.
"""

from __future__ import annotations

from typing import Any


class RagkvError(Exception):
    """Base of every error ragkv raises on purpose."""

    status_code: int = 500
    error_type: str = "server_error"
    default_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = dict(headers or {})

    def to_envelope(self) -> dict[str, Any]:
        """The OpenAI error body for this error."""
        return error_envelope(self.message, self.error_type, self.param, self.code)


def error_envelope(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build `{"error": {...}}` as the OpenAI API answers errors."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class InvalidRequest(RagkvError):
    """The request is malformed or asks for something impossible (400)."""

    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class Unauthorized(RagkvError):
    """No API key, or an unknown one (401)."""

    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class Forbidden(RagkvError):
    """A valid key without the right to this resource, e.g. a tenant key on /admin (403)."""

    status_code = 403
    error_type = "permission_error"
    default_code = "forbidden"


class NotFound(RagkvError):
    """The named resource does not exist (404)."""

    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class Conflict(RagkvError):
    """The resource already exists or is in a conflicting state (409)."""

    status_code = 409
    error_type = "conflict_error"
    default_code = "conflict"


class PayloadTooLarge(RagkvError):
    """The request body or one of its parts is over the configured size (413)."""

    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class UnsupportedMediaType(RagkvError):
    """A body or uploaded file of a kind the endpoint does not take (415)."""

    status_code = 415
    error_type = "invalid_request_error"
    default_code = "unsupported_media_type"


class Unprocessable(RagkvError):
    """Well-formed JSON whose values fail validation (422)."""

    status_code = 422
    error_type = "invalid_request_error"
    default_code = "validation_error"


class RateLimited(RagkvError):
    """The caller is over its quota (429)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limited"


class Overloaded(RagkvError):
    """The server is at capacity; the client should retry after `retry_after_s` (503)."""

    status_code = 503
    error_type = "overloaded_error"
    default_code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = max(1, int(retry_after_s))
        self.headers.setdefault("Retry-After", str(self.retry_after_s))


class ModelError(RagkvError):
    """The model could not be loaded or failed while running (500)."""

    status_code = 500
    error_type = "server_error"
    default_code = "model_error"


ALL_ERRORS: tuple[type[RagkvError], ...] = (
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    RateLimited,
    Overloaded,
    ModelError,
)
