"""Retrieval benchmark: ingest of the Wikipedia sample, and FAISS search at 100K and 1M vectors.

Prints tables and writes benchmarks/results/retrieval.json. Not a test: numbers depend on the
machine and its load.

    python benchmarks/bench_retrieval.py                 # everything
    python benchmarks/bench_retrieval.py --sizes 100000  # skip the 1M run
    python benchmarks/bench_retrieval.py --skip-ingest
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

DIM = 384
RESULTS = Path(__file__).parent / "results" / "retrieval.json"


def bench_ingest(batch_size: int) -> dict[str, Any]:
    """Ingest the 10,033 Wikipedia leads into a fresh collection (SQLite, Flat index)."""
    from ragkv.assets import generation_model_path
    from ragkv.retrieval.embedder import Embedder
    from ragkv.retrieval.loaders import wikipedia_sample
    from ragkv.retrieval.service import Retriever
    from ragkv.retrieval.tokenizer import load_model_tokenizer
    from ragkv.settings import Settings

    settings = Settings.load(data_dir=tempfile.mkdtemp(prefix="ragkv-bench-"))
    tokenizer = load_model_tokenizer(generation_model_path())
    embedder = Embedder(settings.embedding)
    embedder.embed(["warm up"])
    retriever = Retriever(settings.retrieval, settings.data_dir, embedder, tokenizer)
    retriever.open()
    retriever.create_collection("bench", "wikipedia")
    documents = wikipedia_sample()
    totals = {"tokenize_s": 0.0, "embed_s": 0.0, "index_s": 0.0, "store_s": 0.0}
    num_chunks = 0
    started = time.perf_counter()
    for start in range(0, len(documents), batch_size):
        stats = retriever.add_documents("bench", "wikipedia", documents[start : start + batch_size])
        num_chunks += stats.chunks
        for key in totals:
            totals[key] += getattr(stats, key)
    total_s = time.perf_counter() - started
    retriever.close()
    return {
        "documents": len(documents),
        "chunks": num_chunks,
        "total_s": round(total_s, 2),
        "chunks_per_s": round(num_chunks / total_s, 1),
        **{key: round(value, 2) for key, value in totals.items()},
    }


def clustered(n: int, seed: int, num_clusters: int = 1000) -> np.ndarray:
    """Unit vectors around shared random centres (embedding-like; see the note in main)."""
    centres = np.random.default_rng(0).standard_normal((num_clusters, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        size = min(100_000, n - start)
        block = centres[rng.integers(0, num_clusters, size)]
        block += 0.6 * rng.standard_normal((size, DIM), dtype=np.float32)
        out[start : start + size] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by numpy brute force."""
    best = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 100):
        scores = queries[start : start + 100] @ base.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        best[start : start + 100] = np.take_along_axis(top, order, axis=1)
    return best


def measure(index: Any, queries: np.ndarray, exact: np.ndarray, k: int = 10) -> dict[str, float]:
    """One query at a time, as a server sends them: p50/p99 latency and recall@k."""
    latencies, found = [], []
    for query in queries:
        started = time.perf_counter()
        result = index.search(query[None, :], k)
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(result.ids[0])
    recall = np.mean(
        [len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact, strict=True)]
    )
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "recall_at_10": round(float(recall), 4),
    }


def bench_search(n: int, num_queries: int, console: Console) -> list[dict[str, Any]]:
    """Flat, HNSW and IVF over `n` vectors through ragkv's VectorIndex."""
    from ragkv.retrieval.index import VectorIndex

    base = clustered(n, seed=1)
    queries = clustered(num_queries, seed=2)
    ids = np.arange(n, dtype=np.int64)
    exact = exact_top_k(base, queries, 10)
    nlist = 1024 if n >= 500_000 else 256
    configs: list[tuple[str, dict[str, int], list[dict[str, int]]]] = [
        ("Flat", {}, [{}]),
        ("HNSW32,Flat", {}, [{"hnsw_ef_search": ef} for ef in (32, 64, 128)]),
        (f"IVF{nlist},Flat", {}, [{"ivf_nprobe": p} for p in (8, 16, 32)]),
    ]
    rows = []
    for factory, _, variants in configs:
        index = VectorIndex(DIM, factory, use_gpu=False)
        started = time.perf_counter()
        for start in range(0, n, 50_000):
            index.add(ids[start : start + 50_000], base[start : start + 50_000])
        build_s = time.perf_counter() - started
        console.log(f"{n:,} vectors: built {factory} in {build_s:.1f} s")
        for variant in variants:
            index.tune(**variant)
            subset = queries if factory != "Flat" else queries[:200]
            stats = measure(index, subset, exact[: len(subset)])
            rows.append(
                {"vectors": n, "index": factory, **variant, "build_s": round(build_s, 1), **stats}
            )
            console.log(rows[-1])
        del index
    return rows


def main() -> None:
    """Run the benchmarks, print tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=256, help="documents per ingest call")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    console = Console()
    import faiss

    results: dict[str, Any] = {
        "machine": {
            "cpu_count": __import__("os").cpu_count(),
            "platform": platform.platform(),
            "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(),
        },
        "search_data": "clustered random unit vectors: 1000 shared Gaussian centres + N(0, 0.6^2) "
        "noise per dimension, 384-d; queries drawn the same way",
    }
    if not args.skip_ingest:
        console.log("ingesting the Wikipedia sample ...")
        results["ingest"] = bench_ingest(args.batch_size)
        table = Table(title="ingest: 10,033 Wikipedia leads (SQLite + Flat, MiniLM on CPU)")
        for key in results["ingest"]:
            table.add_column(key)
        table.add_row(*(str(v) for v in results["ingest"].values()))
        console.print(table)
    results["search"] = []
    for n in args.sizes:
        results["search"].extend(bench_search(n, args.queries, console))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2))
    table = Table(title="search, one query at a time, k=10")
    for column in ("vectors", "index", "param", "build_s", "p50_ms", "p99_ms", "recall@10"):
        table.add_column(column)
    for row in results["search"]:
        param = ", ".join(f"{k}={row[k]}" for k in ("hnsw_ef_search", "ivf_nprobe") if k in row)
        table.add_row(
            f"{row['vectors']:,}", row["index"], param or "-", str(row["build_s"]),
            str(row["p50_ms"]), str(row["p99_ms"]), str(row["recall_at_10"]),
        )  # fmt: skip
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    console.log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
