"""hnswlib vector index of one partition, and the checksummed files that persist all of them.

Vectors are L2-normalised and the space is inner product, so similarity = 1 - distance = cosine.
Deleted slots are reused (`allow_replace_deleted`) so churn does not grow the index.
Files: `<dir>/manifest.json` names, for the store sequence it reflects, one
`p<partition>-<seq>.bin` per partition with its SHA-256. The manifest is replaced atomically
after the files are written, so a crash mid-save leaves the previous, still valid, set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

_MIN_CAPACITY = 1024
_PARALLEL_ROWS = 64  # batches at least this big use every core
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class PartitionIndex:
    """hnswlib index of one partition's vectors `[dim]`; not thread-safe (caller locks)."""

    def __init__(self, dim: int, m: int, ef_construction: int, ef: int) -> None:
        self.dim, self.m, self.ef_construction, self.ef = dim, m, ef_construction, ef
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(
            max_elements=_MIN_CAPACITY, M=m, ef_construction=ef_construction,
            allow_replace_deleted=True,
        )  # fmt: skip
        self.index.set_ef(ef)
        self.index.set_num_threads(1)
        self.live = 0
        self.dirty = True

    def add(self, entry_ids: list[int], vectors: np.ndarray) -> None:
        """Insert `vectors: [n, dim]` (normalised) under `entry_ids`."""
        if not entry_ids:
            return
        needed = self.index.element_count + len(entry_ids)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, 2 * self.index.get_max_elements()))
        threads = _CORES if len(entry_ids) >= _PARALLEL_ROWS else 1  # a batch builds on all cores
        labels = np.asarray(entry_ids, np.uint64)
        self.index.add_items(vectors, labels, num_threads=threads, replace_deleted=True)
        self.live += len(entry_ids)
        self.dirty = True

    def delete(self, entry_id: int) -> bool:
        """Mark one entry deleted; False when it was not in the index."""
        try:
            self.index.mark_deleted(entry_id)
        except RuntimeError:
            return False
        self.live -= 1
        self.dirty = True
        return True

    def nearest(self, vectors: np.ndarray) -> list[tuple[int, float] | None]:
        """The nearest live entry of each row of `vectors: [n, dim]` as (entry_id, cosine),
        None where there is none; one call on all cores for a batch."""
        if self.live == 0:
            return [None] * len(vectors)
        threads = _CORES if len(vectors) >= _PARALLEL_ROWS else 1
        try:
            labels, distances = self.index.knn_query(vectors, k=1, num_threads=threads)
        except RuntimeError:  # deleted neighbours starved some row: one at a time
            return [next(iter(self.search(row, 1)), None) for row in vectors]
        return [
            (int(label[0]), 1.0 - float(distance[0]))
            for label, distance in zip(labels, distances, strict=True)
        ]

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Up to `k` nearest live entries of `vector: [dim]` as (entry_id, cosine), best first."""
        k = min(k, self.live)
        while k > 0:
            try:
                labels, distances = self.index.knn_query(vector, k=k)
            except RuntimeError:
                # Many deleted neighbours can starve the search of k results: ask for fewer.
                k //= 2
                continue
            return [
                (int(label), 1.0 - float(distance))
                for label, distance in zip(labels[0], distances[0], strict=True)
            ]
        return []

    def save(self, path: Path) -> str:
        """Write the index to `path` and return the file's SHA-256."""
        self.index.save_index(str(path))
        self.dirty = False
        return file_digest(path)

    @classmethod
    def load(
        cls, path: Path, digest: str, dim: int, m: int, ef_construction: int, ef: int, live: int
    ) -> PartitionIndex | None:
        """Load a saved index if its checksum matches; None when missing or corrupt."""
        if not path.is_file() or file_digest(path) != digest:
            return None
        part = cls.__new__(cls)
        part.dim, part.m, part.ef_construction, part.ef = dim, m, ef_construction, ef
        part.index = hnswlib.Index(space="ip", dim=dim)
        try:
            part.index.load_index(str(path), allow_replace_deleted=True)
        except (RuntimeError, ValueError):
            return None
        part.index.set_ef(ef)
        part.index.set_num_threads(1)
        part.live = live
        part.dirty = False
        return part


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _entry(info: Any) -> bool:
    """Whether a manifest entry names a file of this folder, its SHA-256 and a live count."""
    if not isinstance(info, dict) or not isinstance(info.get("file"), str):
        return False
    name = info["file"]
    plain_name = name == Path(name).name and name not in ("", ".", "..")
    return plain_name and isinstance(info.get("sha256"), str) and _count(info.get("live", 0))


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class IndexFiles:
    """The folder of persisted partition indexes and their manifest."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.manifest_path = folder / "manifest.json"

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest `{"seq", "partitions": {id: {"file", "sha256", "live"}}}` or None."""
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(manifest, dict) or not _count(manifest.get("seq", 0)):
            return None
        partitions = manifest.get("partitions")
        if not isinstance(partitions, dict) or not all(map(_entry, partitions.values())):
            return None
        return manifest

    def save(self, seq: int, indexes: dict[int, PartitionIndex]) -> None:
        """Persist every dirty index, then the manifest for `seq`; remove superseded files."""
        old = self.read_manifest() or {"partitions": {}}
        entries: dict[str, Any] = {}
        for partition_id, part in indexes.items():
            previous = old["partitions"].get(str(partition_id))
            if previous and not part.dirty and (self.folder / previous["file"]).is_file():
                entries[str(partition_id)] = {**previous, "live": part.live}
                continue
            name = f"p{partition_id}-{seq}.bin"
            digest = part.save(self.folder / name)
            entries[str(partition_id)] = {"file": name, "sha256": digest, "live": part.live}
        tmp = self.manifest_path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump({"seq": seq, "partitions": entries}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.manifest_path)
        keep = {entry["file"] for entry in entries.values()} | {self.manifest_path.name}
        for path in self.folder.iterdir():
            if path.name not in keep:
                path.unlink(missing_ok=True)
