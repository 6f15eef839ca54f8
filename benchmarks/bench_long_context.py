"""Decode speed by context length (one stream, or `--streams` together), attention reading
consecutive KV pages as a view of the pool against gathering them (the path before), side by
side in one process.

One engine; per context length (`--contexts`), rounds alternate between the two paths (the
gather path is the plan with its consecutive-page check switched off); medians over
`--rounds` of decode tokens/s (`--decode-tokens` greedy tokens after the prompt's prefill).
Prints a table and writes JSON. Not a test: nothing is asserted.

    python benchmarks/bench_long_context.py --rounds 3
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
from ragkv.kernels import ops
from ragkv.settings import EngineSettings, ModelSettings

RESULTS = Path(__file__).parent / "results" / "long_context.json"
CONSECUTIVE_START = ops._consecutive_start


def decode_tps(engine: LLMEngine, context: int, tokens: int, streams: int = 1) -> float:
    """Aggregate decode tokens/s of `streams` requests with `context`-token prompts (their
    prefill excluded)."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    for i in range(streams):
        prompt = token_ids(context, context + i)
        engine.add_request(Request(f"c{i}-{time.perf_counter_ns()}", prompt, params))
    while engine.scheduler.waiting or any(s.in_prefill for s in engine.scheduler.running):
        engine.step()
    started, produced = time.perf_counter(), 0
    while engine.has_work():
        produced += len(engine.step())
    return produced / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--contexts", type=int, nargs="+", default=[64, 1024, 2048, 4000])
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--streams", type=int, default=1, help="requests decoding together")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = EngineSettings(kv_cache_mb=2048, max_batch_tokens=2048, max_num_seqs=32)
    engine = LLMEngine.from_path(generation_model_path(), ModelSettings(), settings)
    decode_tps(engine, 64, 8)  # warm-up
    paths = {"gather": lambda slots: None, "view": CONSECUTIVE_START}
    runs: dict[int, dict[str, list[float]]] = {c: {p: [] for p in paths} for c in args.contexts}
    for _ in range(args.rounds):
        for context in args.contexts:
            for name, check in paths.items():
                ops._consecutive_start = check
                runs[context][name].append(
                    decode_tps(engine, context, args.decode_tokens, args.streams)
                )
    ops._consecutive_start = CONSECUTIVE_START
    medians = {c: {p: statistics.median(v) for p, v in r.items()} for c, r in runs.items()}
    report = {
        "machine": machine(),
        "threads": args.threads,
        "streams": args.streams,
        "decode_dtype": str(engine.model.decode_dtype),
        "date": time.strftime("%Y-%m-%d"),
        "medians_tok_per_s": medians,
        "ratio_view_over_gather": {c: m["view"] / m["gather"] for c, m in medians.items()},
        "runs": runs,
    }
    print(f"{'context':>8} {'gather tok/s':>13} {'view tok/s':>11} {'ratio':>6}")
    for context, m in medians.items():
        print(f"{context:8d} {m['gather']:13.1f} {m['view']:11.1f} {m['view'] / m['gather']:6.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
