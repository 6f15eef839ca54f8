"""What a killed server left in its data directory, read with the server down: the retrieval
store and its FAISS indexes agree and hold no orphans, every semantic-cache record decodes,
every chunk-KV disk record passes its checksum."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

from ragkv.cache.kv.chunk_disk import RecordError, decode_record
from ragkv.cache.kv.chunk_store import chunk_key
from ragkv.cache.semantic.store import SemanticStore
from ragkv.engine.tokenizer import Tokenizer
from ragkv.engine.weights import fingerprint
from ragkv.retrieval.chunker import Chunker
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.index import IndexFileError, VectorIndex
from ragkv.retrieval.service import Retriever
from ragkv.settings import EmbeddingSettings, RetrievalSettings, SemanticCacheSettings

EMBEDDING_DIM = 384

# Rows that point at nothing, and documents that lost their chunks.
ORPHAN_QUERIES = {
    "chunks without their document": (
        "SELECT COUNT(*) FROM chunks c LEFT JOIN documents d ON d.id = c.document_id "
        "WHERE d.id IS NULL OR d.collection_id != c.collection_id"
    ),
    "documents without their collection": (
        "SELECT COUNT(*) FROM documents d LEFT JOIN collections c ON c.id = d.collection_id "
        "WHERE c.id IS NULL"
    ),
    "documents without chunks": (
        "SELECT COUNT(*) FROM documents d "
        "WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = d.id)"
    ),
}


@dataclass
class Findings:
    """One inspection: what is wrong, the chunk-KV record keys, the semantic entry count."""

    violations: list[str] = field(default_factory=list)
    chunk_records: set[bytes] = field(default_factory=set)
    semantic_entries: int = 0


class Inspector:
    """Reads a data directory the way a starting server does, and checks what it finds.

    Holds the served model's tokenizer: chunk-KV records are checked under its fingerprint
    and looked up under the keys the server gives a chunk's token ids."""

    def __init__(self, model_path: Path) -> None:
        self.tokenizer = Tokenizer(model_path)
        self.fingerprint = fingerprint(model_path, self.tokenizer.serialization())
        self.chunker = Chunker(self.tokenizer, RetrievalSettings().chunk_tokens)

    def chunk_record_keys(self, tenant: str, text: str) -> list[bytes]:
        """The disk keys of the chunk KV of an inline document `text` (its chunks, alone)."""
        return [chunk_key(tenant, chunk.token_ids).encode() for chunk in self.chunker.chunk(text)]

    def inspect(self, data_dir: Path) -> Findings:
        """Check everything under `data_dir`; the server must not be running."""
        findings = Findings()
        self._retrieval(data_dir, findings)
        self._semantic(data_dir / "semantic_cache" / "lmdb", findings)
        self._chunk_kv(data_dir / "chunk_kv", findings)
        return findings

    def saved_indexes(self, data_dir: Path) -> list[str]:
        """After a clean stop: every collection's index file loads and holds its chunks' ids."""
        wrong = []
        retriever = self._retriever(data_dir)
        try:
            for collection in retriever.store.list_collections():
                path = data_dir / "retrieval" / "indexes" / f"{collection.id}.faiss"
                try:
                    index = VectorIndex.load(path, collection.dim, "Flat", use_gpu=False)
                except IndexFileError as exc:
                    wrong.append(f"collection '{collection.name}': {exc}")
                    continue
                stored = np.sort(retriever.store.vector_ids(collection.id))
                if not np.array_equal(stored, np.sort(index.ids())):
                    wrong.append(f"collection '{collection.name}': saved index is stale")
        finally:
            retriever.store.close()
        return wrong

    def _retriever(self, data_dir: Path) -> Retriever:
        embedder = Embedder(EmbeddingSettings())  # loads nothing until asked to embed
        return Retriever(RetrievalSettings(use_gpu=False), data_dir, embedder, self.tokenizer)

    def _retrieval(self, data_dir: Path, findings: Findings) -> None:
        database = data_dir / "retrieval" / "store.sqlite3"
        if not database.is_file():
            return
        with sqlite3.connect(database) as connection:
            for what, query in ORPHAN_QUERIES.items():
                (count,) = connection.execute(query).fetchone()
                if count:
                    findings.violations.append(f"retrieval: {count} {what}")
            ids = {row[0] for row in connection.execute("SELECT id FROM collections")}
        connection.close()
        for path in (data_dir / "retrieval" / "indexes").glob("*.faiss"):
            if int(path.stem) not in ids:
                findings.violations.append(f"retrieval: index file {path.name} of no collection")
        # What a starting server does: load or rebuild each index, then compare it with rows.
        retriever = self._retriever(data_dir)
        try:
            retriever.open()
            for collection in retriever.store.list_collections():
                try:
                    retriever.check_integrity(collection.tenant, collection.name)
                except RuntimeError as exc:
                    findings.violations.append(f"retrieval: {exc}")
        finally:
            retriever.store.close()  # not close(): saving the indexes would change the data

    def _semantic(self, path: Path, findings: Findings) -> None:
        if not path.is_dir():
            return
        # Every value is sealed with a CRC32: one that fails it is refused (counted), not used.
        store = SemanticStore(path, SemanticCacheSettings().lmdb_map_size_bytes, durable=False)
        try:
            store.partitions()
            store.log_after(0)
            ids = [entry_id for entry_id, _ in store.iter_meta()]
            vectors = store.vectors(ids)
            for entry_id in ids:
                entry = store.get(entry_id)
                vector = vectors.get(entry_id)
                if entry is None or vector is None:
                    findings.violations.append(f"semantic: entry {entry_id} is half-written")
                elif vector.shape != (EMBEDDING_DIM,) or not np.isfinite(vector).all():
                    findings.violations.append(f"semantic: entry {entry_id} has a bad vector")
            if store.refused:
                findings.violations.append(f"semantic: {store.refused} values fail their checks")
            findings.semantic_entries = len(ids)
        except Exception as exc:  # any decode error is the finding
            findings.violations.append(f"semantic: records do not decode: {exc!r}")
        finally:
            store.close()

    def _chunk_kv(self, path: Path, findings: Findings) -> None:
        if not path.is_dir():
            return
        env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=1)
        try:
            with env.begin() as txn:
                for key, record in txn.cursor():
                    try:
                        decode_record(bytes(record), self.fingerprint)
                    except (RecordError, ValueError, RuntimeError) as exc:
                        findings.violations.append(f"chunk KV: record {bytes(key)!r}: {exc}")
                    findings.chunk_records.add(bytes(key))
        finally:
            env.close()
