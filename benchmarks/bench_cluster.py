"""Scale-out routing on Ray Serve: the same mixed workload on 2 engine replicas, (a) with Ray's
default router (power of two choices) and (b) with ragkv's cache-affinity router, each on a
fresh local Ray instance and data dir. Not a test: nothing is asserted; prints a table and
writes `results/cluster.json`.

Workload (fixed seed): 12 tenants with their own ~250-token system prompt asking questions,
and RAG requests over a few sets of inline documents, each set asked in shuffled orders (the
chunks are the same, the prefix is not). Each replica's KV pool holds about half the tenants'
prefixes: spreading every tenant over both replicas (what a load-only router does) thrashes
both caches, keeping each tenant on one replica fits. Reported per router: prompt tokens
reused (prefix plus chunk) as a share of prompt tokens, TTFT p50/p99 (streamed), and where
requests went.

On one 2-core machine both replicas share the cores: throughput scaling is not measurable
here (see docs/scale-out.md for a multi-GPU cluster).

    python benchmarks/bench_cluster.py                 # both routers
    python benchmarks/bench_cluster.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from machine import machine

RESULTS = Path(__file__).parent / "results" / "cluster.json"
TOPICS = ("lighthouses", "glaciers", "caravans", "coral reefs", "volcanoes", "orchards")
BIRDS = (
    ("kestrel", "The kestrel hovers over fields and drops onto voles and beetles. "),
    ("heron", "The grey heron stands still in shallow water and spears passing fish. "),
    ("swift", "The common swift eats, drinks and sleeps on the wing for months. "),
    ("owl", "The barn owl hunts by sound alone and swallows its prey whole. "),
    ("wren", "The wren is tiny and loud, and the male builds several nests. "),
    ("gannet", "The gannet dives into the sea from thirty metres at great speed. "),
    ("puffin", "The puffin carries a row of small fish crosswise in its beak. "),
    ("crane", "The common crane dances in spring and migrates in great skeins. "),
    ("rook", "The rook nests in noisy colonies at the tops of tall trees. "),
)


def workload(seed: int, tenants: int, questions: int, doc_sets: int, orders: int) -> list[dict]:
    """Requests in a fixed random order: (tenant key, body)."""
    rng = random.Random(seed)
    items = []
    for t in range(tenants):
        system = f"You guide visitors through everything about {TOPICS[t % len(TOPICS)]}. " * 24
        for q in range(questions):
            body = {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"Question {q}: tell me one thing."},
                ]
            }
            items.append({"key": f"sk-bench-{t}", "kind": "chat", "body": body})  # fmt: skip
    for d in range(doc_sets):
        docs = [{"id": f"{name}-{d}", "text": f"Set {d}. {text * 5}"}
                for name, text in BIRDS[3 * (d % 3): 3 * (d % 3) + 3]]  # fmt: skip
        for _ in range(orders):
            rng.shuffle(docs)
            body = {"messages": [{"role": "user", "content": "Which bird is the most unusual?"}],
                    "documents": list(docs)}  # fmt: skip
            items.append({"key": f"sk-bench-{d % tenants}", "kind": "rag", "body": body})
    rng.shuffle(items)
    return items


def run_router(router: str, items: list[dict], args) -> dict[str, Any]:
    """Start a 2-replica cluster with `router`, play the workload, stop it."""
    import ray
    from ray import serve

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from conftest import free_port

    from ragkv.cluster.app import run_cluster
    from ragkv.settings import Settings

    keys = {f"sk-bench-{t}": f"bench-{t}" for t in range(args.tenants)}
    settings = Settings.load(
        data_dir=tempfile.mkdtemp(prefix="ragkv-cluster-bench-"),
        auth={"api_keys": keys, "admin_key": "sk-bench-admin"},
        server={"port": free_port(), "demo_documents": 0, "access_log": False},
        engine={"kv_cache_mb": args.kv_cache_mb},
        model={"gemm_layout": "blocked"},
        cluster={"replicas": 2, "engine_num_cpus": 0.5, "stats_period_s": 0.5, "router": router},
    )
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    try:
        run_cluster(settings, "127.0.0.1", blocking=False)
        url = f"http://127.0.0.1:{settings.server.port}"
        time.sleep(5)  # the gateway's first poll of the replicas
        rows = [one(url, item, args.max_tokens) for item in items]
        admin = {"Authorization": "Bearer sk-bench-admin"}
        stats = httpx.get(f"{url}/admin/cache/stats", headers=admin, timeout=120).json()
        chunk = stats["chunk"]
    finally:
        serve.shutdown()
        ray.shutdown()
    return summarise(router, rows, chunk)


def one(url: str, item: dict, max_tokens: int) -> dict[str, Any]:
    """Stream one request; TTFT, usage and the `ragkv` report from the last chunks."""
    body = {"model": "default", "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}, "ragkv": {"semantic_cache": False},
            **item["body"]}  # fmt: skip
    started, ttft, usage, report = time.perf_counter(), None, {}, {}
    headers = {"Authorization": f"Bearer {item['key']}"}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers,
                      timeout=600) as response:  # fmt: skip
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if (
                ttft is None
                and chunk.get("choices")
                and chunk["choices"][0]["delta"].get("content")
            ):
                ttft = time.perf_counter() - started
            usage = chunk.get("usage") or usage
            report = chunk.get("ragkv") or report
    prompt = usage.get("prompt_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"kind": item["kind"], "ttft_s": ttft, "prompt_tokens": prompt,
            "prefix_reused": cached, "chunk_reused": report.get("chunk_tokens_reused", 0),
            "replica": report.get("replica")}  # fmt: skip


def summarise(router: str, rows: list[dict], chunk: dict[str, Any]) -> dict[str, Any]:
    """Reuse share, TTFT percentiles and the spread over replicas. Reused = prefix tokens
    served from the radix tree + chunk tokens whose KV a replica already held (fetched, not
    computed: the replicas' chunk_tokens - chunk_tokens_computed)."""
    prompt = sum(r["prompt_tokens"] for r in rows)
    prefix = sum(r["prefix_reused"] for r in rows)
    fetched = chunk["chunk_tokens"] - chunk["chunk_tokens_computed"]
    reused = prefix + fetched
    ttfts = sorted(r["ttft_s"] for r in rows if r["ttft_s"] is not None)

    def pct(q: float) -> float | None:
        return round(ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))], 3) if ttfts else None

    return {
        "router": router,
        "requests": len(rows),
        "prompt_tokens": prompt,
        "tokens_reused": reused,
        "reuse_share": round(reused / prompt, 4) if prompt else 0.0,
        "prefix_reused": prefix,
        "chunk_tokens_fetched": fetched,
        "chunk_tokens_computed": chunk["chunk_tokens_computed"],
        "chunk_tokens_blended_not_recomputed": sum(r["chunk_reused"] for r in rows),
        "ttft_p50_s": pct(0.5),
        "ttft_p99_s": pct(0.99),
        "by_replica": dict(Counter(r["replica"] for r in rows)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tenants", type=int, default=12)
    p.add_argument("--questions", type=int, default=3)
    p.add_argument("--doc-sets", type=int, default=3)
    p.add_argument("--orders", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--kv-cache-mb", type=int, default=64,
                   help="per replica: 64 MB holds about half the tenants' prefixes")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="2 tenants x 2, 1 doc set x 2")
    args = p.parse_args()
    if args.quick:
        args.tenants, args.questions, args.doc_sets, args.orders = 2, 2, 1, 2
    items = workload(args.seed, args.tenants, args.questions, args.doc_sets, args.orders)
    results = [run_router(router, items, args) for router in ("pow2", "affinity")]
    base, ours = results
    ratio = ours["tokens_reused"] / base["tokens_reused"] if base["tokens_reused"] else None
    print(f"{'router':10} {'reuse share':>12} {'reused':>8} {'prompt':>8} {'TTFT p50':>9} "
          f"{'p99':>7}  by replica")  # fmt: skip
    for r in results:
        print(f"{r['router']:10} {r['reuse_share']:12.3f} {r['tokens_reused']:8d} "
              f"{r['prompt_tokens']:8d} {r['ttft_p50_s']:9.3f} {r['ttft_p99_s']:7.3f}  "
              f"{r['by_replica']}")  # fmt: skip
    print(f"tokens reused, affinity / pow2: {ratio:.2f}x (target >= 1.8x)" if ratio else
          "pow2 reused nothing")  # fmt: skip
    out = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
           "args": vars(args), "results": results, "reuse_ratio": ratio}  # fmt: skip
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
