"""torch's BLAS against oneDNN for the products of several rows (`model.batched_gemm`), side by
side in one process so that the machine's drift hits both alike.

Two engines share the weights' shapes and the GEMV layout of one-row decodes (column blocks,
the decode dtype `--decode-dtype`); one runs products of several rows on torch's BLAS, the
other on oneDNN from `--onednn-rows` rows. Rounds alternate between them; per engine, medians
over `--rounds` of prefill tokens/s (512 and 2,048 tokens) and aggregate decode tokens/s with
1, 4 and 16 streams. Also the greedy answers of both to the same prompts, compared token by
token (the libraries round differently; the products are the same). Prints a table (ratio
oneDNN / BLAS) and writes JSON. Not a test: nothing is asserted.

    python benchmarks/bench_batched_gemm.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_engine import engine_decode_tps, engine_prefill_s, token_ids
from machine import machine

from ragkv.assets import generation_model_path
from ragkv.engine.engine import LLMEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request
from ragkv.settings import EngineSettings, ModelSettings

RESULTS = Path(__file__).parent / "results" / "batched_gemm.json"
PREFILL_LENGTHS = (512, 2048)
STREAMS = (1, 4, 16)


def build(batched_gemm: str, args: argparse.Namespace) -> LLMEngine:
    model = ModelSettings(
        gemm_layout="blocked", decode_dtype=args.decode_dtype, batched_gemm=batched_gemm
    )
    settings = EngineSettings(kv_cache_mb=2048, max_batch_tokens=2048, max_num_seqs=32)
    return LLMEngine.from_path(generation_model_path(), model, settings)


def one_round(engine: LLMEngine, decode_tokens: int) -> dict[str, float]:
    """Prefill tokens/s per length and decode tokens/s per stream count, once each."""
    row = {}
    for length in PREFILL_LENGTHS:
        row[f"prefill_{length}"] = length / engine_prefill_s(engine, token_ids(length))
    for streams in STREAMS:
        row[f"decode_{streams}"] = engine_decode_tps(engine, streams, decode_tokens)
    return row


def greedy(engine: LLMEngine, prompts: int, tokens: int) -> list[list[int]]:
    """Greedy answers to `prompts` chat prompts run as one batch (batched decode rows)."""
    params = SamplingParams(max_tokens=tokens, temperature=0)
    requests = [
        Request(
            f"g{i}-{time.perf_counter_ns()}",
            engine.tokenizer.apply_chat_template(
                [{"role": "user", "content": f"Write a short note about the number {i + 3}."}]
            ),
            params,
        )
        for i in range(prompts)
    ]
    outputs = engine.generate(requests)
    return [[t for out in outputs[r.request_id] for t in out.token_ids] for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--decode-dtype", default="same", choices=["same", "auto", "float16"])
    parser.add_argument("--onednn-rows", default="onednn", choices=["onednn", "auto"])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engines = {"blas": build("blas", args), "onednn": build(args.onednn_rows, args)}
    for engine in engines.values():
        engine_prefill_s(engine, token_ids(64))  # warm-up
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            runs[name].append(one_round(engine, args.decode_tokens))
    medians = {
        name: {key: statistics.median(run[key] for run in rows) for key in rows[0]}
        for name, rows in runs.items()
    }
    answers = {name: greedy(engine, 8, 32) for name, engine in engines.items()}
    same = sum(a == b for a, b in zip(answers["blas"], answers["onednn"], strict=True))
    agree = [
        sum(x == y for x, y in zip(a, b, strict=False)) / max(len(a), 1)
        for a, b in zip(answers["blas"], answers["onednn"], strict=True)
    ]
    report = {
        "machine": machine(),
        "threads": args.threads,
        "decode_dtype": args.decode_dtype,
        "onednn_min_rows": engines["onednn"].model.gemm.onednn_min_rows,
        "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds,
        "medians": medians,
        "ratio_onednn_over_blas": {
            key: medians["onednn"][key] / medians["blas"][key] for key in medians["blas"]
        },
        "greedy_identical_answers": f"{same} of {len(agree)}",
        "greedy_token_agreement": statistics.mean(agree),
        "runs": runs,
    }
    print(f"{'metric (tok/s)':16} {'blas':>9} {'onednn':>9} {'ratio':>7}")
    for key, ratio in report["ratio_onednn_over_blas"].items():
        blas, onednn = medians["blas"][key], medians["onednn"][key]
        print(f"{key:16} {blas:9.1f} {onednn:9.1f} {ratio:7.2f}")
    print(f"greedy answers identical: {same} of {len(agree)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
