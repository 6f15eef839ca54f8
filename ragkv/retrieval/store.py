"""The document store: SQLite (WAL) file by default, PostgreSQL (or any SQLAlchemy URL) by URL.

Reads open their own short sessions; writes run inside a `transaction()` the caller holds, so
the retriever can keep the store and the FAISS index in step (commit only once both agree).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ragkv.errors import Conflict, NotFound
from ragkv.retrieval.chunker import Chunk
from ragkv.retrieval.models import Base, ChunkRow, CollectionRow, DocumentRow


class CollectionInfo(NamedTuple):
    """A collection as the API shows it."""

    id: int
    tenant: str
    name: str
    embedding_model: str
    dim: int
    created_at: datetime
    num_documents: int
    num_chunks: int


class ChunkInfo(NamedTuple):
    """A stored chunk; `vector_id` is its id in the FAISS index."""

    vector_id: int
    chunk_id: str
    ordinal: int
    text: str
    num_tokens: int
    content_hash: str
    token_ids: list[int]


class DocumentInfo(NamedTuple):
    """A stored document with its chunks in order."""

    id: str
    metadata: dict[str, Any]
    text: str
    created_at: datetime
    chunks: list[ChunkInfo]


class RemovedChunks(NamedTuple):
    """A removed document's chunks: vector ids `[n]`, vectors `[n, dim]`, chunk ids."""

    vector_ids: np.ndarray
    vectors: np.ndarray
    chunk_ids: list[str]


class ChunkHit(NamedTuple):
    """What a search shows of one chunk: ids, text and its document's metadata."""

    vector_id: int
    document_id: str
    chunk_id: str
    text: str
    metadata: dict[str, Any]
    token_ids: tuple[int, ...] = ()


def sqlite_url(data_dir: Path) -> str:
    """The default store: `data_dir/retrieval/store.sqlite3`."""
    folder = Path(data_dir) / "retrieval"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'store.sqlite3'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a generous busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


class DocumentStore:
    """Collections, documents and chunks (with their token ids and embedding) in SQL tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        """Create the tables that do not exist yet."""
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on normal exit, rolled back on error."""
        with self._sessions() as session, session.begin():
            yield session

    # collections

    def create_collection(self, tenant: str, name: str, model: str, dim: int) -> CollectionInfo:
        """Add a collection; `Conflict` if the tenant already has one of that name."""
        row = CollectionRow(tenant=tenant, name=name, embedding_model=model, dim=dim)
        try:
            with self.transaction() as session:
                session.add(row)
        except IntegrityError as exc:
            raise Conflict(f"collection '{name}' already exists", param="name") from exc
        return self.get_collection(tenant, name)

    def get_collection(self, tenant: str, name: str) -> CollectionInfo:
        """One collection with its counts; `NotFound` if the tenant has none of that name."""
        found = self._collections(tenant, name)
        if not found:
            raise NotFound(
                f"collection '{name}' does not exist; create it with POST /v1/collections",
                param="name",
            )
        return found[0]

    def list_collections(self, tenant: str | None = None) -> list[CollectionInfo]:
        """A tenant's collections by name (every tenant's when `tenant` is None)."""
        return self._collections(tenant, None)

    def _collections(self, tenant: str | None, name: str | None) -> list[CollectionInfo]:
        docs = (
            select(DocumentRow.collection_id, func.count().label("n"))
            .group_by(DocumentRow.collection_id)
            .subquery()
        )
        chunks = (
            select(ChunkRow.collection_id, func.count().label("n"))
            .group_by(ChunkRow.collection_id)
            .subquery()
        )
        query = (
            select(CollectionRow, func.coalesce(docs.c.n, 0), func.coalesce(chunks.c.n, 0))
            .outerjoin(docs, docs.c.collection_id == CollectionRow.id)
            .outerjoin(chunks, chunks.c.collection_id == CollectionRow.id)
            .order_by(CollectionRow.tenant, CollectionRow.name)
        )
        if tenant is not None:
            query = query.where(CollectionRow.tenant == tenant)
        if name is not None:
            query = query.where(CollectionRow.name == name)
        with self._sessions() as session:
            return [
                CollectionInfo(
                    row.id,
                    row.tenant,
                    row.name,
                    row.embedding_model,
                    row.dim,
                    row.created_at,
                    int(num_docs),
                    int(num_chunks),
                )  # fmt: skip
                for row, num_docs, num_chunks in session.execute(query)
            ]

    def delete_collection(self, collection_id: int) -> None:
        """Remove a collection with its documents and chunks."""
        with self.transaction() as session:
            session.execute(delete(ChunkRow).where(ChunkRow.collection_id == collection_id))
            session.execute(delete(DocumentRow).where(DocumentRow.collection_id == collection_id))
            session.execute(delete(CollectionRow).where(CollectionRow.id == collection_id))

    # documents (writes take the caller's session)

    def remove_document(
        self, session: Session, collection_id: int, doc_id: str
    ) -> RemovedChunks | None:
        """Delete a document and its chunks; returns what they were, or None."""
        document = _find_document(session, collection_id, doc_id)
        if document is None:
            return None
        rows = session.execute(
            select(ChunkRow.id, ChunkRow.embedding, ChunkRow.chunk_id).where(
                ChunkRow.document_id == document.id
            )
        ).all()
        session.execute(delete(ChunkRow).where(ChunkRow.document_id == document.id))
        session.execute(delete(DocumentRow).where(DocumentRow.id == document.id))
        session.flush()
        ids, vectors = _ids_and_vectors(rows)
        return RemovedChunks(ids, vectors, [row[2] for row in rows])

    def insert_document(
        self,
        session: Session,
        collection_id: int,
        doc_id: str,
        text: str,
        metadata: dict[str, Any],
        chunks: list[Chunk],
        vectors: np.ndarray,
    ) -> np.ndarray:
        """Insert a document and its chunks with their vectors `[len(chunks), dim]`.

        Returns the chunks' vector ids (int64), known once flushed.
        """
        document = DocumentRow(collection_id=collection_id, doc_id=doc_id, meta=metadata, text=text)
        session.add(document)
        session.flush()
        rows = [
            ChunkRow(
                collection_id=collection_id,
                document_id=document.id,
                chunk_id=chunk.chunk_id,
                ordinal=chunk.ordinal,
                text=chunk.text,
                num_tokens=chunk.num_tokens,
                content_hash=chunk.content_hash,
                token_ids=np.asarray(chunk.token_ids, dtype="<i4").tobytes(),
                embedding=np.asarray(vector, dtype="<f4").tobytes(),
            )
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        session.add_all(rows)
        session.flush()
        return np.array([row.id for row in rows], dtype=np.int64)

    # reads

    def get_document(self, collection_id: int, doc_id: str) -> DocumentInfo | None:
        """A document with its chunks, or None."""
        with self._sessions() as session:
            document = _find_document(session, collection_id, doc_id)
            if document is None:
                return None
            rows = session.scalars(
                select(ChunkRow)
                .where(ChunkRow.document_id == document.id)
                .order_by(ChunkRow.ordinal)
            ).all()
            chunks = [
                ChunkInfo(
                    row.id,
                    row.chunk_id,
                    row.ordinal,
                    row.text,
                    row.num_tokens,
                    row.content_hash,
                    np.frombuffer(row.token_ids, dtype="<i4").tolist(),
                )  # fmt: skip
                for row in rows
            ]
            return DocumentInfo(
                document.doc_id,
                dict(document.meta or {}),
                document.text,
                document.created_at,
                chunks,
            )

    def chunk_hits(self, collection_id: int, vector_ids: list[int]) -> dict[int, ChunkHit]:
        """Search results for `vector_ids` (ids not in the store are left out)."""
        if not vector_ids:
            return {}
        query = (
            select(
                ChunkRow.id,
                DocumentRow.doc_id,
                ChunkRow.chunk_id,
                ChunkRow.text,
                DocumentRow.meta,
                ChunkRow.token_ids,
            )
            .join(DocumentRow, DocumentRow.id == ChunkRow.document_id)
            .where(ChunkRow.collection_id == collection_id, ChunkRow.id.in_(vector_ids))
        )
        with self._sessions() as session:
            return {
                row[0]: ChunkHit(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    dict(row[4] or {}),
                    tuple(np.frombuffer(row[5], dtype="<i4").tolist()),
                )
                for row in session.execute(query)
            }

    def vector_ids(self, collection_id: int) -> np.ndarray:
        """Every chunk's vector id in a collection, int64."""
        with self._sessions() as session:
            ids = session.scalars(
                select(ChunkRow.id).where(ChunkRow.collection_id == collection_id)
            )
            return np.fromiter(ids, dtype=np.int64)

    def iter_vectors(
        self, collection_id: int, batch_size: int = 10_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A collection's (vector ids `[n]`, vectors `[n, dim]`) in batches, for rebuilds."""
        last_id = -1
        while True:
            with self._sessions() as session:
                rows = session.execute(
                    select(ChunkRow.id, ChunkRow.embedding)
                    .where(ChunkRow.collection_id == collection_id, ChunkRow.id > last_id)
                    .order_by(ChunkRow.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            last_id = rows[-1][0]
            yield _ids_and_vectors(rows)


def _ids_and_vectors(rows: Any) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([row[0] for row in rows], dtype=np.int64)
    if not len(ids):
        return ids, np.zeros((0, 0), dtype=np.float32)
    vectors = np.stack([np.frombuffer(row[1], dtype="<f4") for row in rows]).astype(np.float32)
    return ids, vectors


def _find_document(session: Session, collection_id: int, doc_id: str) -> DocumentRow | None:
    """The document `doc_id` of a collection, or None."""
    return session.scalar(
        select(DocumentRow).where(
            DocumentRow.collection_id == collection_id, DocumentRow.doc_id == doc_id
        )
    )
