"""LangChain: `RagkvRetriever` returns a collection's closest chunks as LangChain
`Document`s (through `POST /v1/collections/{name}/search`). For generation use
`langchain_openai.ChatOpenAI(base_url=".../v1", ...)` against the same server; ragkv's
extensions go in `extra_body` (see examples/langchain_rag.py).

Needs `langchain-core` (`pip install ragkv[langchain]`).
"""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from ragkv.sdk import AsyncClient, Client
from ragkv.sdk.types import SearchHit


def _document(hit: SearchHit, collection: str) -> Document:
    metadata: dict[str, Any] = {
        **hit.metadata,
        "document_id": hit.document_id,
        "chunk_id": hit.chunk_id,
        "score": hit.score,
        "collection": collection,
    }
    return Document(page_content=hit.text, metadata=metadata, id=hit.chunk_id)


class RagkvRetriever(BaseRetriever):
    """The `top_k` chunks of `collection` closest to the query, best first; `metadata`
    carries the document's own metadata plus `document_id`, `chunk_id`, `score`."""

    collection: str
    top_k: int = 4
    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    timeout: float = 60.0

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        with Client(self.base_url, api_key=self.api_key, timeout=self.timeout) as client:
            hits = client.search(self.collection, query, top_k=self.top_k)
        return [_document(hit, self.collection) for hit in hits]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun
    ) -> list[Document]:
        async with AsyncClient(self.base_url, api_key=self.api_key, timeout=self.timeout) as c:
            hits = await c.search(self.collection, query, top_k=self.top_k)
        return [_document(hit, self.collection) for hit in hits]
