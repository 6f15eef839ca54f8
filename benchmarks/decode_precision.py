"""Quality and speed of reduced-precision decode weights (`model.decode_dtype`) against fp32.

Four models over the same weights, built in one process: fp32 (`decode_dtype` "same", the
exactness reference), and fp32 with a bfloat16 or float16 copy of the projection weights that
serves decode-only steps of at most `LOW_PRECISION_MAX_ROWS` sequences, float16 both on the
torch path and in the native one-sequence step (`model.native_decode`). On 20 chat prompts:

1. free-running greedy agreement with fp32 (EOS ignored): token positions identical, mean
   identical-prefix length, answers identical in full;
2. teacher-forced top-1 agreement: each model is fed fp32's greedy tokens, one single-row
   decode step at a time (so the low-precision path really runs), and its argmax at every
   position is compared with fp32's, along with the log-probability of the fp32 token;
3. single-stream decode tokens/s (`bench_engine.engine_decode_tps`, median of runs that
   alternate between the models).

Prints a table and verdicts, writes benchmarks/results/decode_precision.json. Not a test:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from bench_engine import engine_decode_tps
from machine import machine

from ragkv.assets import generation_model_path
from ragkv.engine.engine import LLMEngine
from ragkv.engine.kv_pool import KVPool, page_table_csr
from ragkv.engine.model import LOW_PRECISION_MAX_ROWS, ForwardBatch, LlamaModel
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import KVReuse, Request
from ragkv.engine.tokenizer import Tokenizer
from ragkv.engine.weights import fingerprint, load_weights
from ragkv.settings import EngineSettings

RESULTS = Path(__file__).parent / "results" / "decode_precision.json"
# name -> (decode dtype, native decode step); the first is the reference. "fp16" is the torch
# path over float16 copies (activations rounded to float16 for each product), "fp16-native"
# the native step over the same copies (float32 activations and sums; where it is built).
MODELS = {
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, False),
    "fp16-native": (torch.float16, True),
}
SETTING = {
    "fp32": "same",
    "bf16": "bfloat16",
    "fp16": "float16, native_decode off",
    "fp16-native": "float16, native_decode auto",
}
# The bar for making a decode dtype the default (teacher-forced top-1 agreement).
DEFAULT_BAR = 0.99
TOP_LOGPROBS = 5
PAGE_SIZE = 16
GREEDY_KEYS = ("token_agreement", "mean_identical_prefix_tokens", "identical_answers")
TF_SCOPES = ("decode_positions", "all_positions")
TF_KEYS = ("top1_agreement", "top1_disagreements", "abs_logprob_diff_mean", "abs_logprob_diff_max")

PROMPTS = (
    "What is the capital of France?",
    "Who wrote Pride and Prejudice?",
    "How many days are there in a leap year?",
    "What is photosynthesis?",
    "Why is the sky blue?",
    "What is the boiling point of water at sea level in Celsius?",
    "Explain the difference between weather and climate.",
    "Give me three tips for sleeping better.",
    "Write a polite email asking a colleague to review my report.",
    "Translate 'good morning, how are you?' into Spanish.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "Write a Python function that returns the factorial of n.",
    "Write a SQL query that counts the rows of a table named orders.",
    "What does the JavaScript expression [1, 2, 3].map(x => x * 2) return?",
    "List five fruits that are rich in vitamin C.",
    "List the planets of the solar system in order from the sun.",
    "Write a short poem about autumn leaves.",
    "Give me a recipe for a simple tomato pasta.",
    "Read this paragraph and tell me its main idea. The history of the bicycle began in the "
    "early nineteenth century, when inventors in Europe built two-wheeled machines that riders "
    "pushed along with their feet. Pedals attached to the front wheel came decades later, and "
    "the chain-driven safety bicycle of the 1880s, with two wheels of equal size, made cycling "
    "practical for ordinary people. Cheap bicycles gave workers a way to travel to jobs far "
    "from home, helped women gain independence, and even pushed cities to pave their roads.",
    "Explain what a hash table is and why lookups in it are usually fast.",
)


def build_engines(path: Path, kv_cache_mb: int) -> dict[str, LLMEngine]:
    """One engine per entry of `MODELS`, over one load of the weights and tokenizer.

    Call after `torch.set_num_threads`: the model splits its projections into one column
    block per thread when it is built."""
    config, weights = load_weights(path)
    tokenizer = Tokenizer(path)
    model_fingerprint = fingerprint(path, tokenizer.serialization())
    settings = EngineSettings(
        kv_cache_mb=kv_cache_mb, page_size=PAGE_SIZE, max_batch_tokens=2048, max_num_seqs=32
    )
    engines = {}
    for name, (decode_dtype, native) in MODELS.items():
        model = LlamaModel(config, weights, decode_dtype=decode_dtype, native_decode=native)
        if native and model.native_decode_off is not None:
            print(f"skipping {name}: {model.native_decode_off}")
            continue
        engines[name] = LLMEngine(model, tokenizer, settings, model_fingerprint)
    return engines


def greedy(engine: LLMEngine, prompt: list[int], num_tokens: int, tag: str):
    """One greedy request on its own (a 1-row decode, no cached KV): (tokens, logprobs)."""
    params = SamplingParams(
        max_tokens=num_tokens,
        temperature=0,
        ignore_eos=True,
        logprobs=True,
        top_logprobs=TOP_LOGPROBS,
    )
    request = Request(f"{tag}-{time.perf_counter_ns()}", prompt, params, kv_reuse=KVReuse.FULL)
    outputs = engine.generate([request])[request.request_id]
    tokens = [t for output in outputs for t in output.token_ids]
    logprobs = [lp.logprob for output in outputs for lp in output.logprobs]
    return tokens, logprobs


def sequence_step(pool: KVPool, pages: list[int], token_ids: list[int], start: int) -> ForwardBatch:
    """One sequence adding `token_ids` at positions `start...`; logits of its last token.

    The page table holds the pages its KV fills, as the engine's does."""
    end = start + len(token_ids)
    kv_indptr, kv_indices = page_table_csr([pages[: pool.pages_for(end)]])
    return ForwardBatch(
        token_ids=torch.tensor(token_ids, dtype=torch.long),
        positions=torch.arange(start, end),
        write_slots=pool.slots(pages, start, end),
        qo_indptr=[0, len(token_ids)],
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        kv_lens=[end],
        logits_rows=torch.tensor([len(token_ids) - 1]),
    )


def teacher_forced_logprobs(
    model: LlamaModel, prompt: list[int], forced: list[int]
) -> torch.Tensor:
    """Log-probabilities `[len(forced), vocab]` of `model` fed `forced`: row 0 from one
    prefill step over `prompt`, row i from a single-token decode step feeding `forced[i-1]`
    (a 1-row decode-only step: the low-precision weights when the model has them)."""
    total = len(prompt) + len(forced)
    pool = KVPool(model.config, -(-total // PAGE_SIZE), PAGE_SIZE, model.dtype)
    pages = pool.alloc(pool.pages_for(total))
    rows = [model.forward(sequence_step(pool, pages, prompt, 0), pool)]
    for index, token in enumerate(forced[:-1]):
        rows.append(model.forward(sequence_step(pool, pages, [token], len(prompt) + index), pool))
    return torch.log_softmax(torch.cat(rows), dim=-1)


def greedy_agreement(reference: list[list[int]], candidate: list[list[int]]) -> dict:
    """Free-running greedy agreement of `candidate` answers with the `reference` answers."""
    same, prefixes = 0, []
    for ref, got in zip(reference, candidate, strict=True):
        same += sum(a == b for a, b in zip(ref, got, strict=True))
        pairs = zip(ref, got, strict=True)
        prefixes.append(next((i for i, (a, b) in enumerate(pairs) if a != b), len(ref)))
    return {
        "token_agreement": same / sum(len(ref) for ref in reference),
        "mean_identical_prefix_tokens": statistics.mean(prefixes),
        "identical_answers": sum(p == len(r) for p, r in zip(prefixes, reference, strict=True)),
        "answers": len(reference),
        "identical_prefix_per_prompt": prefixes,
    }


def compare_forced(tokens: list[int], ref: torch.Tensor, cand: torch.Tensor) -> dict:
    """One prompt's teacher-forced log-probs `[N, vocab]`, candidate vs fp32 (both fed the fp32
    greedy `tokens`): top-1 matches, |delta logprob| of the fp32 token, fp32's top-1 minus
    top-2 margin where the argmaxes differ, and whether the rows are bit-identical."""
    chosen = torch.tensor(tokens).unsqueeze(1)
    match = ref.argmax(-1) == cand.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    return {
        "match": match,
        "diff": (ref.gather(1, chosen) - cand.gather(1, chosen)).abs().squeeze(1),
        "margins": (top2[:, 0] - top2[:, 1])[~match].tolist(),
        "prefill_identical": bool((ref[0] == cand[0]).all()),
        "decode_rows_changed": int((ref[1:] != cand[1:]).any(-1).sum()),
    }


def _position_stats(matches: torch.Tensor, diffs: torch.Tensor) -> dict:
    """Top-1 agreement and |delta logprob| of the fp32 token over a set of positions."""
    return {
        "positions": int(matches.numel()),
        "top1_agreement": float(matches.float().mean()),
        "top1_disagreements": int((~matches).sum()),
        "abs_logprob_diff_mean": float(diffs.mean()),
        "abs_logprob_diff_max": float(diffs.max()),
    }


def teacher_forced_summary(per_prompt: list[dict]) -> dict:
    """`compare_forced` results of all prompts, over all positions and over the decode-step
    positions only (row 0 comes from the fp32 prefill in every model, so it always agrees)."""
    matches = torch.stack([p["match"] for p in per_prompt])
    diffs = torch.stack([p["diff"] for p in per_prompt])
    margins = [m for p in per_prompt for m in p["margins"]]
    return {
        "all_positions": _position_stats(matches, diffs),
        "decode_positions": _position_stats(matches[:, 1:], diffs[:, 1:]),
        "prefill_rows_bit_identical": all(p["prefill_identical"] for p in per_prompt),
        "decode_rows_not_bit_identical": sum(p["decode_rows_changed"] for p in per_prompt),
        "decode_rows": int(matches[:, 1:].numel()),
        "fp32_top1_top2_margin_at_disagreements": {
            "median": statistics.median(margins) if margins else None,
            "max": max(margins) if margins else None,
        },
    }


def fp32_sanity(greedy_runs: list[tuple[list[int], list[float]]], forced: list[dict]) -> dict:
    """Does fp32 teacher-forced decoding reproduce the fp32 engine's greedy run exactly?
    `forced`: per prompt, the fp32 argmax and log-prob of the fed token at each position."""
    mismatches, drift = 0, 0.0
    for (tokens, logprobs), row in zip(greedy_runs, forced, strict=True):
        mismatches += int((row["argmax"] != torch.tensor(tokens)).sum())
        drift = max(drift, float((row["logprob"] - torch.tensor(logprobs)).abs().max()))
    return {"argmax_mismatches": mismatches, "max_abs_logprob_diff_vs_engine": drift}


def measure_quality(engines: dict[str, LLMEngine], prompts: list[list[int]], num_tokens: int):
    """Greedy and teacher-forced figures of every low-precision model against fp32, and the
    fp32 sanity check (its teacher-forced argmax must reproduce its own greedy tokens)."""
    print(
        f"greedy: {len(prompts)} prompts x {num_tokens} tokens x {len(engines)} models", flush=True
    )
    runs = {name: [greedy(e, p, num_tokens, name) for p in prompts] for name, e in engines.items()}
    print("teacher forcing", flush=True)
    ref_tokens = [tokens for tokens, _ in runs["fp32"]]
    others = [name for name in engines if name != "fp32"]
    forced: dict[str, list[dict]] = {name: [] for name in others}
    fp32_rows = []
    for prompt, tokens in zip(prompts, ref_tokens, strict=True):
        ref = teacher_forced_logprobs(engines["fp32"].model, prompt, tokens)
        chosen = ref.gather(1, torch.tensor(tokens).unsqueeze(1)).squeeze(1)
        fp32_rows.append({"argmax": ref.argmax(-1), "logprob": chosen})
        for name in others:
            cand = teacher_forced_logprobs(engines[name].model, prompt, tokens)
            forced[name].append(compare_forced(tokens, ref, cand))
    quality = {
        name: {
            "greedy": greedy_agreement(ref_tokens, [tokens for tokens, _ in runs[name]]),
            "teacher_forced": teacher_forced_summary(forced[name]),
        }
        for name in others
    }
    return quality, fp32_sanity(runs["fp32"], fp32_rows)


def measure_speed(engines: dict[str, LLMEngine], num_tokens: int, runs: int) -> dict:
    """Single-stream decode tok/s per model (`engine_decode_tps`): each run measures every
    model once, in turn, so load from other work on the machine spreads over all of them."""
    print(f"decode speed: {runs} runs x {num_tokens} tokens x {len(engines)} models", flush=True)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    for engine in engines.values():  # warm-up
        engine_decode_tps(engine, 1, 8)
    for _ in range(runs):
        for name, engine in engines.items():
            samples[name].append(engine_decode_tps(engine, 1, num_tokens))
    reference = statistics.median(samples["fp32"])
    return {
        name: {
            "median_tok_per_s": statistics.median(values),
            "vs_fp32": statistics.median(values) / reference,
            "runs_tok_per_s": values,
        }
        for name, values in samples.items()
    }


def verdicts(quality: dict) -> dict[str, dict]:
    """Per dtype: does teacher-forced top-1 agreement over the decode steps meet the bar?"""
    result = {}
    for name, figures in quality.items():
        agreement = figures["teacher_forced"]["decode_positions"]["top1_agreement"]
        everywhere = figures["teacher_forced"]["all_positions"]["top1_agreement"]
        result[name] = {
            "decode_dtype": SETTING[name],
            "teacher_forced_top1_agreement_decode_steps": agreement,
            "teacher_forced_top1_agreement_all_positions": everywhere,
            "bar": DEFAULT_BAR,
            "meets_bar": agreement >= DEFAULT_BAR,
        }
    return result


def table_rows(report: dict) -> list[tuple[str, list]]:
    """(label, value per model) rows of the printed table; None where a figure is fp32's own."""
    speed, quality = report["decode_speed"], report["quality_vs_fp32"]
    rows: list[tuple[str, list]] = [
        ("decode tok/s, 1 stream (median)", [s["median_tok_per_s"] for s in speed.values()]),
        ("decode speed vs fp32", [s["vs_fp32"] for s in speed.values()]),
    ]
    fields = [("greedy", None, key) for key in GREEDY_KEYS]
    fields += [("teacher_forced", scope, key) for scope in TF_SCOPES for key in TF_KEYS]
    for group, scope, key in fields:
        label = f"{group} {scope.split('_')[0]} {key}" if scope else f"{group} {key}"
        values = []
        for name in speed:
            figures = quality.get(name, {}).get(group)
            figures = figures[scope] if figures and scope else figures
            values.append(figures[key] if figures else None)
        rows.append((label, values))
    return rows


def print_report(report: dict) -> None:
    """The table, the sanity checks and the verdicts of `report`."""
    names = list(report["decode_speed"])
    print(f"{'metric':50}" + "".join(f"{name:>10}" for name in names))
    for label, values in table_rows(report):
        shown = [
            "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in values
        ]
        print(f"{label:50}" + "".join(f"{s:>10}" for s in shown))
    sanity = report["fp32_teacher_forcing_sanity"]
    print(
        "sanity: fp32 teacher-forced argmax vs fp32 engine greedy tokens: "
        f"{sanity['argmax_mismatches']} mismatches; max |logprob diff| vs the engine's "
        f"{sanity['max_abs_logprob_diff_vs_engine']:.2e}"
    )
    for name, figures in report["quality_vs_fp32"].items():
        tf = figures["teacher_forced"]
        print(
            f"sanity: {name}: prefill rows bit-identical to fp32: "
            f"{tf['prefill_rows_bit_identical']}; decode rows differing from fp32: "
            f"{tf['decode_rows_not_bit_identical']}/{tf['decode_rows']}; fp32 top-1 minus "
            f"top-2 margin where they disagree: {tf['fp32_top1_top2_margin_at_disagreements']}"
        )
    for verdict in report["verdicts"].values():
        meets = "meets" if verdict["meets_bar"] else "does NOT meet"
        print(
            f"verdict: decode_dtype={verdict['decode_dtype']}: teacher-forced top-1 agreement "
            f"{verdict['teacher_forced_top1_agreement_decode_steps']:.2%} over decode steps "
            f"({verdict['teacher_forced_top1_agreement_all_positions']:.2%} over all positions) "
            f"{meets} the {DEFAULT_BAR:.0%} bar for becoming the default"
        )


def parse_args() -> argparse.Namespace:
    """Command-line options (defaults: the issue's 20 prompts x 64 tokens, 2 threads)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per answer")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="first N prompts")
    parser.add_argument("--speed-tokens", type=int, default=128)
    parser.add_argument("--speed-runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args()


def main() -> None:
    """Build the three models, measure quality then speed, print and write the report."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    started, load_before = time.perf_counter(), os.getloadavg()
    path = generation_model_path()
    engines = build_engines(path, kv_cache_mb=256)
    questions = PROMPTS[: args.prompts]
    prompts = [
        engines["fp32"].tokenizer.apply_chat_template([{"role": "user", "content": q}])
        for q in questions
    ]
    loaded = time.perf_counter()
    quality, sanity = measure_quality(engines, prompts, args.tokens)
    measured = time.perf_counter()
    speed = measure_speed(engines, args.speed_tokens, args.speed_runs)
    report = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "parameters": {
            "model": path.name,
            "torch": torch.__version__,
            "threads": args.threads,
            "greedy_tokens": args.tokens,
            "ignore_eos": True,
            "prompts": list(questions),
            "prompt_tokens": [len(p) for p in prompts],
            "speed_tokens": args.speed_tokens,
            "speed_runs": args.speed_runs,
            "low_precision_max_rows": LOW_PRECISION_MAX_ROWS,
            "default_bar": DEFAULT_BAR,
        },
        "decode_speed": speed,
        "quality_vs_fp32": quality,
        "fp32_teacher_forcing_sanity": sanity,
        "verdicts": verdicts(quality),
        # The machine may be shared: 1/5/15-minute load averages at the start and the end.
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "phase_s": {
            "load": loaded - started,
            "quality": measured - loaded,
            "speed": time.perf_counter() - measured,
        },
    }
    print_report(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
