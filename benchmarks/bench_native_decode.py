"""Native decode step vs the torch path, by batch size (`model.native_decode`).

One engine with the default settings (float16 decode weights where the native step runs); for
1, 2, 4, 8, 16 and 32 concurrent streams, decode tokens/s aggregate with the native step and
with the torch path (the same engine, the native step switched off), runs alternated, medians.
Above `NATIVE_MAX_ROWS` sequences the engine takes the torch path anyway: those rows show why.
Prints a table and writes benchmarks/results/native_decode.json. Not a test: nothing is
asserted.
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
from ragkv.engine.model import NATIVE_MAX_ROWS
from ragkv.settings import EngineSettings, ModelSettings

RESULTS = Path(__file__).parent / "results" / "native_decode.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="decode tokens per stream")
    parser.add_argument("--runs", type=int, default=3, help="alternated runs per path")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = EngineSettings(kv_cache_mb=2048, max_batch_tokens=2048, max_num_seqs=32)
    engine = LLMEngine.from_path(generation_model_path(), ModelSettings(), settings)
    model = engine.model
    if model.native_decode_off is not None:
        raise SystemExit(f"the native step is off here: {model.native_decode_off}")
    engine_prefill_s(engine, token_ids(64))  # warm-up
    rows = {}
    for streams in args.streams:
        native, torch_path = [], []
        for _ in range(args.runs):
            model.native_decode_off = None
            native.append(engine_decode_tps(engine, streams, args.tokens))
            model.native_decode_off = "benchmark: the torch path"
            torch_path.append(engine_decode_tps(engine, streams, args.tokens))
        model.native_decode_off = None
        rows[streams] = {
            "native_tok_per_s": statistics.median(native),
            "torch_path_tok_per_s": statistics.median(torch_path),
            "ratio": statistics.median(native) / statistics.median(torch_path),
            "native_runs": native,
            "torch_path_runs": torch_path,
        }
        row = rows[streams]
        print(
            f"{streams:3d} streams: native {row['native_tok_per_s']:7.1f} tok/s, torch path "
            f"{row['torch_path_tok_per_s']:7.1f} tok/s ({row['ratio']:.2f}x)",
            flush=True,
        )
    report = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "threads": args.threads,
        "tokens_per_stream": args.tokens,
        "runs": args.runs,
        "native_max_rows": NATIVE_MAX_ROWS,
        "decode_dtype": str(model.decode_dtype).removeprefix("torch."),
        "streams": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
