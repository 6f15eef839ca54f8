"""FAISS index: exactness and recall against numpy brute force, removal, persistence, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ragkv.retrieval.index import IndexFileError, SearchResult, VectorIndex

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


# float32 inner products of 384-d unit vectors differ by ~5e-7 between BLAS builds, CPUs and
# FAISS code paths; two neighbours closer than this may come back in either order.
SCORE_TOL = 1e-5


def clear_ranks(scores: np.ndarray) -> np.ndarray:
    """`[n, k]` mask of the ranks whose score is more than SCORE_TOL from both neighbours.

    `scores`: `[n, k + 1]` best first (the extra column decides whether rank k-1 is tied).
    """
    gaps = scores[:, :-1] - scores[:, 1:]  # [n, k]: gap to the next rank
    above = np.concatenate([np.full((len(scores), 1), np.inf), gaps[:, :-1]], axis=1)
    return (gaps > SCORE_TOL) & (above > SCORE_TOL)


def assert_exact_top_k(
    result: SearchResult, base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int
) -> None:
    """`result` is the exact top `k`, up to the order of neighbours tied within SCORE_TOL.

    Against a float64 brute force: the scores match rank by rank; every id is a real, distinct
    id whose own score is the one reported; ids match wherever the rank is not a near-tie.
    """
    true = queries.astype(np.float64) @ base.astype(np.float64).T
    order = np.argsort(-true, axis=1, kind="stable")[:, : k + 1]
    expected_scores = np.take_along_axis(true, order, axis=1)
    assert result.ids.shape == result.scores.shape == (len(queries), k)
    np.testing.assert_allclose(result.scores, expected_scores[:, :k], rtol=0, atol=SCORE_TOL)
    rows = np.argsort(ids)
    positions = rows[np.searchsorted(ids, result.ids, sorter=rows).clip(0, len(ids) - 1)]
    assert (ids[positions] == result.ids).all(), "an id that was never added"
    assert all(len(set(row)) == k for row in result.ids.tolist()), "an id returned twice"
    own = np.take_along_axis(true, positions, axis=1)
    np.testing.assert_allclose(result.scores, own, rtol=0, atol=SCORE_TOL)
    clear = clear_ranks(expected_scores)
    assert clear.mean() > 0.9  # the data is not all ties: the id check below has teeth
    np.testing.assert_array_equal(result.ids[clear], ids[order[:, :k]][clear])


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
    assert_exact_top_k(index.search(queries, 10), base, ids, queries, 10)


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
    assert_exact_top_k(index.search(queries, 5), base[:2000], ids[:2000], queries, 5)
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
    assert set(index.ids().tolist()) == set(ids.tolist())
    # Each re-added vector finds itself (cosine 1 against at most 0.83 for any other vector:
    # no near-tie, and no depending on an approximate index's recall for a hard query).
    again = index.search(base[positions], 1)
    np.testing.assert_array_equal(again.ids[:, 0], removed)
    np.testing.assert_allclose(again.scores[:, 0], 1.0, rtol=0, atol=SCORE_TOL)
    if factory == "Flat":  # exact: the queries' top 10 (their removed best 3 included) is back
        assert_exact_top_k(index.search(queries[:20], 10), base, ids, queries[:20], 10)


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
