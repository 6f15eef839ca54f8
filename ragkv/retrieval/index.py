"""A FAISS inner-product index keyed by int64 ids: thread-safe add/remove/search, checksummed files.

The index is a cache of the document store's vectors: when its file is missing, stale or
corrupt, the caller rebuilds it from the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np

log = logging.getLogger("ragkv.retrieval")

FORMAT_VERSION = 1
_TRAIN_SAMPLE_PER_LIST = 256
_COMPACT_FRACTION = 0.2
_SINGLE_THREAD_QUERIES = 16


class IndexFileError(Exception):
    """An index file is missing, corrupt or made with other settings; rebuild it."""


class SearchResult(NamedTuple):
    """`scores`, `ids`: `[num_queries, k]`, best first; missing slots have id -1, score -inf."""

    scores: np.ndarray
    ids: np.ndarray


class VectorIndex:
    """FAISS `IndexIDMap2` over the index `factory` builds (`Flat`, `HNSW32,Flat`, `IVF1024,Flat`).

    Vectors are float32 `[n, dim]`, compared by inner product (cosine for normalised vectors).
    An index that needs training (IVF) holds its vectors exactly (flat) until it has
    enough of them, then trains on them. Indexes that cannot remove vectors (HNSW) hide removed
    ids and compact themselves when a fifth of their vectors is hidden. All methods take a lock.
    """

    def __init__(
        self,
        dim: int,
        factory: str = "Flat",
        *,
        hnsw_ef_search: int = 128,
        ivf_nprobe: int = 32,
        use_gpu: bool = True,
    ) -> None:
        self.dim = dim
        self.factory = factory
        self.hnsw_ef_search = hnsw_ef_search
        self.ivf_nprobe = ivf_nprobe
        self.use_gpu = use_gpu and _num_gpus() > 0
        self._lock = threading.RLock()
        self._deleted: set[int] = set()
        target = self._build(factory)
        self._trained = target.is_trained
        self._index = target if self._trained else self._build("Flat")
        self._index = self._to_device(self._index)

    @property
    def num_vectors(self) -> int:
        """Live vectors (removed ones not counted)."""
        with self._lock:
            return int(self._index.ntotal) - len(self._deleted)

    @property
    def is_trained(self) -> bool:
        """False while an IVF index still holds its vectors flat, waiting for enough to train."""
        return self._trained

    def ids(self) -> np.ndarray:
        """All live ids, int64, unordered."""
        with self._lock:
            cpu = self._cpu(self._index)  # a local keeps a GPU copy alive while read
            ids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
            if self._deleted:
                ids = ids[~np.isin(ids, np.fromiter(self._deleted, dtype=np.int64))]
            return ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add `vectors` `[n, dim]` under `ids` `[n]` (ids must not be live already)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"expected vectors [n, {self.dim}] and n ids, got {vectors.shape}")
        if not len(ids):
            return
        with self._lock:
            if self._deleted and not self._deleted.isdisjoint(ids.tolist()):
                self._compact()  # an id coming back must not stay hidden
            self._index.add_with_ids(vectors, ids)
            if not self._trained and self._index.ntotal >= self._min_train_vectors():
                self._train()

    def remove(self, ids: np.ndarray) -> None:
        """Remove `ids` (unknown ids are ignored)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return
        with self._lock:
            try:
                self._index.remove_ids(ids)
            except RuntimeError:  # HNSW and GPU indexes cannot remove: hide the ids instead
                self._deleted.update(ids.tolist())
                if len(self._deleted) > _COMPACT_FRACTION * max(1, self._index.ntotal):
                    self._compact()

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """The `k` best ids per query `[num_queries, dim]` by inner product."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        with self._lock:
            fetch = min(k + len(self._deleted), int(self._index.ntotal))
            scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
            ids = np.full((len(queries), k), -1, dtype=np.int64)
            if fetch == 0:
                return SearchResult(scores, ids)
            # A few queries search fastest on one thread: OpenMP fan-out costs more than it
            # saves (10x slower on a busy 2-core machine). The setting is per calling thread.
            previous = faiss.omp_get_max_threads()
            if len(queries) <= _SINGLE_THREAD_QUERIES:
                faiss.omp_set_num_threads(1)
            try:
                found_scores, found_ids = self._index.search(queries, fetch)
            finally:
                faiss.omp_set_num_threads(previous)
            deleted = self._deleted
        for row in range(len(queries)):
            keep = found_ids[row] >= 0
            if deleted:
                keep &= ~np.isin(found_ids[row], np.fromiter(deleted, dtype=np.int64))
            row_ids, row_scores = found_ids[row][keep][:k], found_scores[row][keep][:k]
            ids[row, : len(row_ids)] = row_ids
            scores[row, : len(row_scores)] = row_scores
        return SearchResult(scores, ids)

    def tune(self, *, hnsw_ef_search: int | None = None, ivf_nprobe: int | None = None) -> None:
        """Change the search breadth (HNSW `efSearch`, IVF `nprobe`); others ignore it."""
        with self._lock:
            self.hnsw_ef_search = hnsw_ef_search or self.hnsw_ef_search
            self.ivf_nprobe = ivf_nprobe or self.ivf_nprobe
            self._set_search_parameters(self._index)

    def save(self, path: Path) -> None:
        """Write the index to `path` and a checksummed `path.json` beside it, atomically."""
        with self._lock:
            data = faiss.serialize_index(self._cpu(self._index)).tobytes()
            meta = {
                "format_version": FORMAT_VERSION,
                "sha256": hashlib.sha256(data).hexdigest(),
                "factory": self.factory,
                "dim": self.dim,
                "trained": self._trained,
                "deleted": sorted(self._deleted),
            }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, data)
        _write_atomic(_meta_path(path), json.dumps(meta).encode())

    @classmethod
    def load(cls, path: Path, dim: int, factory: str, **options: object) -> VectorIndex:
        """Read an index written by `save`; `IndexFileError` if missing, corrupt or mismatched."""
        try:
            meta = json.loads(_meta_path(path).read_bytes())
            data = path.read_bytes()
        except (OSError, ValueError, RecursionError) as exc:
            raise IndexFileError(f"cannot read index '{path}': {exc}") from exc
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(f"index '{path}' has an unknown format")
        if meta.get("sha256") != hashlib.sha256(data).hexdigest():
            raise IndexFileError(f"index '{path}' fails its checksum")
        if meta.get("factory") != factory or meta.get("dim") != dim:
            raise IndexFileError(
                f"index '{path}' was built as {meta.get('factory')!r}/{meta.get('dim')}d, "
                f"settings ask for {factory!r}/{dim}d"
            )
        try:
            loaded = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise IndexFileError(f"index '{path}' does not parse: {exc}") from exc
        deleted = meta.get("deleted", [])
        if not isinstance(deleted, list) or not all(type(i) is int for i in deleted):
            raise IndexFileError(f"index '{path}' lists deleted ids that are not integers")
        index = cls(dim, factory, **options)  # type: ignore[arg-type]
        index._trained = bool(meta.get("trained", True))
        index._deleted = set(deleted)
        index._index = index._to_device(loaded)
        index._set_search_parameters(index._index)
        return index

    @staticmethod
    def remove_files(path: Path) -> None:
        """Delete the index file and its checksum file, if present."""
        for each in (path, _meta_path(path)):
            each.unlink(missing_ok=True)

    def _build(self, factory: str) -> faiss.Index:
        index = faiss.index_factory(self.dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        self._set_search_parameters(index)
        return index

    def _set_search_parameters(self, index: faiss.Index) -> None:
        space = faiss.ParameterSpace()
        inner = faiss.downcast_index(self._cpu(index).index)
        if isinstance(inner, faiss.IndexHNSW):
            space.set_index_parameter(index, "efSearch", self.hnsw_ef_search)
        if faiss.try_extract_index_ivf(inner) is not None:
            space.set_index_parameter(index, "nprobe", self.ivf_nprobe)

    def _min_train_vectors(self) -> int:
        target = self._build(self.factory)  # keep a reference: .index is owned by it
        ivf = faiss.try_extract_index_ivf(faiss.downcast_index(target.index))
        return 39 * int(ivf.nlist) if ivf is not None else 39 * 256

    def _all_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        cpu = self._cpu(self._index)
        ids = faiss.vector_to_array(cpu.id_map).astype(np.int64)
        vectors = cpu.index.reconstruct_n(0, cpu.ntotal) if len(ids) else np.zeros((0, self.dim))
        if self._deleted:
            keep = ~np.isin(ids, np.fromiter(self._deleted, dtype=np.int64))
            ids, vectors = ids[keep], vectors[keep]
        return ids, np.ascontiguousarray(vectors, dtype=np.float32)

    def _train(self) -> None:
        ids, vectors = self._all_vectors()
        target = self._build(self.factory)
        ivf = faiss.try_extract_index_ivf(faiss.downcast_index(target.index))
        sample_size = _TRAIN_SAMPLE_PER_LIST * (ivf.nlist if ivf is not None else 256)
        rng = np.random.default_rng(0)
        sample = vectors[rng.permutation(len(vectors))[:sample_size]]
        log.info("training %s index on %d of %d vectors", self.factory, len(sample), len(ids))
        target.train(sample)
        target.add_with_ids(vectors, ids)
        self._index = self._to_device(target)
        self._trained = True

    def _compact(self) -> None:
        ids, vectors = self._all_vectors()
        rebuilt = self._build(self.factory if self._trained else "Flat")
        if not rebuilt.is_trained:
            rebuilt.train(vectors)
        rebuilt.add_with_ids(vectors, ids)
        self._deleted = set()
        self._index = self._to_device(rebuilt)

    def _to_device(self, index: faiss.Index) -> faiss.Index:
        if not self.use_gpu:
            return index
        try:
            return faiss.index_cpu_to_all_gpus(index)
        except (RuntimeError, AttributeError) as exc:
            log.warning("keeping the %s index on the CPU: %s", self.factory, exc)
            return index

    def _cpu(self, index: faiss.Index) -> faiss.Index:
        if self.use_gpu and hasattr(faiss, "index_gpu_to_cpu"):
            with contextlib.suppress(RuntimeError, AttributeError):
                index = faiss.index_gpu_to_cpu(index)
        return faiss.downcast_index(index) if not hasattr(index, "id_map") else index


def _num_gpus() -> int:
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
