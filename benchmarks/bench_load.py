"""Load benchmark on a live `ragkv serve` (its own process, as deployed), each part against
its baseline in the same run. Not a test: nothing is asserted; prints tables and writes
`results/load.json` (and `results/load.png` when matplotlib is installed).

  stall  largest token gap of two running streams while a RAG request over 12 new documents
         (~3,000 prompt tokens) waits for its first token, vs the same text as a plain chunked
         prefill: ratio blend/plain (target <= 1.5)
  rag8   8 concurrent RAG requests over warmed chunk KV, TTFT full/auto (target >= 2.5)
  tiers  TTFT, chunk KV in CPU memory vs on disk only (a restart on the same data dir):
         disk/cpu (target <= 1.15)
  load   open-loop Poisson arrivals of a mixed workload at increasing rates
  soak   (--part soak only) a fixed rate: RSS, file handles, free KV pages at idle

    python benchmarks/bench_load.py                              # stall, rag8, tiers, load
    python benchmarks/bench_load.py --part soak --rate 0.5       # 10 minutes
    python benchmarks/bench_load.py --quick --part stall         # smoke (each part alone)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import httpx
from http_stream import start_serve
from load_client import (
    Outcome,
    cache_counts,
    client_for,
    diff,
    flush_prefix,
    idle_state,
    median,
    pct,
    sample_process,
    send,
    serve_at,
    stop_process,
    stream_into,
    wait_idle,
)
from load_workload import (
    DocPool,
    Mix,
    chat_body,
    plot,
    print_load_row,
    print_summary,
    rag_body,
    run_rate,
)
from machine import machine

RESULTS = Path(__file__).parent / "results" / "load.json"
PARTS = ("stall", "rag8", "tiers", "load")
PROBE_TOKENS = 4  # answer length where only the TTFT is measured (stall, rag8, tiers)
QUICK = {"stall_docs": 4, "stream_tokens": 300, "rag8_requests": 3, "rag8_pool": 6,
         "tier_requests": 2, "tier_docs": 2, "rates": "0.5", "duration_s": 15.0,
         "max_requests": 8, "max_tokens": 8, "cached_docs": 4, "settle_s": 1.0, "sample_s": 2.0,
         "request_timeout_s": 120.0}  # fmt: skip


@contextmanager
def server(args: argparse.Namespace):
    """A fresh live server (throwaway data dir), always stopped; yields (url, process, dir)."""
    url, process, data = start_serve(args.threads, server_env(args))
    try:
        yield url, process, data
    finally:
        stop_process(process)
        data.cleanup()


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """Settings every server of the run gets."""
    env = {"RAGKV_ENGINE__KV_CACHE_MB": str(args.kv_cache_mb)}
    if args.max_waiting is not None:  # a short queue: overload shows as 503s, not timeouts
        env["RAGKV_ENGINE__MAX_WAITING"] = str(args.max_waiting)
    return env


def require_ok(out: Outcome, what: str) -> Outcome:
    """A set-up request must succeed; otherwise the part cannot measure anything."""
    if out.result != "ok":
        raise RuntimeError(f"{what} failed: {out.result} {out.error}")
    return out


async def warm_paths(client: httpx.AsyncClient, docs: DocPool, timeout_s: float) -> None:
    """One plain chat and one RAG request over fresh documents: one-time costs (first
    forward, first blend) land here, not on a measured request."""
    body = chat_body([{"role": "user", "content": "Warm-up: say hello."}], 4)
    require_ok(await send(client, body, timeout_s), "warm-up chat")
    body = rag_body("Warm-up: what are these?", docs.take(2), 2)
    require_ok(await send(client, body, timeout_s), "warm-up RAG")


async def warm_chunks(client, docs: list[dict], per_request: int, timeout_s: float) -> None:
    """Compute and cache every document's chunk KV (RAG requests of one token), then drop
    the radix prefix cache so no later prompt gets those prompts' KV for free."""
    for start in range(0, len(docs), per_request):
        body = rag_body(f"Warm-up {start}: summarise.", docs[start : start + per_request], 1)
        require_ok(await send(client, body, timeout_s), "chunk warm-up")
    await flush_prefix(client)


# -- stall ----------------------------------------------------------------------------------


def largest_gap(arrivals: list[float], start: float, end: float) -> float | None:
    """Largest gap between consecutive tokens that overlaps [start, end]."""
    pairs = zip(arrivals, arrivals[1:], strict=False)
    return max((b - a for a, b in pairs if b > start and a < end), default=None)


async def stall_phase(client, args, label: str, body: dict) -> dict:
    """Two long streams run; `body` is sent; the streams' largest token gap until its first
    token, against their largest gap in the `baseline_s` before it was sent."""
    streams = [Outcome(kind="stream") for _ in range(2)]
    tasks = []
    for number, out in enumerate(streams):
        text = f"Stream {label}-{number}: tell a very long story about a lighthouse keeper."
        long = chat_body([{"role": "user", "content": text}], args.stream_tokens)
        task = stream_into(client, long | {"ignore_eos": True}, out, args.request_timeout_s)
        tasks.append(asyncio.create_task(task))
    try:
        while not all(len(out.arrivals) >= 5 for out in streams):
            if any(task.done() for task in tasks):
                raise RuntimeError(f"a stream ended early: {[o.result for o in streams]}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(args.baseline_s)
        sent = time.perf_counter()
        probe = require_ok(await send(client, body, args.request_timeout_s), label)
        first = probe.started + probe.ttft_s
        outlasted = all(out.arrivals[-1] > first for out in streams)
    finally:
        for task in tasks:
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
    gaps = [largest_gap(out.arrivals, sent, first) for out in streams]
    before = [largest_gap(out.arrivals, sent - args.baseline_s, sent) for out in streams]
    return {"largest_gap_s": max(g for g in gaps if g is not None), "ttft_s": probe.ttft_s,
            "baseline_gap_s": max(g for g in before if g is not None),
            "streams_outlasted": outlasted, "prompt_tokens": probe.usage.get("prompt_tokens"),
            "cached_tokens": (probe.usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "ragkv": probe.ragkv}  # fmt: skip


def plain_prompt(docs: list[dict], question: str) -> str:
    """The documents inline in one user message (a plain chat: chunked prefill, no blend);
    a unique first line, so no prompt of the run shares more than the template head."""
    body = "\n\n".join(f"[{n}]\n{doc['text']}" for n, doc in enumerate(docs, start=1))
    return f"Plain request {random.random():.9f}. Read these documents.\n\n{body}\n\n{question}"


async def part_stall(url: str, docs: DocPool, args) -> dict:
    """Token stall of running streams: blended RAG prefill vs plain chunked prefill."""
    async with client_for(url) as client:
        await warm_paths(client, docs, args.request_timeout_s)
        new = docs.take(args.stall_docs)
        question = f"Question: what links {new[0]['title']} and {new[-1]['title']}?"
        blend = await stall_phase(client, args, "rag", rag_body(question, new, PROBE_TOKENS))
        await wait_idle(client, 120)
        await flush_prefix(client)
        plain = chat_body([{"role": "user", "content": plain_prompt(new, question)}], PROBE_TOKENS)
        plain = await stall_phase(client, args, "plain", plain)
        await wait_idle(client, 120)
    return {"documents": len(new), "blend": blend, "plain": plain,
            "gap_ratio_blend_over_plain": blend["largest_gap_s"] / plain["largest_gap_s"],
            "target_ratio_max": 1.5}  # fmt: skip


# -- rag8 ------------------------------------------------------------------------------------


def orderings(pool: list[dict], count: int, low: int, high: int, seed: int) -> list[list[dict]]:
    """`count` draws of `low`..`high` pooled documents in new orders, each led by a different
    document (so no two requests of a batch share a prompt prefix beyond the template)."""
    rng = random.Random(seed)
    firsts = rng.sample(range(len(pool)), min(count, len(pool)))
    cases = []
    for first in firsts:
        others = rng.sample([i for i in range(len(pool)) if i != first], rng.randint(low, high) - 1)
        cases.append([pool[first]] + [pool[i] for i in others])
    return cases


async def rag_batch(client, cases: list[list[dict]], kv_reuse: str, args) -> dict:
    """The cases sent at once with `kv_reuse`; TTFT median and p90."""
    bodies = [
        rag_body(f"Question {n}: what about {docs[-1]['title']}?", docs, PROBE_TOKENS, kv_reuse)
        for n, docs in enumerate(cases)
    ]
    outs = await asyncio.gather(*(send(client, b, args.request_timeout_s) for b in bodies))
    ttfts = [o.ttft_s for o in outs if o.result == "ok"]
    return {"ttft_p50_s": median(ttfts), "ttft_p90_s": pct(ttfts, 90), "ttfts_s": ttfts,
            "server_ttft_ms_p50": median([o.ragkv.get("ttft_ms", 0) for o in outs if o.ragkv]),
            "prompt_tokens_p50": median([o.usage.get("prompt_tokens", 0) for o in outs]),
            "chunk_tokens_reused": sum(o.ragkv.get("chunk_tokens_reused", 0) for o in outs),
            "results": dict(Counter(o.result for o in outs))}  # fmt: skip


async def part_rag8(url: str, docs: DocPool, args) -> dict:
    """Concurrent RAG over warmed chunk KV: auto vs full on the very same prompts.

    Fairness: `full` neither reads nor writes the radix prefix cache, so it gains nothing
    from running second; `auto` runs first, right after the warm-up, with the prefix cache
    flushed (the warm-up prompts' KV would otherwise hand `auto` a request's head and first
    document for free), and every request of the batch starts with a different document.
    So `auto` reuses only chunk KV, and both modes compute the same prompts."""
    async with client_for(url) as client:
        await warm_paths(client, docs, args.request_timeout_s)
        pool = docs.take(args.rag8_pool)
        await warm_chunks(client, pool, 4, args.request_timeout_s)
        low, high = (4, 6) if not args.quick else (2, 3)
        cases = orderings(pool, args.rag8_requests, low, high, args.seed)
        auto = await rag_batch(client, cases, "auto", args)
        await flush_prefix(client)
        full = await rag_batch(client, cases, "full", args)
    ratio = full["ttft_p50_s"] / auto["ttft_p50_s"] if auto["ttft_p50_s"] else None
    return {"requests": len(cases), "auto": auto, "full": full,
            "ttft_p50_ratio_full_over_auto": ratio, "target_ratio_min": 2.5}  # fmt: skip


# -- tiers -----------------------------------------------------------------------------------


async def tier_set(url, docs: DocPool, pool: list[dict], groups, args, warm: bool) -> dict:
    """Warm-up, then one RAG request per group (prefix cache flushed before each); TTFTs
    and the cache counters over the measured requests."""
    async with client_for(url) as client:
        await warm_paths(client, docs, args.request_timeout_s)
        if warm:
            await warm_chunks(client, pool, args.tier_docs, args.request_timeout_s)
        before, outs = await cache_counts(client), []
        for number, group in enumerate(groups):
            await flush_prefix(client)
            question = f"Tier question {number}: what is {group[0]['title']}?"
            body = rag_body(question, group, PROBE_TOKENS)
            outs.append(require_ok(await send(client, body, args.request_timeout_s), "tier"))
        counts = diff(before, await cache_counts(client))
    ttfts = [o.ttft_s for o in outs]
    chunk = {k: v for k, v in counts.items() if k.startswith("chunk_")}
    return {"ttft_p50_s": median(ttfts), "ttfts_s": ttfts, "chunk_counters": chunk,
            "server_ttft_ms_p50": median([o.ragkv.get("ttft_ms", 0) for o in outs])}  # fmt: skip


def part_tiers(args, docs: DocPool) -> dict:
    """CPU memory tier vs disk tier: the same documents, regrouped, after a restart on the
    same data dir (memory tier empty, lmdb disk tier kept; its files may sit in the OS page
    cache, as on a warm machine)."""
    n, k = args.tier_requests, args.tier_docs
    pool = docs.take(n * k)
    rng = random.Random(args.seed + 7)
    cpu_groups = [rng.sample([pool[j * n + i] for j in range(k)], k) for i in range(n)]
    shuffled = rng.sample(pool, len(pool))
    disk_groups = [shuffled[i * k : (i + 1) * k] for i in range(n)]  # each document once
    url, process, data = start_serve(args.threads, server_env(args))
    try:
        cpu = asyncio.run(tier_set(url, docs, pool, cpu_groups, args, warm=True))
        stop_process(process)
        url, process = serve_at(data.name, args.threads, server_env(args))
        disk = asyncio.run(tier_set(url, docs, pool, disk_groups, args, warm=False))
    finally:
        stop_process(process)
        data.cleanup()
    ratio = disk["ttft_p50_s"] / cpu["ttft_p50_s"]
    return {"requests_per_tier": n, "documents_per_request": k, "cpu": cpu, "disk": disk,
            "ttft_p50_ratio_disk_over_cpu": ratio, "target_ratio_max": 1.15}  # fmt: skip


# -- load and soak ---------------------------------------------------------------------------


async def load_setup(client, docs: DocPool, args) -> Mix:
    """Warm the paths and the cached-document pool; the mixed workload over it."""
    await warm_paths(client, docs, args.request_timeout_s)
    body = chat_body([{"role": "user", "content": "What is a river?"}], 4, semantic_cache=True)
    require_ok(await send(client, body, args.request_timeout_s), "warm-up embedder")
    cached = docs.take(args.cached_docs)
    await warm_chunks(client, cached, 4, args.request_timeout_s)
    return Mix(docs, cached, args.max_tokens, args.seed)


async def part_load(url: str, docs: DocPool, args) -> dict:
    """Open-loop Poisson arrivals of the mix at each rate (bounded count, one window each;
    the server drains between windows)."""
    rows = []
    async with client_for(url) as client:
        mix = await load_setup(client, docs, args)
        for number, rate in enumerate(float(r) for r in args.rates.split(",")):
            row = await run_rate(client, mix, rate, args.duration_s or 120.0, args.max_requests,
                                 args.request_timeout_s, args.seed + number)  # fmt: skip
            row["drained"] = await wait_idle(client, args.request_timeout_s)
            rows.append(row)
            print_load_row(row)
    return {"rates": rows, "mix": Mix.WEIGHTS}


async def soak(url: str, pid: int, docs: DocPool, args) -> dict:
    """The mix at `--rate` for `--duration-s`; growth of RSS and handles after the warm-up
    (the first `warmup_s`), and of the idle state before vs after."""
    async with client_for(url) as client:
        mix = await load_setup(client, docs, args)
        await wait_idle(client, args.request_timeout_s)
        before, stop, samples = await idle_state(client, pid), asyncio.Event(), []
        sampler = asyncio.create_task(sample_process(pid, stop, samples, args.sample_s))
        duration_s = args.duration_s or 600.0
        cap = int(4 * args.rate * duration_s) + 10  # no cap in practice: Poisson decides
        load = await run_rate(client, mix, args.rate, duration_s, cap, args.request_timeout_s,
                              args.seed)  # fmt: skip
        load["drained"] = await wait_idle(client, args.request_timeout_s)
        await asyncio.sleep(args.settle_s)  # session pins expire (engine.session_pin_ttl_s)
        stop.set()
        await sampler
        after = await idle_state(client, pid)
    warm = next((s for s in samples if s["t_s"] >= args.warmup_s), samples[-1])
    return {"idle_before": before, "after_warmup": warm, "idle_after": after, "load": load,
            "rss_growth_after_warmup_mb": after["rss_mb"] - warm["rss_mb"],
            "fd_growth_after_warmup": after["fds"] - warm["fds"],
            "free_pages_change_idle": after["free_pages"] - before["free_pages"],
            "samples": samples}  # fmt: skip


def part_soak(args, docs: DocPool) -> dict:
    """A fresh server under the soak load."""
    with server(args) as (url, process, _):
        return asyncio.run(soak(url, process.pid, docs, args))


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """Command line; `--quick` replaces the sizes by smoke sizes."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", default="all", help="all, or a comma list of: " + ", ".join(PARTS)
                   + ", soak")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke sizes (a few requests)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--kv-cache-mb", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stall-docs", type=int, default=12)
    p.add_argument("--stream-tokens", type=int, default=1500, help="max_tokens of the streams")
    p.add_argument("--baseline-s", type=float, default=2.0)
    p.add_argument("--rag8-requests", type=int, default=8)
    p.add_argument("--rag8-pool", type=int, default=16)
    p.add_argument("--tier-requests", type=int, default=5)
    p.add_argument("--tier-docs", type=int, default=5, help="documents per tier request")
    p.add_argument("--rates", default="0.25,0.5,1,2", help="req/s, comma list (load)")
    p.add_argument("--rate", type=float, default=0.5, help="req/s (soak)")
    p.add_argument("--duration-s", type=float, help="load: 120 (a rate); soak: 600")
    p.add_argument("--max-requests", type=int, default=300, help="cap per rate (load)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-waiting", type=int, help="the server's queue bound (default: its own)")
    p.add_argument("--cached-docs", type=int, default=12)
    p.add_argument("--request-timeout-s", type=float, default=300.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="soak warm-up before growth")
    p.add_argument("--sample-s", type=float, default=5.0, help="soak sampling period")
    p.add_argument("--settle-s", type=float, default=65.0, help="soak idle wait before after")
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args()
    parts = PARTS if args.part == "all" else tuple(args.part.split(","))
    unknown = set(parts) - set(PARTS) - {"soak"}
    if unknown:
        p.error(f"unknown part(s): {', '.join(sorted(unknown))}")
    args.parts = parts
    if args.quick:  # smoke sizes, except where the command line gave a value
        vars(args).update({k: v for k, v in QUICK.items() if getattr(args, k) == p.get_default(k)})
    if args.duration_s:  # the soak's warm-up is at most a third of it
        args.warmup_s = min(args.warmup_s, args.duration_s / 3)
    return args


def run_part(part: str, args, docs: DocPool) -> dict:
    """One part on its own fresh server(s)."""
    if part == "tiers":
        return part_tiers(args, docs)
    if part == "soak":
        return part_soak(args, docs)
    runner = {"stall": part_stall, "rag8": part_rag8, "load": part_load}[part]
    with server(args) as (url, _, _):
        if part == "load":
            print("rate  offered achieved  tok/s  ttft50ms ttft99ms itl50 itl99ms 503 R/noR "
                  "lost  pages  cache hits over the window")  # fmt: skip
        return asyncio.run(runner(url, docs, args))


def main() -> None:
    """Run the selected parts in order; the JSON is rewritten after each part."""
    args = parse_args()
    docs = DocPool(args.seed)
    record = {"machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "results": {}}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        started = time.perf_counter()
        result = run_part(part, args, docs)
        record["results"][part] = result | {"seconds": time.perf_counter() - started}
        print_summary(part, result)
        args.json.write_text(json.dumps(record, indent=2))
    if "load" in record["results"]:
        plot(record["results"]["load"]["rates"], args.json.with_suffix(".png"))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
