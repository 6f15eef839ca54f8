"""What the pipeline takes: a chat or completion request, parsed and checked at the API edge.

Every field is typed (the `kv_reuse` string of the API is a `KVReuse` here); nothing below
the routes reads the HTTP body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import KVReuse
from ragkv.pipeline.tools import ToolUse


@dataclass(frozen=True)
class CacheOptions:
    """The `ragkv` extension of a request: how the cache levels may serve it.

    `semantic_cache` None follows the default (deterministic requests only); `category` None
    lets the classifier pick; `recompute_ratio` None takes the configured budget.
    """

    semantic_cache: bool | None = None
    category: str | None = None
    kv_reuse: KVReuse = KVReuse.AUTO
    recompute_ratio: float | None = None
    session_id: str | None = None
    pin_ttl_s: float | None = None
    # Under `cache.scope = user`: the user whose own caches serve the request (None: the
    # tenant's caches, shared by its users).
    user: str | None = None

    def owner(self, tenant: str) -> str:
        """Who the three cache levels are keyed by: the tenant, or one user of it."""
        return tenant if self.user is None else f"{tenant}/user:{self.user}"


@dataclass(frozen=True)
class InlineDocument:
    """A document sent with the request (`id` None: named by its place, `document-N`)."""

    text: str
    id: str | None = None


@dataclass(frozen=True)
class RagQuery:
    """Retrieve the `top_k` chunks of `collection` closest to the question."""

    collection: str
    top_k: int = 4


@dataclass(frozen=True)
class ChatRequest:
    """One chat request. `params.max_tokens` is used when `max_tokens_set`; otherwise the
    pipeline fills the configured default, clipped to the context left after the prompt."""

    tenant: str
    messages: list[dict[str, Any]]
    params: SamplingParams
    max_tokens_set: bool = False
    documents: tuple[InlineDocument, ...] = ()
    rag: RagQuery | None = None
    cache: CacheOptions = field(default_factory=CacheOptions)
    tools: ToolUse = field(default_factory=ToolUse)

    @property
    def has_context(self) -> bool:
        """Inline documents or retrieval: the prompt is assembled with chunk boundaries."""
        return bool(self.documents) or self.rag is not None

    @property
    def question(self) -> str:
        """The last user message's text ('' when the last message is not the user's)."""
        last = self.messages[-1]
        return str(last.get("content") or "") if last.get("role") == "user" else ""


@dataclass(frozen=True)
class CompletionRequest:
    """A plain-prompt completion: token ids, no chat template, no semantic cache."""

    tenant: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens_set: bool = False
    cache: CacheOptions = field(default_factory=CacheOptions)
