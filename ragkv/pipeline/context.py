"""The context of a RAG request: the chunks of its inline documents and of retrieval, in
prompt order, with where each came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool

from ragkv.errors import InvalidRequest
from ragkv.pipeline.prompt import ContextChunk
from ragkv.retrieval.chunker import Chunker
from ragkv.retrieval.service import Retriever


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
    """Chunks in prompt order and the source of each."""

    chunks: list[ContextChunk] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)


class ContextBuilder:
    """Chunks inline documents with the serving model's tokenizer and retrieves from
    collections (`retriever` None: retrieval is off and `rag` requests are refused)."""

    def __init__(self, chunker: Chunker, retriever: Retriever | None) -> None:
        self.chunker = chunker
        self.retriever = retriever

    async def build(
        self,
        tenant: str,
        question: str,
        documents: list[tuple[str | None, str]],
        collection: str | None = None,
        top_k: int = 4,
    ) -> Context:
        """Chunks of `documents` (`(id, text)` pairs) followed by the `top_k` chunks of
        `collection` closest to `question`."""
        context = Context()
        for index, (doc_id, text) in enumerate(documents):
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
