"""Quality and speed of bfloat16 batched decode (`model.batch_dtype`) against fp32.

Batched decode steps are compute-bound on a CPU, and oneDNN multiplies bfloat16 natively on
CPUs with bfloat16 instructions (AVX512-BF16, AMX). `batch_dtype = bfloat16` keeps bfloat16
copies of the projections for decode steps of several rows; the LM head stays float32. This
script measures, on the issue's 20 chat prompts x 64 tokens:

1. teacher-forced top-1 agreement with fp32, batched as served: the 20 prompts are prefilled
   (fp32), then every position is one decode step of 20 rows, each row fed fp32's greedy
   token. Models: fp32 batched (oneDNN float32: the sanity row, near 100%), bfloat16
   projections with the float32 head on the torch path (oneDNN, products rounded to
   bfloat16), the native step's batches (`bf16_native`: what the defaults serve on a CPU
   with AVX512-BF16: the same bfloat16 projections with float32 outputs, the float16 head of
   one-row steps with float32 rows), and bfloat16 projections and head (why the head is not
   bfloat16). The reference is fp32 fed one row at a time
   (`decode_precision.teacher_forced_logprobs`);
2. free-running greedy agreement: the 20 prompts decoded together by an fp32 engine and by a
   bfloat16-batch engine;
3. aggregate decode tokens/s of 16 streams, fp32 vs bfloat16 batches (torch path, native),
   alternated, medians.

Prints a table and a verdict against the issue's 99% bar; writes
benchmarks/results/batch_precision.json. Not a test: nothing is asserted.

    python benchmarks/batch_precision.py
    python benchmarks/batch_precision.py --prompts 8 --tokens 32 --speed-runs 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from bench_engine import engine_decode_tps
from decode_precision import (
    DEFAULT_BAR,
    PAGE_SIZE,
    PROMPTS,
    compare_forced,
    greedy_agreement,
    sequence_step,
    teacher_forced_logprobs,
    teacher_forced_summary,
)
from machine import machine

from ragkv.assets import generation_model_path
from ragkv.engine.calibrate import ONEDNN_ROW_CANDIDATES
from ragkv.engine.engine import LLMEngine
from ragkv.engine.gemm import Gemm, onednn_bf16_available
from ragkv.engine.kv_pool import KVPool, page_table_csr
from ragkv.engine.model import ForwardBatch, LlamaModel
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request
from ragkv.engine.tokenizer import Tokenizer
from ragkv.engine.weights import fingerprint, load_weights
from ragkv.kernels import cpu_decode
from ragkv.settings import EngineSettings

RESULTS = Path(__file__).parent / "results" / "batch_precision.json"


def build_models(path: Path) -> dict[str, LlamaModel]:
    """fp32, bfloat16 batches with the float32 head, and bfloat16 batches and head, over one
    load of the weights; products of 2 rows and more on oneDNN (as `batched_gemm` chose)."""
    config, weights = load_weights(path)
    gemm = Gemm(torch.get_num_threads(), ONEDNN_ROW_CANDIDATES[0])
    models = {
        "fp32": LlamaModel(config, weights, gemm=gemm),
        "bf16_batch": LlamaModel(config, weights, gemm=gemm, batch_dtype=torch.bfloat16),
    }
    head = LlamaModel(config, weights, gemm=gemm, batch_dtype=torch.bfloat16)
    head.lm_head = head.lm_head.to(torch.bfloat16)  # the head rounded too (tied: a copy)
    head.lm_head_t = head.lm_head.t()
    models["bf16_batch_and_head"] = head
    if cpu_decode.bf16_supported():
        models["bf16_native"] = LlamaModel(
            config,
            weights,
            gemm=gemm,
            decode_dtype=torch.float16,
            batch_dtype=torch.bfloat16,
            native_decode=True,
        )
        assert models["bf16_native"].batch_panels is not None
    return models


def batched_step(pool: KVPool, tables: list[list[int]], tokens: list[int], starts: list[int]):
    """One decode step: sequence i adds `tokens[i]` at position `starts[i]`."""
    kv_lens = [start + 1 for start in starts]
    kv_indptr, kv_indices = page_table_csr(
        [table[: pool.pages_for(length)] for table, length in zip(tables, kv_lens, strict=True)]
    )
    slots = [
        pool.slots(table, start, start + 1) for table, start in zip(tables, starts, strict=True)
    ]
    return ForwardBatch(
        token_ids=torch.tensor(tokens, dtype=torch.long),
        positions=torch.tensor(starts),
        write_slots=torch.cat(slots),
        qo_indptr=list(range(len(tokens) + 1)),
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        kv_lens=kv_lens,
        logits_rows=torch.arange(len(tokens)),
    )


def teacher_forced_batched(
    model: LlamaModel, prompts: list[list[int]], forced: list[list[int]]
) -> list[torch.Tensor]:
    """Per prompt, log-probs `[len(forced), vocab]`: row 0 from its own prefill, row i from
    one decode step of all prompts together, each fed its `forced[i-1]`."""
    totals = [len(p) + len(f) for p, f in zip(prompts, forced, strict=True)]
    pool = KVPool(model.config, sum(-(-t // PAGE_SIZE) for t in totals), PAGE_SIZE, model.dtype)
    tables = [pool.alloc(pool.pages_for(total)) for total in totals]
    rows: list[list[torch.Tensor]] = []
    for prompt, table in zip(prompts, tables, strict=True):
        rows.append([model.forward(sequence_step(pool, table, prompt, 0), pool)])
    for index in range(len(forced[0]) - 1):
        tokens = [f[index] for f in forced]
        starts = [len(p) + index for p in prompts]
        logits = model.forward(batched_step(pool, tables, tokens, starts), pool)
        for row, out in zip(rows, logits, strict=True):
            row.append(out.unsqueeze(0))
    return [torch.log_softmax(torch.cat(row), dim=-1) for row in rows]


def greedy_together(engine: LLMEngine, prompts: list[list[int]], tokens: int, tag: str):
    """The prompts' greedy answers, decoded together (EOS ignored)."""
    params = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    requests = [
        Request(f"{tag}{i}-{time.perf_counter_ns()}", p, params) for i, p in enumerate(prompts)
    ]
    outputs = engine.generate(requests)
    return [[t for o in outputs[r.request_id] for t in o.token_ids] for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--speed-tokens", type=int, default=96)
    parser.add_argument("--speed-runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not onednn_bf16_available():
        raise SystemExit("this CPU's oneDNN has no native bfloat16 products: nothing to measure")
    torch.set_num_threads(args.threads)
    path = generation_model_path()
    models = build_models(path)
    tokenizer = Tokenizer(path)
    settings = EngineSettings(kv_cache_mb=512, max_batch_tokens=2048, max_num_seqs=32)
    print_ = fingerprint(path, tokenizer.serialization())
    engines = {name: LLMEngine(m, tokenizer, settings, print_) for name, m in models.items()}
    questions = PROMPTS[: args.prompts]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in questions]

    print(f"greedy: {len(prompts)} prompts x {args.tokens} tokens, together", flush=True)
    answers = {n: greedy_together(e, prompts, args.tokens, n) for n, e in engines.items()}
    reference = answers["fp32"]
    print("teacher forcing: fp32 one row at a time, each model batched", flush=True)
    single = [
        teacher_forced_logprobs(models["fp32"], p, t)
        for p, t in zip(prompts, reference, strict=True)
    ]
    quality = {}
    for name, model in models.items():
        batched = teacher_forced_batched(model, prompts, reference)
        forced = [
            compare_forced(t, r, c) for t, r, c in zip(reference, single, batched, strict=True)
        ]
        quality[name] = {
            "teacher_forced_vs_fp32_single_row": teacher_forced_summary(forced),
            "greedy_vs_fp32_batched": greedy_agreement(reference, answers[name]),
        }

    print(f"speed: {args.streams} streams, {args.speed_runs} alternated runs", flush=True)
    speed: dict[str, list[float]] = {"fp32": [], "bf16_batch": []}
    if "bf16_native" in engines:
        speed["bf16_native"] = []
    for name in speed:
        engine_decode_tps(engines[name], args.streams, 8)  # warm-up
    for _ in range(args.speed_runs):
        for name, values in speed.items():
            values.append(engine_decode_tps(engines[name], args.streams, args.speed_tokens))
    medians = {name: statistics.median(values) for name, values in speed.items()}

    report = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "parameters": vars(args) | {"output": str(args.output), "prompts": list(questions)},
        "quality": quality,
        "speed_tok_per_s": {"runs": speed, "medians": medians}
        | {
            f"{name}_vs_fp32": medians[name] / medians["fp32"] for name in medians if name != "fp32"
        },
    }
    for name, figures in quality.items():
        tf = figures["teacher_forced_vs_fp32_single_row"]["decode_positions"]
        greedy = figures["greedy_vs_fp32_batched"]
        print(
            f"{name:22} teacher-forced top-1 {tf['top1_agreement']:.2%} "
            f"({tf['top1_disagreements']} of {tf['positions']} differ; |dlogprob| mean "
            f"{tf['abs_logprob_diff_mean']:.4f} max {tf['abs_logprob_diff_max']:.3f}); greedy "
            f"tokens {greedy['token_agreement']:.1%}, identical answers "
            f"{greedy['identical_answers']}/{greedy['answers']}"
        )
    for name, value in medians.items():
        print(f"{args.streams} streams, {name}: {value:.1f} tok/s ({value / medians['fp32']:.2f}x)")
    for name in ("bf16_batch", "bf16_native"):
        if name in quality:
            served = quality[name]["teacher_forced_vs_fp32_single_row"]["decode_positions"]
            meets = "meets" if served["top1_agreement"] >= DEFAULT_BAR else "does NOT meet"
            print(f"verdict: {name} {meets} the {DEFAULT_BAR:.0%} bar")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
