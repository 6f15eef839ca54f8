"""The ragkv Python SDK: `Client` / `AsyncClient` over the HTTP API (httpx only; importing it
loads no torch and no engine)."""

from ragkv.sdk.client import AsyncClient, Client
from ragkv.sdk.errors import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
)
from ragkv.sdk.types import (
    CacheInfo,
    CacheLookup,
    ChatDelta,
    ChatResult,
    Collection,
    IngestResult,
    RagAnswer,
    SearchHit,
    Source,
    Usage,
)

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "CacheInfo",
    "CacheLookup",
    "ChatDelta",
    "ChatResult",
    "Client",
    "Collection",
    "ConflictError",
    "IngestResult",
    "InternalServerError",
    "NotFoundError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RagAnswer",
    "RateLimitError",
    "SearchHit",
    "Source",
    "Usage",
]
