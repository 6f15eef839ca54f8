"""Typed results of the SDK. Each keeps the server's JSON in `raw` for fields not modelled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Source:
    """A chunk an answer was given as context (`score` None for inline documents)."""

    document_id: str
    chunk_id: str
    title: str | None
    score: float | None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Source:
        """From the API's source object."""
        return cls(raw["document_id"], raw["chunk_id"], raw.get("title"), raw.get("score"))


@dataclass(frozen=True)
class Usage:
    """Tokens of one answer; `cached_tokens` came from cached KV."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> Usage | None:
        """From OpenAI's `usage` object (None stays None)."""
        if not raw:
            return None
        details = raw.get("prompt_tokens_details") or {}
        return cls(raw["prompt_tokens"], raw["completion_tokens"], details.get("cached_tokens", 0))


@dataclass(frozen=True)
class CacheInfo:
    """What each cache level contributed to an answer (the response's `ragkv` object)."""

    semantic: str
    prefix_tokens_reused: int = 0
    chunk_tokens_reused: int = 0
    tokens_recomputed: int = 0
    approx_tokens_reused: int = 0  # of prefix_tokens_reused, from blended (approximate) KV
    selector: str | None = None
    kv_reuse: str | None = None
    ttft_ms: float | None = None
    similarity: float | None = None
    entry_id: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def semantic_hit(self) -> bool:
        """Served from the semantic cache."""
        return self.semantic == "hit"

    @classmethod
    def of(cls, raw: dict[str, Any] | None) -> CacheInfo | None:
        """From the `ragkv` object (None stays None)."""
        if not raw:
            return None
        semantic = raw.get("semantic") or {}
        return cls(
            semantic=raw.get("semantic_cache", "skipped"),
            prefix_tokens_reused=raw.get("prefix_tokens_reused", 0),
            chunk_tokens_reused=raw.get("chunk_tokens_reused", 0),
            tokens_recomputed=raw.get("tokens_recomputed", 0),
            approx_tokens_reused=raw.get("approx_tokens_reused", 0),
            selector=raw.get("selector"),
            kv_reuse=raw.get("kv_reuse"),
            ttft_ms=raw.get("ttft_ms"),
            similarity=semantic.get("similarity"),
            entry_id=semantic.get("entry_id"),
            raw=raw,
        )


def _sources(ragkv: dict[str, Any] | None) -> list[Source]:
    return [Source.of(s) for s in (ragkv or {}).get("sources") or []]


@dataclass(frozen=True)
class ChatResult:
    """A whole chat answer. `cache_status` is the `x-ragkv-cache` header; `tool_calls` the
    OpenAI tool calls of an answer that calls tools (`finish_reason` "tool_calls")."""

    text: str
    finish_reason: str | None
    usage: Usage | None
    cache: CacheInfo | None
    sources: list[Source]
    cache_status: str | None
    raw: dict[str, Any] = field(repr=False)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, raw: dict[str, Any], cache_status: str | None) -> ChatResult:
        """From a `chat.completion` body."""
        choice = raw["choices"][0]
        return cls(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage.of(raw.get("usage")),
            cache=CacheInfo.of(raw.get("ragkv")),
            sources=_sources(raw.get("ragkv")),
            cache_status=cache_status,
            raw=raw,
            tool_calls=choice["message"].get("tool_calls") or [],
        )


@dataclass(frozen=True)
class ChatDelta:
    """One item of a streamed answer: a text delta, or pieces of tool calls (`tool_calls`,
    OpenAI's streamed entries with their `index`); the last item (`final`) carries `usage`,
    `cache` and `sources` instead, and in `tool_calls` the whole calls the answer made
    (id, name, complete JSON `arguments`), as `ChatResult.tool_calls`."""

    text: str
    finish_reason: str | None = None
    usage: Usage | None = None
    cache: CacheInfo | None = None
    sources: list[Source] = field(default_factory=list)
    final: bool = False
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class RagAnswer:
    """An answer from a collection, with its sources."""

    answer: str
    finish_reason: str | None
    sources: list[Source]
    usage: Usage | None
    cache: CacheInfo | None
    cache_status: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, raw: dict[str, Any], cache_status: str | None) -> RagAnswer:
        """From a `rag.answer` body."""
        return cls(
            answer=raw["answer"],
            finish_reason=raw.get("finish_reason"),
            sources=[Source.of(s) for s in raw.get("sources") or []],
            usage=Usage.of(raw.get("usage")),
            cache=CacheInfo.of(raw.get("ragkv")),
            cache_status=cache_status,
            raw=raw,
        )


@dataclass(frozen=True)
class Collection:
    """A collection and its size."""

    name: str
    num_documents: int
    num_chunks: int
    embedding_model: str
    dimensions: int
    created_at: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Collection:
        """From the API's collection object."""
        return cls(
            raw["name"],
            raw["num_documents"],
            raw["num_chunks"],
            raw["embedding_model"],
            raw["dimensions"],
            raw["created_at"],
            raw,
        )


@dataclass(frozen=True)
class IngestResult:
    """What an ingest stored."""

    collection: str
    document_ids: list[str]
    num_chunks: int
    prewarm: str
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, raw: dict[str, Any]) -> IngestResult:
        """From the API's ingest answer."""
        return cls(
            raw["collection"],
            raw["document_ids"],
            raw["num_chunks"],
            raw.get("prewarm", "off"),
            raw,
        )


@dataclass(frozen=True)
class SearchHit:
    """A chunk found by search; `score` is the cosine similarity."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]

    @classmethod
    def of(cls, raw: dict[str, Any]) -> SearchHit:
        """From the API's search result."""
        return cls(
            raw["document_id"], raw["chunk_id"], raw["text"], raw["score"], raw["metadata"] or {}
        )


@dataclass(frozen=True)
class CacheLookup:
    """Would this query hit the semantic cache (a dry run), and on what."""

    hit: bool
    entry_id: int | None
    similarity: float | None
    category: str
    threshold: float
    reason: str
    cached_query: str | None
    response: str | None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> CacheLookup:
        """From the API's lookup answer."""
        fields = cls.__dataclass_fields__
        return cls(**{name: raw.get(name) for name in fields})
