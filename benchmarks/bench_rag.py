"""RAG benchmark: chunk-KV blending modes vs full prefill on the bundled SmolLM2 (CPU threads
from args).

Each request puts 6 chunks from a pool of Wikipedia lead chunks (all pre-warmed into the chunk
KV store) in a new order and mix, with a question naming one chunk's title. Per mode:
  - TTFT through the engine, from the first output of the greedy-answer run (the prefix
    cache is flushed before every measured request, since the engine stores each blended
    prompt back as a prefix; `prefix` then warms only the template head);
  - first-token top-1 agreement and KL(full || mode), and the same teacher-forced along the
    full-prefill greedy answer (one `blended_prefill` of prompt + answer with the cached chunk
    KV; its first logits row is the first-token distribution);
  - Rouge-L (LCS F1 over token ids) of the free-running greedy answer vs the full one;
  - tokens recomputed (chunk tokens, and all tokens computed at the late layers).
Then TTFT of the default mode with chunk KV from CPU memory, from disk, and recomputed.
Selectors the engine cannot name (sink 0, adaptive, check layer 2) are put into the engine
for their mode by shadowing `engine.blender.selector_for` on the instance (nothing added to
the library). Prints tables and writes benchmarks/results/rag.json. Not a test.

    python benchmarks/bench_rag.py                                       # 50 requests
    python benchmarks/bench_rag.py --requests 3 --answer-tokens 8 --tier-requests 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from machine import machine
from rag_workload import RagCase, chunk_pool, head_prompt, kl_rows, rag_cases, rouge_l

from ragkv.assets import generation_model_path
from ragkv.engine.blend.prefill import BlendResult, blended_prefill, place_chunks
from ragkv.engine.blend.selectors import (
    CacheBlendSelector,
    CacheCraftSelector,
    LegoSelector,
    NaiveSelector,
    Selector,
)
from ragkv.engine.engine import LLMEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import KVReuse, Request
from ragkv.pipeline.prompt import rag_head
from ragkv.settings import ChunkCacheSettings, EngineSettings, ModelSettings

RESULTS = Path(__file__).parent / "results" / "rag.json"
TENANT = "bench"


@dataclass(frozen=True)
class Mode:
    """A way to serve the prompt: engine `kv_reuse`, and the selector put into the engine for
    it (None: the engine's own for `kv_reuse`)."""

    name: str
    kv_reuse: str
    selector: Selector | None = None


MODES = [
    Mode("full", "full"),
    Mode("prefix", "prefix"),
    Mode("naive", "naive", NaiveSelector()),
    *(Mode(f"cacheblend-{r:.2f}", "cacheblend", CacheBlendSelector(r)) for r in (0.05, 0.15, 0.3)),
    # `chunk_cache.adaptive_ratio`: the default's selector with the adaptive budget
    Mode(
        "cacheblend-adaptive",
        "cacheblend",
        CacheBlendSelector(adaptive=True, sink_tokens=1, refine_layers=3),
    ),
    Mode("cachecraft-0.15", "cachecraft", CacheCraftSelector(ratio=0.15)),
    Mode("lego-16", "lego", LegoSelector(num_tokens=16)),
    # the engine default: cacheblend 0.15, sink_tokens 1, check layer 1, gradual filtering
    # from 2x the budget over the next 3 layers
    Mode("default", "auto"),
    Mode(
        "cacheblend-0.15-s1-c2",
        "cacheblend",
        CacheBlendSelector(0.15, check_layer=2, sink_tokens=1),
    ),
    # CacheBlend's gradual filtering: `start` x the budget after the check layer, narrowed
    # by each next layer's deviation to the budget over `layers` layers
    *(
        Mode(
            f"cacheblend-0.15-g{layers}x{start:g}",
            "cacheblend",
            CacheBlendSelector(0.15, sink_tokens=1, refine_layers=layers, refine_start=start),
        )
        for layers, start in ((1, 2.0), (3, 2.0), (6, 3.0))
    ),
    # selection right after layer 0 (one full layer instead of two), with chunk sinks
    *(
        Mode(f"cacheblend-{r:.2f}-s{s}-c0", "cacheblend", CacheBlendSelector(r, 0, sink_tokens=s))
        for r, s in ((0.15, 1), (0.2, 1), (0.15, 8), (0.12, 4))
    ),
]


@contextmanager
def installed(engine: LLMEngine, selector: Selector | None):
    """Make the engine's blender use `selector` for every blended request meanwhile."""
    if selector is None:
        yield
        return
    engine.blender.selector_for = lambda kv_reuse, ratio: selector
    try:
        yield
    finally:
        del engine.blender.selector_for


def run_engine(
    engine: LLMEngine,
    case: RagCase,
    mode: Mode,
    max_tokens: int,
    head: list[int],
    context: tuple[int, ...],
):
    """One measured request through the engine, prefix cache flushed first; chunk KV is the
    variant computed after `context` (empty: alone)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    engine.flush_prefix()
    if mode.kv_reuse == "prefix":  # cache the shared template head, nothing more
        tiny = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
        rid = f"head-{time.perf_counter_ns()}"
        engine.generate([Request(rid, head, tiny, tenant=TENANT, kv_reuse=KVReuse.PREFIX)])
    prompt = case.prompt
    request = Request(
        f"{mode.name}-{case.number}-{time.perf_counter_ns()}",
        prompt.token_ids,
        params,
        tenant=TENANT,
        chunk_spans=tuple(prompt.spans),
        chunk_context=context,
        kv_reuse=KVReuse(mode.kv_reuse),
    )
    with installed(engine, mode.selector):
        outputs = engine.generate([request])[request.request_id]
    first = outputs[0]
    recomputed = first.tokens_recomputed
    if recomputed is None:  # plain prefill: everything after the prefix hit
        recomputed = first.prompt_tokens - first.cached_tokens
    return {
        "ttft_ms": first.ttft_ms,
        "tokens": [t for o in outputs for t in o.token_ids],
        "tokens_recomputed": recomputed,
        "chunk_tokens_recomputed": prompt.num_chunk_tokens - first.chunk_tokens_reused,
        "cached_tokens": first.cached_tokens,
        "selector": first.selector,
    }


def teacher_forced(
    engine: LLMEngine,
    case: RagCase,
    answer: list[int],
    selector: Selector | None,
    context: tuple[int, ...] = (),
) -> tuple[torch.Tensor, BlendResult]:
    """Logits `[len(answer), vocab]` predicting each answer token, prompt + answer fed at once:
    a plain full prefill (selector None) or blended with the cached chunk KV."""
    prompt, model = case.prompt, engine.model
    ids = prompt.token_ids + answer[:-1]
    spans, chunk_kv = [], []
    if selector is None:
        selector = NaiveSelector()
    else:
        spans = prompt.spans
        chunk_kv = [
            engine.blender.chunk_kv(TENANT, prompt.token_ids[s.start : s.end], context)[0]
            for s in spans
        ]
    kv = place_chunks(model, len(ids), chunk_kv, spans)
    result = blended_prefill(model, torch.tensor(ids), kv, spans, selector, num_logits=len(answer))
    return result.logits.reshape(len(answer), -1), result


def tier_ttft(
    engine: LLMEngine,
    cases: list[RagCase],
    source: str,
    head: list[int],
    context: tuple[int, ...],
) -> dict:
    """TTFT of the default mode with every chunk's KV from `source`: cpu, disk or recompute."""
    store = engine.blender.store
    ttfts, counters = [], Counter()
    for case in cases:
        if source == "disk":  # memory tiers emptied, the cost model made to load
            for tier in store.memory:
                tier.entries.clear()
                tier.num_bytes = 0
            store.cost.disk_bytes_s = 1e12
        elif source == "recompute":
            store.flush()
        before = Counter(store.counts)
        ttfts.append(run_engine(engine, case, Mode("default", "auto"), 1, head, context)["ttft_ms"])
        counters.update(Counter(store.counts) - before)
    return {"ttft_ms_median": statistics.median(ttfts), "ttft_ms": ttfts, "store": dict(counters)}


def summarize(rows: dict[str, list], full_ttft: float) -> dict[str, float]:
    mean = lambda key: statistics.fmean(rows[key])  # noqa: E731
    ttft = statistics.median(rows["ttft_ms"])
    return {
        "ttft_ms_median": ttft,
        "ttft_ms_mean": mean("ttft_ms"),
        "speedup": full_ttft / ttft,
        "first_token_agreement": mean("first_agree"),
        "first_token_kl": mean("first_kl"),
        "tf_agreement": mean("tf_agree"),
        "tf_kl": mean("tf_kl"),
        "rouge_l": mean("rouge_l"),
        "chunk_tokens": mean("chunk_tokens"),
        "chunk_tokens_recomputed": mean("chunk_tokens_recomputed"),
        "chunk_tokens_recomputed_blend": mean("chunk_recomputed_blend"),
        "tokens_recomputed": mean("tokens_recomputed"),
        "cached_tokens": mean("cached_tokens"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--chunks-per-request", type=int, default=6)
    parser.add_argument("--pool", type=int, default=24, help="chunks in the pool")
    parser.add_argument("--min-chunk-tokens", type=int, default=200)
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--answer-tokens", type=int, default=32)
    parser.add_argument("--tier-requests", type=int, default=5, help="0 skips the tier runs")
    parser.add_argument("--modes", default="all", help="comma list of mode names (full always)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-cache-mb", type=int, default=1024)
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--context-variant",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="chunk KV computed after the RAG head, or alone (the default)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    wanted = set(args.modes.split(",")) | {"full"} if args.modes != "all" else None
    modes = [m for m in MODES if wanted is None or m.name in wanted]
    if wanted is not None and wanted - {m.name for m in modes}:
        parser.error(f"unknown modes {sorted(wanted - {m.name for m in modes})}")
    started = time.perf_counter()
    data_dir = tempfile.TemporaryDirectory(prefix="ragkv-bench-rag-")
    engine = LLMEngine.from_path(
        generation_model_path(),
        ModelSettings(num_threads=args.threads),
        EngineSettings(kv_cache_mb=args.kv_cache_mb, max_batch_tokens=args.max_batch_tokens),
        ChunkCacheSettings(),
        data_dir=Path(data_dir.name),
    )
    tokenizer = engine.tokenizer
    pool = chunk_pool(tokenizer, args.pool, args.min_chunk_tokens, args.chunk_tokens, args.seed)
    cases = rag_cases(tokenizer, pool, args.requests, args.chunks_per_request, args.seed)
    head = head_prompt(tokenizer)
    context = tuple(rag_head(tokenizer)) if args.context_variant else ()
    prewarm_started = time.perf_counter()
    engine.prewarm(TENANT, [p.token_ids for p in pool], context)
    prewarm_s = time.perf_counter() - prewarm_started
    for mode in (MODES[0], Mode("default", "auto")):  # warm-up, not recorded
        run_engine(engine, cases[0], mode, 2, head, context)

    rows: dict[str, dict[str, list]] = {m.name: defaultdict(list) for m in modes}
    answer_match: list[float] = []  # plain prefill's top-1 vs the engine's full-mode answer
    for case in cases:
        answer, reference = [], None
        for mode in modes:
            got = run_engine(engine, case, mode, args.answer_tokens, head, context)
            if mode.name == "full":
                answer = got["tokens"]
                reference, _ = teacher_forced(engine, case, answer, None)
                answer_match.append(
                    float((reference.argmax(-1) == torch.tensor(answer)).float().mean())
                )
            if mode.kv_reuse in ("full", "prefix"):  # exact KV: the reference by construction
                logits, chunk_blend = reference, case.prompt.num_chunk_tokens
            else:
                selector = mode.selector or engine.blender.selector_for(
                    KVReuse(mode.kv_reuse), None
                )
                logits, result = teacher_forced(engine, case, answer, selector, context)
                chunk_blend = result.num_chunk_recomputed
            kl = kl_rows(reference, logits)
            agree = (logits.argmax(-1) == reference.argmax(-1)).float()
            row = rows[mode.name]
            for key in ("ttft_ms", "tokens_recomputed", "chunk_tokens_recomputed", "cached_tokens"):
                row[key].append(got[key])
            row["chunk_tokens"].append(case.prompt.num_chunk_tokens)
            row["chunk_recomputed_blend"].append(chunk_blend)
            row["first_agree"].append(float(agree[0]))
            row["first_kl"].append(float(kl[0]))
            row["tf_agree"].append(float(agree.mean()))
            row["tf_kl"].append(float(kl.mean()))
            row["rouge_l"].append(rouge_l(got["tokens"], answer))
        ttft = {name: round(r["ttft_ms"][-1]) for name, r in rows.items()}
        print(f"request {case.number + 1}/{len(cases)}: TTFT ms {ttft}", flush=True)

    full_ttft = statistics.median(rows["full"]["ttft_ms"])
    summary = {name: summarize(r, full_ttft) for name, r in rows.items()}
    tiers = {}
    if args.tier_requests and engine.blender.store.disk is not None:
        tier_cases = cases[: args.tier_requests]
        tiers = {
            s: tier_ttft(engine, tier_cases, s, head, context) for s in ("cpu", "disk", "recompute")
        }

    prompt_tokens = [len(c.prompt.token_ids) for c in cases]
    report = {
        "machine": machine(),
        "threads": args.threads,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model": generation_model_path().name,
        "pool": [{"title": p.title, "tokens": len(p.token_ids)} for p in pool],
        "prompt_tokens_mean": statistics.fmean(prompt_tokens),
        "prompt_tokens_max": max(prompt_tokens),
        "prewarm_s": prewarm_s,
        "modes": summary,
        "curve": sorted(
            (
                {"mode": n, **{k: s[k] for k in ("speedup", "tf_agreement", "tf_kl", "rouge_l")}}
                for n, s in summary.items()
            ),
            key=lambda point: point["speedup"],
        ),
        "tiers_default_mode": tiers,
        "chunk_stats": engine.chunk_stats(),
        "blend_fallbacks": engine.blender.stats.fallbacks,
        "reference_top1_matches_engine_answer": statistics.fmean(answer_match),
        "wall_s": time.perf_counter() - started,
    }
    print_tables(report)
    engine.close()
    data_dir.cleanup()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output} ({report['wall_s']:.0f} s)")


def print_tables(report: dict) -> None:
    print(
        f"\n{report['args']['requests']} requests, prompt {report['prompt_tokens_mean']:.0f} "
        f"tokens mean, {report['args']['answer_tokens']} answer tokens"
    )
    head = ("mode", "speedup", "TTFT ms", "1st agr", "1st KL", "TF agr", "TF KL", "RougeL")
    print(f"{head[0]:24}" + "".join(f"{h:>9}" for h in head[1:]) + "  recomputed chunk/all")
    for name, s in report["modes"].items():
        values = (s["speedup"], s["ttft_ms_median"], s["first_token_agreement"])
        values += (s["first_token_kl"], s["tf_agreement"], s["tf_kl"], s["rouge_l"])
        cells = "".join(f"{v:9.2f}" if i != 1 else f"{v:9.0f}" for i, v in enumerate(values))
        chunk, total = s["chunk_tokens_recomputed"], s["tokens_recomputed"]
        print(f"{name:24}{cells}  {chunk:.0f}/{s['chunk_tokens']:.0f} / {total:.0f}")
    print("\nquality vs speedup (by speedup)")
    for point in report["curve"]:
        print(
            f"{point['speedup']:6.2f}x  TF agreement {point['tf_agreement']:.3f}  "
            f"TF KL {point['tf_kl']:.4f}  Rouge-L {point['rouge_l']:.3f}  {point['mode']}"
        )
    for source, tier in report["tiers_default_mode"].items():
        print(
            f"default mode, chunk KV from {source:9}: TTFT {tier['ttft_ms_median']:7.0f} ms "
            f"median  {tier['store']}"
        )
    if report["blend_fallbacks"]:
        print(f"WARNING: {report['blend_fallbacks']} blended prefills fell back to full")


if __name__ == "__main__":
    main()
