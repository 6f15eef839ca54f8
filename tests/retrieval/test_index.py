"""FAISS index: exactness and recall against numpy brute force, removal, persistence, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ragkv.retrieval.index import IndexFileError, VectorIndex

DIM = 384


def clustered_vectors(n: int, seed: int, num_clusters: int = 100) -> np.ndarray:
    """Unit vectors around random centres, shaped like sentence embeddings (not uniform).

    The centres are the same for every seed, so base and query vectors share clusters.
    """
    centres = np.random.default_rng(0).standard_normal((num_clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centres[rng.integers(0, num_clusters, n)] + 0.6 * rng.standard_normal((n, DIM))
    points = points.astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def brute_force(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ base.T
    return ids[np.argsort(-scores, axis=1)[:, :k]]


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = clustered_vectors(6000, seed=1)
    ids = np.arange(6000, dtype=np.int64) * 7 + 3  # ids unrelated to positions
    queries = clustered_vectors(200, seed=2)
    return base, ids, queries


def test_flat_is_exact(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, ids, queries = data
    index = VectorIndex(DIM, "Flat")
    index.add(ids, base)
    result = index.search(queries, 10)
    np.testing.assert_array_equal(result.ids, brute_force(base, ids, queries, 10))
    expected = np.sort(queries @ base.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "options"),
    [("HNSW32,Flat", {"hnsw_ef_search": 128}), ("IVF64,Flat", {"ivf_nprobe": 16})],
)
def test_approximate_recall_at_10(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], factory: str, options: dict[str, int]
) -> None:
    base, ids, queries = data
    index = VectorIndex(DIM, factory, **options)  # type: ignore[arg-type]
    index.add(ids, base)
    assert index.is_trained
    recall = recall_at(index.search(queries, 10).ids, brute_force(base, ids, queries, 10))
    assert recall >= 0.95, f"{factory}: recall@10 {recall:.3f}"


def test_ivf_is_exact_until_it_has_enough_vectors_to_train(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    base, ids, queries = data
    index = VectorIndex(DIM, "IVF64,Flat", ivf_nprobe=1)
    index.add(ids[:2000], base[:2000])  # under 39 x 64
    assert not index.is_trained
    np.testing.assert_array_equal(
        index.search(queries, 5).ids, brute_force(base[:2000], ids[:2000], queries, 5)
    )
    index.add(ids[2000:], base[2000:])
    assert index.is_trained and index.num_vectors == len(ids)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat", "IVF64,Flat"])
def test_removed_ids_never_come_back_until_re_added(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], factory: str
) -> None:
    base, ids, queries = data
    index = VectorIndex(DIM, factory)
    index.add(ids, base)
    top = index.search(queries[:20], 10).ids
    removed = np.unique(top[:, :3])
    index.remove(removed)
    assert index.num_vectors == len(ids) - len(removed)
    assert not set(index.search(queries[:20], 10).ids.ravel()) & set(removed.tolist())
    assert not set(index.ids().tolist()) & set(removed.tolist())
    positions = np.searchsorted(ids, removed)
    index.add(removed, base[positions])
    assert index.num_vectors == len(ids)
    np.testing.assert_array_equal(index.search(queries[:20], 1).ids[:, 0], top[:, 0])


def test_search_on_empty_and_small_index() -> None:
    index = VectorIndex(DIM, "Flat")
    empty = index.search(np.ones((2, DIM), dtype=np.float32), 3)
    assert (empty.ids == -1).all() and np.isneginf(empty.scores).all()
    index.add(np.array([5]), clustered_vectors(1, seed=3))
    one = index.search(clustered_vectors(1, seed=4), 3)
    assert one.ids.tolist() == [[5, -1, -1]]


@pytest.mark.parametrize("factory", ["Flat", "HNSW32,Flat"])
def test_save_load_round_trip(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, np.ndarray], factory: str
) -> None:
    base, ids, queries = data
    index = VectorIndex(DIM, factory)
    index.add(ids[:1000], base[:1000])
    index.remove(ids[:10])
    index.save(tmp_path / "c.faiss")
    loaded = VectorIndex.load(tmp_path / "c.faiss", DIM, factory)
    assert loaded.num_vectors == 990
    before, after = index.search(queries, 10), loaded.search(queries, 10)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_allclose(before.scores, after.scores)


def test_corrupt_missing_or_mismatched_file_is_refused(
    tmp_path: Path, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    base, ids, _ = data
    path = tmp_path / "c.faiss"
    with pytest.raises(IndexFileError):
        VectorIndex.load(path, DIM, "Flat")
    index = VectorIndex(DIM, "Flat")
    index.add(ids[:100], base[:100])
    index.save(path)
    with pytest.raises(IndexFileError, match="built as"):
        VectorIndex.load(path, DIM, "HNSW32,Flat")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(IndexFileError, match="checksum"):
        VectorIndex.load(path, DIM, "Flat")


def test_concurrent_add_remove_and_search(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    base, ids, queries = data
    index = VectorIndex(DIM, "HNSW32,Flat")
    index.add(ids[:500], base[:500])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for start in range(500, 3000, 100):
                index.add(ids[start : start + 100], base[start : start + 100])
                index.remove(ids[start : start + 10])
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(40):
                result = index.search(queries[:8], 10)
                assert (result.ids >= 0).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    expected = set(ids[:3000].tolist()) - {
        int(i) for s in range(500, 3000, 100) for i in ids[s : s + 10]
    }
    assert set(index.ids().tolist()) == expected
