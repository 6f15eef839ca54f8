"""The retriever: collections of documents, chunked, embedded, indexed in FAISS and stored in SQL.

Store and index stay in step: a write changes the index inside the store's transaction and,
when anything fails, the transaction rolls back and the index changes are undone, so there is
never a chunk without its vector nor a vector without its chunk.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ragkv.errors import Conflict, NotFound, Unprocessable
from ragkv.retrieval.chunker import Chunk, Chunker
from ragkv.retrieval.documents import (  # noqa: F401 (DocumentInput, document_id_of: API)
    DocumentInput,
    RemovalFeed,
    document_id_of,
    validate_documents,
)
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.index import IndexFileError, VectorIndex
from ragkv.retrieval.store import (
    CollectionInfo,
    DocumentInfo,
    DocumentStore,
    RemovedChunks,
    sqlite_url,
)
from ragkv.retrieval.timings import SearchTimings
from ragkv.retrieval.tokenizer import EncoderLike
from ragkv.settings import RetrievalSettings

log = logging.getLogger("ragkv.retrieval")

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class IngestStats(NamedTuple):
    """What an ingest did and where its time went (seconds)."""

    document_ids: list[str]
    chunks: int
    tokenize_s: float
    embed_s: float
    index_s: float
    store_s: float


class SearchHit(NamedTuple):
    """One search result; `score` is the cosine similarity of query and chunk."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]
    token_ids: tuple[int, ...] = ()  # the chunk's ids under the serving model's tokenizer


ProgressCallback = Callable[[int], None]


class Retriever:
    """Per-tenant collections over one document store and one FAISS index per collection.

    Call `open()` before use (creates tables, loads or rebuilds indexes) and `close()` after
    (saves indexes). Every method is thread-safe; they block (embedding, FAISS, SQL), so async
    callers run them in a thread.
    """

    def __init__(
        self,
        settings: RetrievalSettings,
        data_dir: Path,
        embedder: Embedder,
        tokenizer: EncoderLike,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(data_dir)
        self.embedder = embedder
        self.timings = SearchTimings()
        self.chunker = Chunker(tokenizer, settings.chunk_tokens)
        self.store = DocumentStore(settings.database_url or sqlite_url(self.data_dir))
        self._indexes: dict[int, VectorIndex] = {}
        self._lock = threading.RLock()  # guards _indexes and serialises writes
        self.removals = RemovalFeed()  # told after a write removed chunks

    # lifecycle

    def open(self) -> None:
        """Create missing tables; load each collection's index, rebuilding bad ones."""
        self.store.create_schema()
        for collection in self.store.list_collections():
            self._indexes[collection.id] = self._load_index(collection)

    def save(self) -> None:
        """Write every index to its file under the data directory."""
        with self._lock:
            for collection_id, index in self._indexes.items():
                index.save(self._index_path(collection_id))

    def close(self) -> None:
        """Save the indexes and close the store."""
        self.save()
        self.store.close()

    # collections

    def create_collection(self, tenant: str, name: str) -> CollectionInfo:
        """A new empty collection; `Conflict` when the tenant has one of that name."""
        if not COLLECTION_NAME.fullmatch(name):  # match() lets "name\n" through
            raise Unprocessable(
                f"collection name '{name[:80]}' is not valid: use 1-64 letters, digits, '_', "
                "'-' or '.', starting with a letter or digit",
                param="name",
            )
        dim = self.embedder.dim
        with self._lock:
            collection = self.store.create_collection(tenant, name, self.embedder.model_name, dim)
            self._indexes[collection.id] = self._new_index(dim)
        return collection

    def list_collections(self, tenant: str) -> list[CollectionInfo]:
        """A tenant's collections, by name."""
        return self.store.list_collections(tenant)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo:
        """One collection of a tenant; `NotFound` otherwise."""
        return self.store.get_collection(tenant, name)

    def delete_collection(self, tenant: str, name: str) -> None:
        """Remove a collection, its documents, chunks and index file."""
        with self._lock:
            collection = self.store.get_collection(tenant, name)
            self.store.delete_collection(collection.id)
            self._indexes.pop(collection.id, None)
            VectorIndex.remove_files(self._index_path(collection.id))
        self.removals.removed(tenant, name, None)

    # documents

    def add_documents(
        self,
        tenant: str,
        name: str,
        documents: Sequence[DocumentInput],
        progress: ProgressCallback | None = None,
    ) -> IngestStats:
        """Chunk, embed, store and index `documents`; a document whose id exists is replaced.

        All or nothing: on any error (including one raised by `progress`, which is called
        with each document's chunk count once it is written) nothing of this call remains.
        """
        documents = validate_documents(documents, self.settings)
        collection = self._usable_collection(tenant, name)
        started = time.perf_counter()
        chunked = [self.chunker.chunk(doc.text) for doc in documents]
        tokenized = time.perf_counter()
        texts = [chunk.text for chunks in chunked for chunk in chunks]
        vectors = self.embedder.embed(texts)
        embedded = time.perf_counter()
        offsets = np.cumsum([0] + [len(chunks) for chunks in chunked])
        with self._lock:
            index = self._index(collection.id)
            index_s, store_s, gone = self._write(
                collection.id, index, documents, chunked, vectors, offsets, progress
            )
        self.removals.removed(tenant, name, gone)
        return IngestStats(
            [str(doc.id) for doc in documents],
            len(texts),
            tokenized - started,
            embedded - tokenized,
            index_s,
            store_s,
        )

    def _write(
        self,
        collection_id: int,
        index: VectorIndex,
        documents: list[DocumentInput],
        chunked: list[list[Chunk]],
        vectors: np.ndarray,
        offsets: np.ndarray,
        progress: ProgressCallback | None,
    ) -> tuple[float, float, list[str]]:
        """Write the documents in one transaction; returns the index and store seconds and
        the chunk ids that replaced documents had and their new versions do not."""
        removed: list[RemovedChunks] = []
        added: list[np.ndarray] = []
        gone: list[str] = []
        index_s = store_s = 0.0
        try:
            with self.store.transaction() as session:
                for position, (doc, chunks) in enumerate(zip(documents, chunked, strict=True)):
                    clock = time.perf_counter()
                    doc_vectors = vectors[offsets[position] : offsets[position + 1]]
                    old = self.store.remove_document(session, collection_id, str(doc.id))
                    new_ids = self.store.insert_document(
                        session, collection_id, str(doc.id), doc.text,
                        doc.metadata or {}, chunks, doc_vectors,
                    )  # fmt: skip
                    stored = time.perf_counter()
                    if old is not None:
                        index.remove(old.vector_ids)
                        removed.append(old)
                        kept = {chunk.chunk_id for chunk in chunks}
                        gone.extend(c for c in old.chunk_ids if c not in kept)
                    index.add(new_ids, doc_vectors)
                    added.append(new_ids)
                    index_s += time.perf_counter() - stored
                    store_s += stored - clock
                    if progress is not None:
                        progress(len(chunks))
                clock = time.perf_counter()
            store_s += time.perf_counter() - clock
        except BaseException:
            # The transaction rolled back; make the index match the store again.
            for ids in added:
                index.remove(ids)
            for old in removed:
                index.add(old.vector_ids, old.vectors)
            raise
        return index_s, store_s, gone

    def get_document(self, tenant: str, name: str, doc_id: str) -> DocumentInfo:
        """A document with its chunks; `NotFound` if absent."""
        collection = self.store.get_collection(tenant, name)
        document = self.store.get_document(collection.id, doc_id)
        if document is None:
            raise NotFound(f"document '{doc_id}' is not in collection '{name}'", param="id")
        return document

    def delete_document(self, tenant: str, name: str, doc_id: str) -> None:
        """Remove a document, its chunks and their vectors; `NotFound` if absent."""
        with self._lock:
            collection = self.store.get_collection(tenant, name)
            index = self._index(collection.id)
            with self.store.transaction() as session:
                old = self.store.remove_document(session, collection.id, doc_id)
                if old is None:
                    raise NotFound(f"document '{doc_id}' is not in collection '{name}'", param="id")
                index.remove(old.vector_ids)
        self.removals.removed(tenant, name, old.chunk_ids)

    # search

    def search(self, tenant: str, name: str, query: str, top_k: int = 5) -> list[SearchHit]:
        """The `top_k` chunks closest to `query`, best first."""
        if not 1 <= top_k <= self.settings.max_top_k:
            raise Unprocessable(
                f"top_k must be between 1 and {self.settings.max_top_k} "
                "(settings retrieval.max_top_k)",
                param="top_k",
            )
        if not query.strip():
            raise Unprocessable("query must not be empty", param="query")
        collection = self._usable_collection(tenant, name)
        with self.timings.measure():  # embedding, index search and the rows' fetch
            vector = self.embedder.embed([query])
            result = self._index(collection.id).search(vector, top_k)
            found = self.store.chunk_hits(collection.id, [int(i) for i in result.ids[0] if i >= 0])
        return [
            SearchHit(
                hit.document_id,
                hit.chunk_id,
                hit.text,
                float(score),
                hit.metadata,
                hit.token_ids,
            )
            for vector_id, score in zip(result.ids[0], result.scores[0], strict=True)
            if (hit := found.get(int(vector_id))) is not None
        ]

    def check_integrity(self, tenant: str, name: str) -> int:
        """The number of chunks, after checking store and index hold the same ids.

        Raises `RuntimeError` naming the difference otherwise (a bug, not a user error).
        """
        with self._lock:
            collection = self.store.get_collection(tenant, name)
            store_ids = np.sort(self.store.vector_ids(collection.id))
            index_ids = np.sort(self._index(collection.id).ids())
        if not np.array_equal(store_ids, index_ids):
            raise RuntimeError(
                f"collection '{name}': store has {len(store_ids)} chunks, "
                f"index has {len(index_ids)} vectors, and the ids differ"
            )
        return len(store_ids)

    # helpers

    def _usable_collection(self, tenant: str, name: str) -> CollectionInfo:
        collection = self.store.get_collection(tenant, name)
        if collection.embedding_model != self.embedder.model_name:
            raise Conflict(
                f"collection '{name}' was embedded with '{collection.embedding_model}' but this "
                f"server embeds with '{self.embedder.model_name}'; re-create the collection",
            )
        return collection

    def _index(self, collection_id: int) -> VectorIndex:
        with self._lock:
            index = self._indexes.get(collection_id)
            if index is None:  # another process made it after our start
                found = [c for c in self.store.list_collections() if c.id == collection_id]
                if not found:
                    raise NotFound("the collection was deleted meanwhile")
                index = self._indexes[collection_id] = self._load_index(found[0])
            return index

    def _new_index(self, dim: int) -> VectorIndex:
        return VectorIndex(
            dim,
            self.settings.index_factory,
            hnsw_ef_search=self.settings.hnsw_ef_search,
            ivf_nprobe=self.settings.ivf_nprobe,
            use_gpu=self.settings.use_gpu,
        )

    def _index_path(self, collection_id: int) -> Path:
        return self.data_dir / "retrieval" / "indexes" / f"{collection_id}.faiss"

    def _load_index(self, collection: CollectionInfo) -> VectorIndex:
        path = self._index_path(collection.id)
        try:
            index = VectorIndex.load(
                path,
                collection.dim,
                self.settings.index_factory,
                hnsw_ef_search=self.settings.hnsw_ef_search,
                ivf_nprobe=self.settings.ivf_nprobe,
                use_gpu=self.settings.use_gpu,
            )
            stored = np.sort(self.store.vector_ids(collection.id))
            if not np.array_equal(stored, np.sort(index.ids())):
                raise IndexFileError(
                    f"index '{path}' is stale: {index.num_vectors} vectors for "
                    f"{len(stored)} stored chunks"
                )
            return index
        except IndexFileError as exc:
            level = logging.WARNING if collection.num_chunks else logging.INFO
            log.log(
                level,
                "rebuilding the index of collection '%s' (tenant '%s', %d chunks) from the "
                "store: %s",
                collection.name, collection.tenant, collection.num_chunks, exc,
            )  # fmt: skip
        index = self._new_index(collection.dim)
        for ids, vectors in self.store.iter_vectors(collection.id):
            index.add(ids, vectors)
        return index
