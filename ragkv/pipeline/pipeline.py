"""One request's way through ragkv: context (inline documents or retrieval) -> prompt
assembly at token level -> engine (prefix reuse, chunk blending) -> outputs.

The server calls this; it calls the engine and the retriever. The semantic cache sits in
front (`ragkv.pipeline.semantic`), and the server stores answers back into it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.blend.prefill import ChunkSpan
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request, RequestOutput
from ragkv.errors import InvalidRequest
from ragkv.pipeline.prompt import ContextChunk, RagPrompt, assemble_rag_prompt, rag_head
from ragkv.retrieval.chunker import Chunker
from ragkv.retrieval.service import Retriever


@dataclass(frozen=True)
class PromptSpec:
    """What to generate from: token ids plus how and for whom."""

    prompt_ids: list[int]
    params: SamplingParams
    tenant: str
    kv_reuse: str = "auto"
    pin_ttl_s: float | None = None
    session_id: str | None = None
    chunk_spans: tuple[ChunkSpan, ...] = ()
    chunk_context: tuple[int, ...] = ()
    recompute_ratio: float | None = None


@dataclass(frozen=True)
class Source:
    """A chunk the answer was given as context; `score` is None for inline documents."""

    document_id: str
    chunk_id: str
    title: str | None
    score: float | None

    def to_json(self) -> dict[str, Any]:
        """The source as the API shows it."""
        score = None if self.score is None else round(self.score, 4)
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "title": self.title,
            "score": score,
        }


@dataclass
class Context:
    """The context of a RAG request: chunks in prompt order and where they came from."""

    chunks: list[ContextChunk] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


class Pipeline:
    """Builds engine requests from chat messages or prompts, and streams their outputs."""

    def __init__(
        self,
        engine: AsyncEngine,
        default_max_tokens: int,
        retriever: Retriever | None = None,
        chunk_tokens: int = 256,
        context_variant: bool = False,
    ) -> None:
        self.engine = engine
        self.tokenizer = engine.engine.tokenizer
        self.default_max_tokens = default_max_tokens
        self.retriever = retriever
        self.chunker = Chunker(self.tokenizer, chunk_tokens)
        # What chunk KV is computed after (a cache variant): the default RAG head, or nothing.
        self.chunk_context = tuple(rag_head(self.tokenizer)) if context_variant else ()

    async def context(
        self,
        tenant: str,
        question: str,
        documents: list[tuple[str | None, str]] | None = None,
        collection: str | None = None,
        top_k: int = 4,
    ) -> Context:
        """Chunks of the inline `documents` (`(id, text)` pairs) followed by the `top_k`
        chunks of `collection` closest to `question`."""
        context = Context()
        for index, (doc_id, text) in enumerate(documents or []):
            name = doc_id or f"document-{index + 1}"
            for chunk in await run_in_threadpool(self.chunker.chunk, text):
                context.chunks.append(ContextChunk(chunk.token_ids, doc_id))
                context.sources.append(Source(name, chunk.chunk_id, doc_id, None))
        if collection is not None:
            if self.retriever is None:
                raise InvalidRequest("retrieval is not available on this server", param="rag")
            hits = await run_in_threadpool(
                self.retriever.search, tenant, collection, question, top_k
            )
            for hit in hits:
                title = hit.metadata.get("title") or hit.document_id
                context.chunks.append(ContextChunk(list(hit.token_ids), str(title)))
                context.sources.append(Source(hit.document_id, hit.chunk_id, title, hit.score))
        return context

    def rag_prompt(self, messages: list[dict[str, str]], context: Context) -> RagPrompt:
        """Token ids of `messages` with the context chunks placed before the question."""
        return assemble_rag_prompt(self.tokenizer, messages, context.chunks)

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of messages rendered with the model's chat template."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def text_prompt_ids(self, prompt: str | list[str] | list[int]) -> list[int]:
        """Token ids of a plain prompt (text, one-element text list, or token ids)."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if prompt and isinstance(prompt[0], str):
            return self.tokenizer.encode(str(prompt[0]))
        if not all(isinstance(t, int) for t in prompt):
            raise InvalidRequest("prompt must be text or a list of token ids", param="prompt")
        return [int(t) for t in prompt]

    def max_tokens(self, requested: int | None, num_prompt: int) -> int:
        """Requested max_tokens, else the default clipped to the context left."""
        if requested is not None:
            return requested
        room = self.engine.engine.config.context_length - num_prompt
        return max(1, min(self.default_max_tokens, room))

    async def generate(
        self, spec: PromptSpec, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream the engine's outputs for `spec`; `full` reuses no cached KV at all."""
        request = Request(
            request_id=uuid.uuid4().hex,
            prompt_ids=spec.prompt_ids,
            params=spec.params,
            tenant=spec.tenant,
            use_prefix_cache=spec.kv_reuse != "full",
            pin_ttl_s=spec.pin_ttl_s,
            session_id=spec.session_id,
            chunk_spans=spec.chunk_spans,
            chunk_context=spec.chunk_context,
            kv_reuse=spec.kv_reuse,
            recompute_ratio=spec.recompute_ratio,
        )
        async for output in self.engine.stream(request, is_disconnected):
            yield output
