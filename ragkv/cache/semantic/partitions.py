"""The in-memory side of the semantic cache: one hnswlib index and metadata per partition,
kept consistent with lmdb and restored on start without rebuilding what is intact.

Start-up: read every entry's metadata from lmdb; load each partition's saved index when its
checksum matches and the write log since the manifest's sequence is complete, then replay
that log; rebuild from lmdb vectors only the partitions whose file is missing or corrupt, or
whose live count disagrees with lmdb after the replay.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from ragkv.cache.semantic.index import IndexFiles, PartitionIndex
from ragkv.cache.semantic.store import (
    OP_ADD,
    OP_DELETE,
    OP_FLUSH,
    EntryMeta,
    NewEntry,
    SemanticStore,
)
from ragkv.settings import SemanticCacheSettings

log = logging.getLogger("ragkv.cache.semantic")

_REBUILD_BATCH = 10_000


class PartitionKey(NamedTuple):
    """What separates cached answers: nothing is ever shared across any of these."""

    tenant: str
    model: str
    template_hash: str
    category: str

    def name(self) -> str:
        """Stable string form used as the lmdb key."""
        return "\x1f".join(self)


# Cosine at or above which a stored entry may be the same query (then compared as text).
_DUPLICATE_SIMILARITY = 0.9999


@dataclass
class Partition:
    """One partition: its index and the metadata of its live entries."""

    partition_id: int
    key: PartitionKey
    index: PartitionIndex | None = None
    meta: dict[int, EntryMeta] = field(default_factory=dict)
    bytes: int = 0


class StartReport(NamedTuple):
    """How the indexes came back on start."""

    loaded: int
    rebuilt: int
    replayed_ops: int
    entries: int


class PartitionSet:
    """All partitions of one cache; not thread-safe (the cache holds its lock around calls)."""

    def __init__(self, store: SemanticStore, files: IndexFiles, settings: SemanticCacheSettings):
        self.store = store
        self.files = files
        self.settings = settings
        self.by_key: dict[PartitionKey, Partition] = {}
        self.by_id: dict[int, Partition] = {}
        self.writes_since_save = 0

    def new_index(self, dim: int) -> PartitionIndex:
        """An empty index with the configured M / ef."""
        s = self.settings
        return PartitionIndex(dim, s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef)

    def get(self, key: PartitionKey) -> Partition | None:
        """The partition for `key`, or None when nothing was ever stored there."""
        return self.by_key.get(key)

    def get_or_create(self, key: PartitionKey) -> Partition:
        """The partition for `key`, registering it in lmdb when new."""
        part = self.by_key.get(key)
        if part is None:
            partition_id = self.store.partition_id(key.name(), key._asdict())
            part = Partition(partition_id, key)
            self.by_key[key] = part
            self.by_id[partition_id] = part
        return part

    def add_entries(self, entry_ids: list[int], entries: list[NewEntry]) -> None:
        """Entries just written to lmdb: into their partitions' memory and indexes (one
        index call per partition)."""
        rows_of: dict[int, list[int]] = {}
        for row, (entry_id, entry) in enumerate(zip(entry_ids, entries, strict=True)):
            part = self.by_id[entry.meta.partition_id]
            part.meta[entry_id] = entry.meta
            part.bytes += entry.meta.bytes
            rows_of.setdefault(entry.meta.partition_id, []).append(row)
        for partition_id, rows in rows_of.items():
            part = self.by_id[partition_id]
            if part.index is None:
                part.index = self.new_index(entries[rows[0]].vector.shape[0])
            vectors = np.stack([entries[row].vector for row in rows])
            part.index.add([entry_ids[row] for row in rows], vectors)

    def same_queries(self, part: Partition, queries: list[str], vectors: np.ndarray) -> set[int]:
        """Ids of entries of `part` holding exactly one of `queries` (`vectors: [n, dim]`
        their embeddings): a write of the same query replaces them."""
        if part.index is None:
            return set()
        replaced = set()
        for query, found in zip(queries, part.index.nearest(vectors), strict=True):
            if found is None or found[1] < _DUPLICATE_SIMILARITY:
                continue
            stored = self.store.get(found[0])
            if stored is not None and stored.query == query:
                replaced.add(found[0])
        return replaced

    def quota_scope(self, key: PartitionKey) -> tuple[dict[int, EntryMeta], int]:
        """Live entries and bytes that count against `key`'s category quota: the tenant's
        entries of that category in every partition (any model or template)."""
        parts = [
            p
            for p in self.by_key.values()
            if p.key.tenant == key.tenant and p.key.category == key.category
        ]
        if len(parts) == 1:  # the common case: no copy
            return parts[0].meta, parts[0].bytes
        merged = {entry_id: meta for p in parts for entry_id, meta in p.meta.items()}
        return merged, sum(p.bytes for p in parts)

    # -- start-up -------------------------------------------------------------------------------

    def open(self) -> StartReport:
        """Restore partitions, metadata and indexes from lmdb and the saved index files."""
        for record in self.store.partitions().values():
            key = PartitionKey(
                record["tenant"], record["model"], record["template_hash"], record["category"]
            )
            part = Partition(int(record["id"]), key)
            self.by_key[key], self.by_id[part.partition_id] = part, part
        entries = 0
        for entry_id, meta in self.store.iter_meta():
            part = self.by_id.get(meta.partition_id)
            if part is not None:
                part.meta[entry_id] = meta
                part.bytes += meta.bytes
                entries += 1
        manifest = self.files.read_manifest() or {"seq": 0, "partitions": {}}
        ops, complete = self.store.log_after(int(manifest.get("seq", 0)))
        saved = manifest["partitions"] if complete else {}
        loaded = 0
        for part in self.by_id.values():
            info = saved.get(str(part.partition_id))
            dim = self._dim(part)
            if dim is None:
                continue
            if info is None:
                # Created after the last save: the complete log holds all of it.
                part.index = self.new_index(dim) if complete else None
                continue
            s = self.settings
            part.index = PartitionIndex.load(
                self.files.folder / str(info.get("file", "")), str(info.get("sha256", "")),
                dim, s.hnsw_m, s.hnsw_ef_construction, s.hnsw_ef, int(info.get("live", 0)),
            )  # fmt: skip
            if part.index is None:
                log.warning("semantic cache: index of partition %s is corrupt", part.partition_id)
            else:
                loaded += 1
        replayed = self._replay(ops)
        rebuilt = 0
        for part in self.by_id.values():
            if part.index is not None and part.index.live == len(part.meta):
                continue
            if part.meta:
                self._rebuild(part)
                rebuilt += 1
            else:
                part.index = None
        self.writes_since_save = replayed
        return StartReport(loaded, rebuilt, replayed, entries)

    def _dim(self, part: Partition) -> int | None:
        for entry_id in part.meta:
            vectors = self.store.vectors([entry_id])
            if entry_id in vectors:
                return int(vectors[entry_id].shape[0])
        return None

    def _replay(self, ops: list[tuple[int, int, int]]) -> int:
        # Replay only onto indexes that were loaded; the others are rebuilt whole anyway.
        replayed = 0
        for op, partition_id, entry_id in ops:
            part = self.by_id.get(partition_id)
            if part is None or part.index is None:
                continue
            if op == OP_FLUSH:
                part.index = self.new_index(part.index.dim)
            elif op == OP_DELETE:
                part.index.delete(entry_id)
            elif op == OP_ADD and entry_id in part.meta:
                vector = self.store.vectors([entry_id]).get(entry_id)
                if vector is not None:
                    part.index.add([entry_id], vector[None, :])
            replayed += 1
        return replayed

    def _rebuild(self, part: Partition) -> None:
        log.warning(
            "semantic cache: rebuilding index of partition %s (%d entries) from lmdb",
            part.partition_id,
            len(part.meta),
        )
        ids = sorted(part.meta)
        index: PartitionIndex | None = None
        for start in range(0, len(ids), _REBUILD_BATCH):
            vectors = self.store.vectors(ids[start : start + _REBUILD_BATCH])
            if not vectors:
                continue
            batch_ids = list(vectors)
            if index is None:
                index = self.new_index(int(vectors[batch_ids[0]].shape[0]))
            index.add(batch_ids, np.stack([vectors[i] for i in batch_ids]))
        part.index = index
        if index is None:
            # No vector of this partition survived: its entries cannot be served.
            part.meta.clear()
            part.bytes = 0

    # -- persistence --------------------------------------------------------------------------

    def save(self) -> None:
        """Persist every index with the current store sequence, then trim the write log."""
        seq = self.store.sequence()
        indexes = {p.partition_id: p.index for p in self.by_id.values() if p.index is not None}
        self.files.save(seq, indexes)
        self.store.trim_log(seq)
        self.writes_since_save = 0

    def summary(self) -> dict[tuple[str, str], dict[str, int]]:
        """Live entries and bytes per (tenant, category)."""
        out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: {"entries": 0, "bytes": 0})
        for part in self.by_id.values():
            totals = out[(part.key.tenant, part.key.category)]
            totals["entries"] += len(part.meta)
            totals["bytes"] += part.bytes
        return dict(out)
