"""lmdb storage of the semantic cache: entries, vectors, usage, partitions, a write log, policies.

Every change is one lmdb write transaction, so a crash (even SIGKILL) loses at most the
transaction in flight. Each transaction bumps a global sequence number and appends its
operations to `log`; a persisted hnswlib index records the sequence it reflects, and on start
only the log after that sequence is replayed (see `semantic_index.py`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from ragkv.cache.semantic.types import Sources

_U64 = struct.Struct(">Q")
# partition id, created_at, expires_at (inf: never), last_used, hits, bytes
_META = struct.Struct("<IdddII")
_LOG = struct.Struct("<BIQ")

OP_ADD, OP_DELETE, OP_FLUSH = 1, 2, 3


@dataclass(slots=True)
class EntryMeta:
    """The hot part of an entry, kept in memory: partition, times (s), usage, size."""

    partition_id: int
    created_at: float
    expires_at: float
    last_used: float
    hits: int
    bytes: int

    def pack(self) -> bytes:
        """Binary form stored in the `meta` database."""
        return _META.pack(
            self.partition_id,
            self.created_at,
            self.expires_at,
            self.last_used,
            min(self.hits, 2**32 - 1),
            self.bytes,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> EntryMeta:
        """Inverse of `pack`."""
        return cls(*_META.unpack(raw))


@dataclass(slots=True)
class NewEntry:
    """An entry to write: text, `vector: [dim]` float32, its metadata and its sources."""

    query: str
    response: str
    category: str
    vector: np.ndarray
    meta: EntryMeta
    sources: Sources | None = None


@dataclass(slots=True)
class StoredEntry:
    """An entry as read back: id, texts, category and metadata (no vector)."""

    entry_id: int
    query: str
    response: str
    category: str
    meta: EntryMeta


class SemanticStore:
    """The lmdb environment of one semantic cache (a folder). Thread-safe (lmdb locking)."""

    def __init__(self, path: Path, map_size_bytes: int, durable: bool) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.env = lmdb.open(
            str(path),
            map_size=map_size_bytes,
            max_dbs=8,
            sync=durable,
            metasync=durable,
            readahead=False,
        )
        self._entries = self.env.open_db(b"entries")
        self._vectors = self.env.open_db(b"vectors")
        self._meta = self.env.open_db(b"meta")
        self._log = self.env.open_db(b"log")
        self._partitions = self.env.open_db(b"partitions")
        self._state = self.env.open_db(b"state")
        # (collection, chunk id, entry id) -> b"": which entries a chunk's change invalidates
        self._sources = self.env.open_db(b"sources")

    def close(self) -> None:
        """Flush and close the environment."""
        self.env.sync(True)
        self.env.close()

    # -- writes -------------------------------------------------------------------------------

    def write(
        self, adds: Sequence[NewEntry], deletes: Sequence[tuple[int, int]]
    ) -> tuple[list[int], int]:
        """Delete `(partition_id, entry_id)` pairs and add entries in one transaction.

        Returns the new entries' ids and the transaction's sequence number.
        """
        with self.env.begin(write=True) as txn:
            seq = self._next(txn, b"seq")
            for partition_id, entry_id in deletes:
                self._drop(txn, entry_id)
                self._append_log(txn, seq, OP_DELETE, partition_id, entry_id)
            ids = []
            for entry in adds:
                entry_id = self._next(txn, b"next_id")
                key = _U64.pack(entry_id)
                record: dict[str, Any] = {
                    "q": entry.query, "r": entry.response, "c": entry.category
                }  # fmt: skip
                if entry.sources is not None:
                    record["s"] = [entry.sources.collection, list(entry.sources.chunk_ids)]
                    for chunk_id in set(entry.sources.chunk_ids):
                        source = _source_key(entry.sources.collection, chunk_id)
                        txn.put(source + key, b"", db=self._sources)
                txn.put(key, json.dumps(record).encode(), db=self._entries)
                txn.put(key, np.asarray(entry.vector, np.float32).tobytes(), db=self._vectors)
                txn.put(key, entry.meta.pack(), db=self._meta)
                self._append_log(txn, seq, OP_ADD, entry.meta.partition_id, entry_id)
                ids.append(entry_id)
        return ids, seq

    def flush_partition(self, partition_id: int, entry_ids: Sequence[int]) -> int:
        """Delete every entry of a partition in one transaction; returns the sequence."""
        with self.env.begin(write=True) as txn:
            seq = self._next(txn, b"seq")
            for entry_id in entry_ids:
                self._drop(txn, entry_id)
            self._append_log(txn, seq, OP_FLUSH, partition_id, 0)
        return seq

    def _drop(self, txn: lmdb.Transaction, entry_id: int) -> None:
        """Delete an entry's record, vector, metadata and its source-index keys."""
        key = _U64.pack(entry_id)
        raw = txn.get(key, db=self._entries)
        sources = json.loads(raw).get("s") if raw is not None else None
        if sources:
            collection, chunk_ids = sources
            for chunk_id in set(chunk_ids):
                txn.delete(_source_key(collection, chunk_id) + key, db=self._sources)
        txn.delete(key, db=self._entries)
        txn.delete(key, db=self._vectors)
        txn.delete(key, db=self._meta)

    def update_usage(self, usage: Sequence[tuple[int, EntryMeta]]) -> None:
        """Persist hit counts and last-use times (batched; entries deleted since are skipped)."""
        if not usage:
            return
        with self.env.begin(write=True) as txn:
            for entry_id, meta in usage:
                key = _U64.pack(entry_id)
                if txn.get(key, db=self._meta) is not None:
                    txn.put(key, meta.pack(), db=self._meta)

    def _next(self, txn: lmdb.Transaction, name: bytes) -> int:
        raw = txn.get(name, db=self._state)
        value = (_U64.unpack(raw)[0] if raw else 0) + 1
        txn.put(name, _U64.pack(value), db=self._state)
        return value

    def _append_log(
        self, txn: lmdb.Transaction, seq: int, op: int, partition_id: int, entry_id: int
    ) -> None:
        position = self._next(txn, b"log_pos")
        record = _LOG.pack(op, partition_id, entry_id) + _U64.pack(seq)
        txn.put(_U64.pack(position), record, db=self._log)

    # -- reads --------------------------------------------------------------------------------

    def sequence(self) -> int:
        """The sequence number of the last committed write (0 for a new store)."""
        return self._get_counter(b"seq")

    def _get_counter(self, name: bytes) -> int:
        with self.env.begin() as txn:
            raw = txn.get(name, db=self._state)
        return _U64.unpack(raw)[0] if raw else 0

    def get(self, entry_id: int) -> StoredEntry | None:
        """One entry by id, or None when it does not exist (ids outside u64 never do)."""
        if not 0 <= entry_id < 2**64:
            return None
        key = _U64.pack(entry_id)
        with self.env.begin() as txn:
            raw = txn.get(key, db=self._entries)
            meta = txn.get(key, db=self._meta)
        if raw is None or meta is None:
            return None
        record = json.loads(raw)
        return StoredEntry(entry_id, record["q"], record["r"], record["c"], EntryMeta.unpack(meta))

    def vectors(self, entry_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Vectors of the given entries that still exist, `[dim]` float32 each."""
        out = {}
        with self.env.begin() as txn:
            for entry_id in entry_ids:
                raw = txn.get(_U64.pack(entry_id), db=self._vectors)
                if raw is not None:
                    out[entry_id] = np.frombuffer(raw, dtype=np.float32)
        return out

    def iter_meta(self) -> Iterator[tuple[int, EntryMeta]]:
        """Every entry's id and metadata, in id order."""
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self._meta):
                yield _U64.unpack(key)[0], EntryMeta.unpack(raw)

    def log_after(self, seq: int) -> tuple[list[tuple[int, int, int]], bool]:
        """Operations `(op, partition_id, entry_id)` committed after `seq`, oldest first.

        The flag is False when the log no longer reaches back to `seq` (it was trimmed), in
        which case the caller must rebuild rather than replay.
        """
        ops: list[tuple[int, int, int]] = []
        complete = self._get_counter(b"log_trimmed") <= seq <= self.sequence()
        with self.env.begin() as txn:
            for _, raw in txn.cursor(db=self._log):
                if _U64.unpack_from(raw, _LOG.size)[0] > seq:
                    ops.append(_LOG.unpack_from(raw))
        return ops, complete

    def trim_log(self, upto_seq: int) -> None:
        """Forget log records of transactions up to `upto_seq` (they are in a saved index)."""
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._log)
            for key, raw in list(cursor):
                if _U64.unpack_from(raw, _LOG.size)[0] > upto_seq:
                    break
                txn.delete(key, db=self._log)
            txn.put(b"log_trimmed", _U64.pack(upto_seq), db=self._state)

    def entries_from(self, collection: str, chunk_ids: Sequence[str] | None) -> set[int]:
        """Ids of entries generated from any of `chunk_ids` of `collection` (None: from any
        chunk of it)."""
        prefixes = [_part(collection)] if chunk_ids is None else [
            _source_key(collection, chunk_id) for chunk_id in set(chunk_ids)
        ]  # fmt: skip
        found: set[int] = set()
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._sources)
            for prefix in prefixes:
                if not cursor.set_range(prefix):
                    continue
                for key in cursor.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    found.add(_U64.unpack(key[-_U64.size :])[0])
        return found

    # -- partitions and policies ----------------------------------------------------------------

    def partition_id(self, key: str, record: dict[str, Any]) -> int:
        """The id of the partition named `key`, creating it (with `record`) if new."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(key.encode(), db=self._partitions)
            if raw is not None:
                return int(json.loads(raw)["id"])
            partition_id = self._next(txn, b"partition_id")
            value = {**record, "id": partition_id}
            txn.put(key.encode(), json.dumps(value).encode(), db=self._partitions)
            return partition_id

    def partitions(self) -> dict[str, dict[str, Any]]:
        """Every known partition: key -> record (tenant, model, template_hash, category, id)."""
        with self.env.begin() as txn:
            return {k.decode(): json.loads(v) for k, v in txn.cursor(db=self._partitions)}

    def get_state(self, name: str) -> Any:
        """A JSON value saved with `put_state` (None when absent)."""
        with self.env.begin() as txn:
            raw = txn.get(b"json:" + name.encode(), db=self._state)
        return json.loads(raw) if raw is not None else None

    def put_state(self, name: str, value: Any) -> None:
        """Save a small JSON value (e.g. the category policies set over the admin API)."""
        with self.env.begin(write=True) as txn:
            txn.put(b"json:" + name.encode(), json.dumps(value).encode(), db=self._state)


def _part(text: str) -> bytes:
    """A length-prefixed key part: no text can run into the next part or be a prefix of a
    longer one."""
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(raw)) + raw


def _source_key(collection: str, chunk_id: str) -> bytes:
    return _part(collection) + _part(chunk_id)


def expires_at(now: float, ttl_s: float | None) -> float:
    """Absolute expiry time for a TTL (inf when there is none)."""
    return math.inf if ttl_s is None else now + ttl_s
