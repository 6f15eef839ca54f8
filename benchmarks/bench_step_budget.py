"""What a long prompt costs the streams already decoding, with and without a bound on the
prefill tokens of a step while sequences decode (`engine.prefill_tokens_while_decoding`).

Per bound (`off` = the whole `max_batch_tokens`, then each value of `--bounds`), on one
engine (no HTTP), rounds alternating between bounds: `--streams` requests decode; once all of
them do, a `--prompt-tokens` prompt arrives, and one step later a short `--short-tokens`
prompt (an agent back from a tool, a chat turn). Reported, medians over `--runs` rounds:
- the decoding streams' time between tokens while the long prompt prefills (median, max);
- TTFT of the long prompt (its arrival to its first token) and of the short one.
Prints a table and writes JSON. Not a test: nothing is asserted.

    python benchmarks/bench_step_budget.py                  # 4 streams, 1,536-token prompt
    python benchmarks/bench_step_budget.py --bounds 64 128 256 --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_engine import token_ids
from machine import machine

from ragkv.assets import generation_model_path
from ragkv.engine.engine import LLMEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request
from ragkv.settings import EngineSettings, ModelSettings

RESULTS = Path(__file__).parent / "results" / "step_budget.json"


def request(name: str, ids: list[int], max_tokens: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return Request(f"{name}-{time.perf_counter_ns()}", ids, params)


def one_round(engine: LLMEngine, args: argparse.Namespace, offset: int) -> dict[str, float]:
    """Streams decoding, then the long prompt and (a step later) the short one arrive:
    the streams' gaps between tokens until the long prompt's first token, and both TTFTs."""
    # The streams decode until the long prompt's first token is out, then are aborted.
    streams = [request("s", token_ids(32, offset * 100 + i), 4096) for i in range(args.streams)]
    for stream in streams:
        engine.add_request(stream)
    while any(s.in_prefill for s in engine.scheduler.running) or engine.scheduler.waiting:
        engine.step()
    engine.step()
    last = {s.request_id: time.perf_counter() for s in streams}
    gaps: list[float] = []
    long = request("long", token_ids(args.prompt_tokens, offset * 100 + 50), 1)
    short = request("short", token_ids(args.short_tokens, offset * 100 + 60), 1)
    first: dict[str, float] = {}
    arrived = {long.request_id: time.perf_counter()}
    engine.add_request(long)
    while long.request_id not in first or short.request_id not in first:
        outputs = engine.step()
        now = time.perf_counter()
        if short.request_id not in arrived:
            arrived[short.request_id] = now
            engine.add_request(short)
        for output in outputs:
            if output.request_id in last and long.request_id not in first:
                gaps.append(now - last[output.request_id])
                last[output.request_id] = now
            elif output.request_id in arrived:
                first.setdefault(output.request_id, now)
    for stream in streams:
        engine.abort(stream.request_id)
    while engine.has_work():
        engine.step()
    return {
        "gap_median_s": statistics.median(gaps),
        "gap_max_s": max(gaps),
        "long_ttft_s": first[long.request_id] - arrived[long.request_id],
        "short_ttft_s": first[short.request_id] - arrived[short.request_id],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=1536)
    parser.add_argument("--short-tokens", type=int, default=64)
    parser.add_argument("--max-batch-tokens", type=int, default=512)
    parser.add_argument("--bounds", type=int, nargs="+", default=[128])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = EngineSettings(
        kv_cache_mb=512, max_batch_tokens=args.max_batch_tokens, max_num_seqs=32
    )
    engine = LLMEngine.from_path(generation_model_path(), ModelSettings(), settings)
    bounds: dict[str, int | None] = {"off": None} | {str(b): b for b in args.bounds}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in bounds}
    one_round(engine, argparse.Namespace(**{**vars(args), "prompt_tokens": 64}), 999)  # warm-up
    for run in range(args.runs):
        for index, (name, bound) in enumerate(bounds.items()):
            engine.scheduler.prefill_tokens_while_decoding = bound
            rounds[name].append(one_round(engine, args, run * len(bounds) + index))
            print(name, run, json.dumps(rounds[name][-1]), flush=True)
    rows = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in rounds.items()
    }
    print(f"\n{'bound':>6} | gap median s | gap max s | long TTFT s | short TTFT s")
    for name, row in rows.items():
        print(
            f"{name:>6} | {row['gap_median_s']:12.2f} | {row['gap_max_s']:9.2f} | "
            f"{row['long_ttft_s']:11.2f} | {row['short_ttft_s']:12.2f}"
        )
    report = {"machine": machine(), "args": vars(args) | {"json": str(args.json)}}
    report |= {"rows": rows, "rounds": rounds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
