"""Semantic cache benchmark: quality on QQP pairs, lookup latency at scale, restart, HTTP hit path.

    python benchmarks/bench_semantic_cache.py [--sizes 10000,100000] [--skip-quality]
        [--skip-http] [--emb-cache /tmp/qqp.npz]

Quality: each QQP pair (a, b) stores `a` and looks up `b`; a hit on a `same` pair is a true hit,
on any other pair a false hit. Uniform threshold vs our policy (classifier + per-category
thresholds + guard), swept by shifting every category threshold. Prints tables and writes
benchmarks/results/semantic_cache.json. Not a test: nothing here gates CI.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.categories import CategoryClassifier, PolicyTable
from ragkv.cache.semantic.guard import guard_conflict
from ragkv.cache.semantic.partitions import PartitionKey
from ragkv.cache.semantic.types import CacheWrite
from ragkv.retrieval.embedder import Embedder
from ragkv.settings import EmbeddingSettings, SemanticCacheSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qqp_pairs_dev.jsonl.gz"
RESULTS = Path(__file__).resolve().parent / "results" / "semantic_cache.json"
UNIFORM = [0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96]
OFFSETS = [-0.08, -0.05, -0.03, -0.02, 0.0, 0.02, 0.04]


def quality(emb_cache: Path | None) -> dict:
    """Hit rate on same pairs and false-hit rate on the others, uniform vs policy+guard."""
    with gzip.open(DATA, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    embedder = Embedder(EmbeddingSettings())
    if emb_cache is not None and emb_cache.is_file():
        saved = np.load(emb_cache)
        a_vecs, b_vecs = saved["a"], saved["b"]
    else:
        a_vecs = embedder.embed([r["a"] for r in rows])
        b_vecs = embedder.embed([r["b"] for r in rows])
        if emb_cache is not None:
            np.savez(emb_cache, a=a_vecs, b=b_vecs)
    same = np.array([r["same"] for r in rows])
    cosine = (a_vecs * b_vecs).sum(axis=1)
    settings = SemanticCacheSettings()
    table = PolicyTable(settings.categories, settings.default_category)
    classifier = CategoryClassifier(
        settings.classifier_examples, table, settings.classifier_min_similarity, embedder.embed
    )
    classifier.classify(rows[0]["a"], a_vecs[0])  # embeds the examples once
    started = time.perf_counter()
    cat_a = [classifier.classify(r["a"], v) for r, v in zip(rows, a_vecs, strict=True)]
    cat_b = [classifier.classify(r["b"], v) for r, v in zip(rows, b_vecs, strict=True)]
    classify_us = (time.perf_counter() - started) / (2 * len(rows)) * 1e6
    guard_ok = np.array([guard_conflict(r["b"], r["a"]) is None for r in rows])
    policies = table.all()
    thresholds = np.array([policies[c].threshold for c in cat_b])
    usable = np.array(
        [ca == cb and policies[cb].cacheable for ca, cb in zip(cat_a, cat_b, strict=True)]
    )
    guarded = np.array([policies[c].guard for c in cat_b])

    def rates(hit: np.ndarray) -> dict:
        return {"hit_rate": float(hit[same].mean()), "false_hit_rate": float(hit[~same].mean())}

    uniform = [{"threshold": t, **rates(cosine >= t)} for t in UNIFORM]
    uniform_guard = [{"threshold": t, **rates((cosine >= t) & guard_ok)} for t in UNIFORM]
    policy = []
    for offset in OFFSETS:
        hit = usable & (cosine >= thresholds + offset) & (guard_ok | ~guarded)
        policy.append({"offset": offset, **rates(hit)})
    return {
        "pairs": len(rows),
        "same_fraction": float(same.mean()),
        "classify_us_per_query": classify_us,
        "categories": {c: cat_b.count(c) for c in sorted(set(cat_b))},
        "uniform": uniform,
        "uniform_with_guard": uniform_guard,
        "policy": policy,
        "default": next(p for p in policy if p["offset"] == 0.0),
    }


def rss_bytes() -> int:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def scale(size: int, dim: int = 384, queries: int = 2000) -> dict:
    """Insert `size` random vectors, time lookups (no embedding), restart."""
    folder = Path(tempfile.mkdtemp(prefix="ragkv-bench-"))
    rng = np.random.default_rng(0)
    settings = SemanticCacheSettings(index_save_every_writes=10**9)
    policy = settings.categories["general"].model_copy(
        update={"max_entries": size + 1, "max_bytes": 1 << 40, "ttl_s": None}
    )
    settings = settings.model_copy(update={"categories": {**settings.categories,
                                                          "general": policy}})  # fmt: skip
    cache = SemanticCache(settings, folder)
    rss_before = rss_bytes()
    started = time.perf_counter()
    batch = 2000
    for start in range(0, size, batch):
        vectors = rng.standard_normal((min(batch, size - start), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        writes = [CacheWrite(f"q{start + i}", f"a{start + i}", v, "general")
                  for i, v in enumerate(vectors)]  # fmt: skip
        cache.store_many("t", "m", "none", writes)
    insert_s = time.perf_counter() - started
    memory = (rss_bytes() - rss_before) / size
    stored = cache.store.vectors(list(range(1, queries + 1)))
    latencies: dict[str, list[float]] = {"hit": [], "miss": [], "raw_hit": [], "raw_miss": []}
    # The baseline in the same run: raw hnswlib on the same index, one query, k=1.
    raw = cache.partitions.get(PartitionKey("t", "m", "none", "general")).index.index
    found = 0
    for entry_id, vector in stored.items():
        noisy = vector + rng.standard_normal(dim).astype(np.float32) * 0.01
        for kind, query in (("hit", noisy), ("miss", rng.standard_normal(dim).astype(np.float32))):
            t0 = time.perf_counter()
            result = cache.lookup("t", "m", "none", f"q{entry_id - 1}", query, "general")
            latencies[kind].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            raw.knn_query(query, k=1)
            latencies[f"raw_{kind}"].append((time.perf_counter() - t0) * 1000)
            if kind == "hit":
                found += result.hit is not None and result.hit.entry_id == entry_id
    t0 = time.perf_counter()
    cache.close()
    save_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reopened = SemanticCache(settings, folder)
    restart_s = time.perf_counter() - t0
    report = reopened.start_report._asdict()
    reopened.close()
    shutil.rmtree(folder, ignore_errors=True)
    out = {"entries": size, "insert_per_s": size / insert_s, "bytes_per_entry_rss": memory,
           "save_s": save_s, "restart_s": restart_s, "restart": report,
           "near_duplicate_recall": found / max(1, len(stored))}  # fmt: skip
    for kind, values in latencies.items():
        out[f"{kind}_p50_ms"] = float(np.percentile(values, 50))
        out[f"{kind}_p99_ms"] = float(np.percentile(values, 99))
    return out


def http_hit_path(requests: int = 200) -> dict:
    """End-to-end `/v1/cache/lookup` hit over HTTP, embedding included (p50/p99 ms)."""
    import httpx
    from live import start_server

    from ragkv.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="ragkv-bench-http-"))
    url, stop = start_server(Settings.load(data_dir=str(folder)))
    with httpx.Client(base_url=url, timeout=60) as client:
        entry = {"query": "What is the capital of France?", "response": "Paris."}
        client.post("/v1/cache/entries", json={"entries": [entry]}).raise_for_status()
        body = {"query": "What's the capital city of France?"}
        for _ in range(10):
            client.post("/v1/cache/lookup", json=body)
        latencies = []
        for _ in range(requests):
            t0 = time.perf_counter()
            answer = client.post("/v1/cache/lookup", json=body).json()
            latencies.append((time.perf_counter() - t0) * 1000)
            if not answer["hit"]:
                raise RuntimeError("expected a hit")
    stop()
    shutil.rmtree(folder, ignore_errors=True)
    return {"requests": requests, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99))}  # fmt: skip


def main() -> None:
    """Run the selected parts, print tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,100000", help="comma list; e.g. 1000000")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--emb-cache", type=Path, default=None, help="npz to reuse embeddings")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if not args.skip_quality:
        q = results["quality"] = quality(args.emb_cache)
        print(f"QQP pairs: {q['pairs']} (same {q['same_fraction']:.1%}), classify "
              f"{q['classify_us_per_query']:.0f} us/query")  # fmt: skip
        print(f"categories of the looked-up questions: {q['categories']}")
        print(f"{'uniform t':>10} {'hit':>7} {'false':>7} | {'+guard hit':>10} {'false':>7}")
        for u, g in zip(q["uniform"], q["uniform_with_guard"], strict=True):
            print(f"{u['threshold']:>10.2f} {u['hit_rate']:>7.1%} {u['false_hit_rate']:>7.1%} | "
                  f"{g['hit_rate']:>10.1%} {g['false_hit_rate']:>7.1%}")  # fmt: skip
        print(f"{'policy offset':>13} {'hit':>7} {'false':>7}")
        for p in q["policy"]:
            print(f"{p['offset']:>+13.2f} {p['hit_rate']:>7.1%} {p['false_hit_rate']:>7.1%}")
    scale_results = results.setdefault("scale", {})
    for size in [int(s) for s in args.sizes.split(",") if s]:
        r = scale_results[str(size)] = scale(size)
        print(f"{size:>8} entries: insert {r['insert_per_s']:.0f}/s, hit p50/p99 "
              f"{r['hit_p50_ms']:.3f}/{r['hit_p99_ms']:.3f} ms, miss p50/p99 "
              f"{r['miss_p50_ms']:.3f}/{r['miss_p99_ms']:.3f} ms; raw hnswlib hit p50/p99 "
              f"{r['raw_hit_p50_ms']:.3f}/{r['raw_hit_p99_ms']:.3f} ms, p99 ratio "
              f"{r['hit_p99_ms'] / r['raw_hit_p99_ms']:.2f}x; "
              f"recall {r['near_duplicate_recall']:.3f}, "
              f"{r['bytes_per_entry_rss']:.0f} B/entry RSS, save {r['save_s']:.1f} s, "
              f"restart {r['restart_s']:.2f} s {r['restart']}")  # fmt: skip
    if not args.skip_http:
        h = results["http_hit"] = http_hit_path()
        print(f"HTTP hit path (embedding included): p50 {h['p50_ms']:.1f} ms, "
              f"p99 {h['p99_ms']:.1f} ms over {h['requests']} requests")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
