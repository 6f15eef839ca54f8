"""lmdb storage of the semantic cache: entries, vectors, usage, partitions, a write log, policies.

Every change is one lmdb write transaction, so a crash (even SIGKILL) loses at most the
transaction in flight. Each transaction bumps a global sequence number and appends its
operations to `log`; a persisted hnswlib index records the sequence it reflects, and on start
only the log after that sequence is replayed (see `semantic_index.py`). Every value is
sealed with a checksum (`records.py`): a damaged one is refused and counted, never served.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

from ragkv.cache.semantic.records import (
    COUNTERS,
    FORMAT_VERSION,
    LOG,
    META,
    StoreRecordError,
    decode_entry,
    decode_json,
    decode_partition,
    decode_vector,
    encode_json,
    format_problem,
    seal,
    unpack,
)
from ragkv.cache.semantic.records import U64 as _U64
from ragkv.cache.semantic.types import Sources

log = logging.getLogger("ragkv.cache")

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
        """Sealed binary form stored in the `meta` database."""
        return seal(
            META.pack(
                self.partition_id,
                self.created_at,
                self.expires_at,
                self.last_used,
                min(self.hits, 2**32 - 1),
                self.bytes,
            )
        )

    @classmethod
    def unpack(cls, raw: bytes) -> EntryMeta:
        """Inverse of `pack`; `StoreRecordError` when damaged."""
        return cls(*unpack(META, raw, "entry metadata"))


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
        self.refused = 0  # damaged values met (each refused, not used)
        self._check_format()

    def _check_format(self) -> None:
        """Empty the store when it holds another format or a damaged counter: without
        trustworthy ids and sequence numbers no entry can be kept (it is only a cache)."""
        with self.env.begin(write=True) as txn:
            counters = {name: txn.get(name, db=self._state) for name in COUNTERS}
            held = txn.stat(self._meta)["entries"] + txn.stat(self._partitions)["entries"]
            problem = format_problem(txn.get(b"format", db=self._state), counters, held > 0)
            if problem is not None:
                log.warning("semantic cache store %s: %s; starting empty", self.path, problem)
                for db in (self._entries, self._vectors, self._meta, self._log,
                           self._partitions, self._state, self._sources):  # fmt: skip
                    txn.drop(db, delete=False)
            txn.put(b"format", seal(_U64.pack(FORMAT_VERSION)), db=self._state)

    def _refuse(self, error: StoreRecordError) -> None:
        self.refused += 1
        log.warning("semantic cache store: %s; the value is refused", error)

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
                txn.put(key, encode_json(record), db=self._entries)
                txn.put(key, seal(np.asarray(entry.vector, np.float32).tobytes()), db=self._vectors)
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
        try:
            sources = decode_entry(raw).get("s") if raw is not None else None
        except StoreRecordError:  # its source keys stay behind, naming an entry that is gone
            sources = None
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
        value = (unpack(_U64, raw, f"counter {name.decode()}")[0] if raw else 0) + 1
        txn.put(name, seal(_U64.pack(value)), db=self._state)
        return value

    def _append_log(
        self, txn: lmdb.Transaction, seq: int, op: int, partition_id: int, entry_id: int
    ) -> None:
        position = self._next(txn, b"log_pos")
        record = seal(LOG.pack(op, partition_id, entry_id, seq))
        txn.put(_U64.pack(position), record, db=self._log)

    # -- reads --------------------------------------------------------------------------------

    def sequence(self) -> int:
        """The sequence number of the last committed write (0 for a new store)."""
        return self._get_counter(b"seq")

    def _get_counter(self, name: bytes) -> int:
        with self.env.begin() as txn:
            raw = txn.get(name, db=self._state)
        return unpack(_U64, raw, f"counter {name.decode()}")[0] if raw else 0

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
        try:
            record, entry_meta = decode_entry(raw), EntryMeta.unpack(meta)
        except StoreRecordError as exc:
            self._refuse(exc)
            return None
        return StoredEntry(entry_id, record["q"], record["r"], record["c"], entry_meta)

    def vectors(self, entry_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Vectors of the given entries that still exist, `[dim]` float32 each."""
        out = {}
        with self.env.begin() as txn:
            for entry_id in entry_ids:
                raw = txn.get(_U64.pack(entry_id), db=self._vectors)
                if raw is None:
                    continue
                try:
                    out[entry_id] = decode_vector(raw)
                except StoreRecordError as exc:
                    self._refuse(exc)
        return out

    def iter_meta(self) -> Iterator[tuple[int, EntryMeta]]:
        """Every entry's id and metadata, in id order."""
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self._meta):
                try:
                    meta = EntryMeta.unpack(raw)
                except StoreRecordError as exc:  # the entry is not loaded: never served
                    self._refuse(exc)
                    continue
                yield _U64.unpack(key)[0], meta

    def log_after(self, seq: int) -> tuple[list[tuple[int, int, int]], bool]:
        """Operations `(op, partition_id, entry_id)` committed after `seq`, oldest first.

        The flag is False when the log no longer reaches back to `seq` (it was trimmed) or a
        record of it is damaged, in which case the caller must rebuild rather than replay.
        """
        ops: list[tuple[int, int, int]] = []
        complete = self._get_counter(b"log_trimmed") <= seq <= self.sequence()
        with self.env.begin() as txn:
            for _, raw in txn.cursor(db=self._log):
                try:
                    op, partition_id, entry_id, op_seq = unpack(LOG, raw, "log record")
                except StoreRecordError as exc:
                    self._refuse(exc)
                    complete = False
                    continue
                if op_seq > seq:
                    ops.append((op, partition_id, entry_id))
        return ops, complete

    def trim_log(self, upto_seq: int) -> None:
        """Forget log records of transactions up to `upto_seq` (they are in a saved index)."""
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._log)
            for key, raw in list(cursor):
                try:
                    if unpack(LOG, raw, "log record")[3] > upto_seq:
                        break
                except StoreRecordError:  # kept: `log_after` then asks for a rebuild
                    break
                txn.delete(key, db=self._log)
            txn.put(b"log_trimmed", seal(_U64.pack(upto_seq)), db=self._state)

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
                try:
                    return int(decode_partition(raw)["id"])
                except StoreRecordError as exc:  # written anew below, under a new id
                    self._refuse(exc)
            partition_id = self._next(txn, b"partition_id")
            value = {**record, "id": partition_id}
            txn.put(key.encode(), encode_json(value), db=self._partitions)
            return partition_id

    def partitions(self) -> dict[str, dict[str, Any]]:
        """Every known partition: key -> record (tenant, model, template_hash, category, id)."""
        found = {}
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self._partitions):
                try:
                    found[bytes(key).decode()] = decode_partition(raw)
                except (StoreRecordError, UnicodeDecodeError) as exc:
                    self._refuse(StoreRecordError(f"partition {bytes(key)!r}: {exc}"))
        return found

    def get_state(self, name: str) -> Any:
        """A JSON value saved with `put_state` (None when absent)."""
        with self.env.begin() as txn:
            raw = txn.get(b"json:" + name.encode(), db=self._state)
        try:
            return decode_json(raw, f"state {name}") if raw is not None else None
        except StoreRecordError as exc:
            self._refuse(exc)
            return None

    def put_state(self, name: str, value: Any) -> None:
        """Save a small JSON value (e.g. the category policies set over the admin API)."""
        with self.env.begin(write=True) as txn:
            txn.put(b"json:" + name.encode(), encode_json(value), db=self._state)


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
