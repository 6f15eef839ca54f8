"""A short start-up calibration of the decode GEMV layout on the CPU at hand.

Decode reads every projection weight once per token, so its speed is how fast the cores
stream weights. Splitting each `[in, out]` weight into one column block per thread and
running the blocks as one batched GEMM made every core stream its own block on the CPU the
layout was tuned on (1.5x decode, benchmarks/README.md), but the gain is a property of that
processor's memory system and BLAS. So at start the engine times the candidate layouts on
weights of the model's own shapes, more of them than any cache holds, and keeps the fastest.
Every layout computes the same products; only the order of memory reads changes.

`model.decode_dtype = auto` is timed the same way: float16 copies of the projections halve
the bytes a decode step streams, but how fast a CPU multiplies float16 depends on its
instruction set and BLAS, so they are kept only where they measure clearly faster here.
Their quality was measured against fp32 (benchmarks/decode_precision.py: teacher-forced top-1
agreement 99.6% on SmolLM2); `same` keeps decode exact.

`model.batched_gemm = auto` times products of several rows (batched decode, prefill) in
torch's BLAS and in oneDNN alike (`ragkv.engine.gemm`) and hands them to oneDNN from the
smallest row count where it is as fast from there on.

`model.batch_dtype = auto` times oneDNN's bfloat16 products of a batched decode step against
float32 ones and keeps bfloat16 copies of the projections for batched decode where they are
clearly faster (a CPU with bfloat16 instructions); the LM head stays float32. On a CPU with
AVX512-BF16 the native batched step's products are timed against oneDNN's bfloat16 ones too
(`native_batches_for`): the engine keeps the native step unless it is clearly slower. Their quality
was measured against fp32 (benchmarks/decode_precision.py: teacher-forced top-1 agreement
99.5% on SmolLM2, 20 prompts x 64 tokens, batched as served).
"""

from __future__ import annotations

import logging
import statistics
import time

import torch

from ragkv.engine.config import ModelConfig
from ragkv.engine.gemm import Gemm, OneDNNPacks, onednn_available, onednn_bf16_available
from ragkv.engine.model import _low_precision
from ragkv.engine.runtime import DTYPES
from ragkv.kernels import cpu_decode
from ragkv.settings import ModelSettings

log = logging.getLogger("ragkv.engine")

STREAM_BYTES = 48 * 1024 * 1024  # weights streamed per timing: past any last-level cache
# `decode_dtype = auto` keeps float16 decode weights only when their GEMVs are at least this
# much faster than the float32 layout in use: a marginal gain is not worth inexact decode.
AUTO_FP16_MIN_SPEEDUP = 1.15
# `batch_dtype = auto` keeps bfloat16 batched decode only when its products of
# `BATCH_CALIBRATION_ROWS` rows time at least this much faster than float32 ones.
AUTO_BF16_MIN_SPEEDUP = 1.15
BATCH_CALIBRATION_ROWS = 16
# The native batched step (`kernels/cpu_bf16.c`) replaces oneDNN's bfloat16 products and the
# ~1,300 small ops around them, so it is kept unless its products alone time more than this
# much slower than oneDNN's here (a CPU whose oneDNN has faster bfloat16 units, such as AMX).
NATIVE_BATCH_MAX_SLOWDOWN = 1.25
# Row counts at which `batched_gemm = auto` compares oneDNN with BLAS; `onednn` starts at the
# first. One row stays on the GEMV layout (oneDNN was 1.8x slower there on an AMD EPYC).
ONEDNN_ROW_CANDIDATES = (2, 4, 8, 16, 32)


def candidate_blocks(threads: int) -> list[int]:
    """Layouts worth timing for `threads` torch threads: one matrix, and one or two blocks
    per thread."""
    return sorted({1, threads, 2 * threads} - {0})


def gemv_weights(config: ModelConfig, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """`STREAM_BYTES` of fp32 gate/up-shaped weights, transposed `[in, out]` as the model
    stores them, or their `dtype` decode copies (random values: the speed does not depend
    on them)."""
    in_features, out_features = config.hidden_size, 2 * config.intermediate_size
    count = max(2, STREAM_BYTES // (in_features * out_features * 4))
    generator = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(out_features, in_features, generator=generator).t().contiguous()
        for _ in range(count)
    ]
    if dtype is not None:
        weights = [_low_precision(weight, dtype) for weight in weights]
    return weights


def time_pass(
    weights: list[torch.Tensor], gemm: Gemm, rows: int = 1, packs: OneDNNPacks | None = None
) -> float:
    """Seconds of one product of `rows` rows with each of `weights`, run as `gemm` runs it
    (on their `packs` where oneDNN takes it, as the model does)."""
    x = torch.ones(rows, weights[0].shape[0])
    started = time.perf_counter()
    for weight in weights:
        gemm.matmul(x, weight, None, None if packs is None else packs.get(weight))
    return time.perf_counter() - started


def time_layout(config: ModelConfig, blocks: int, reps: int = 3) -> float:
    """Median seconds of one-row GEMVs over `gemv_weights(config)` in `blocks` column blocks."""
    weights, gemm = gemv_weights(config), Gemm(blocks)
    time_pass(weights[:2], gemm)  # warm-up: first-touch and BLAS set-up
    return statistics.median(time_pass(weights, gemm) for _ in range(reps))


def calibrate_column_blocks(config: ModelConfig, threads: int) -> tuple[int, dict[int, float]]:
    """The fastest column-block count for decode GEMVs here, with each candidate's time
    (ms per `STREAM_BYTES` streamed). Takes about a second."""
    timings = {b: time_layout(config, b) * 1000 for b in candidate_blocks(threads)}
    best = min(timings, key=timings.__getitem__)
    shown = ", ".join(f"{b} block(s) {ms:.1f} ms" for b, ms in timings.items())
    log.info("decode GEMV layout calibration: %s -> %d", shown, best)
    return best, timings


def column_blocks_for(layout: str, config: ModelConfig, device: torch.device) -> int:
    """Column blocks for the `model.gemm_layout` setting: `joined` 1, `blocked` one per
    torch thread, `auto` calibrated here (CPU with several threads; else 1)."""
    threads = torch.get_num_threads() if torch.device(device).type == "cpu" else 1
    if layout == "joined" or threads == 1:
        return 1
    if layout == "blocked":
        return threads
    return calibrate_column_blocks(config, threads)[0]


def decode_dtype_for(
    setting: str, config: ModelConfig, dtype: torch.dtype, device: torch.device, blocks: int
) -> torch.dtype | None:
    """The decode weights' dtype for the `model.decode_dtype` setting (None: `dtype`, exact).
    `auto`: float16 on a CPU serving float32 where its GEMVs time `AUTO_FP16_MIN_SPEEDUP`
    faster than float32 in the `blocks` layout; exact everywhere else."""
    if setting == "same":
        return None
    if setting != "auto":
        return DTYPES[setting]
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return None
    fp32, fp16 = time_dtypes(config, blocks)
    chosen = torch.float16 if fp32 >= AUTO_FP16_MIN_SPEEDUP * fp16 else None
    log.info(
        "decode dtype calibration: float32 %.1f ms, float16 %.1f ms per %d MB -> %s",
        fp32 * 1000, fp16 * 1000, STREAM_BYTES >> 20, "float16" if chosen else "float32",
    )  # fmt: skip
    return chosen


def time_dtypes(config: ModelConfig, blocks: int, reps: int = 9) -> tuple[float, float]:
    """Median seconds of a GEMV pass in float32 (`blocks` layout) and in float16 copies,
    timed alternately so that a busy moment of the machine hits both alike."""
    fp32, fp16 = gemv_weights(config), gemv_weights(config, torch.float16)
    return alternate_medians(
        (lambda: time_pass(fp32, Gemm(blocks))), lambda: time_pass(fp16, Gemm(blocks)), reps
    )


def alternate_medians(first, second, reps: int) -> tuple[float, float]:
    """Median seconds of `first()` and of `second()` (each returns seconds), called
    alternately after one warm-up call each."""
    times = alternate_times(first, second, reps)
    return statistics.median(times[0]), statistics.median(times[1])


def alternate_times(first, second, reps: int) -> tuple[list[float], list[float]]:
    """`reps` seconds each of `first()` and `second()`, called alternately after one warm-up
    call each."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(reps):
        times[0].append(first())
        times[1].append(second())
    return times


def calibrate_onednn_rows(
    config: ModelConfig, blocks: int, reps: int = 5
) -> tuple[int | None, dict[int, tuple[float, float]]]:
    """The fewest rows from which oneDNN is at least as fast as BLAS (`blocks` layout) at
    every candidate row count, None where it loses at the largest; with each candidate's
    (BLAS, oneDNN) milliseconds per `STREAM_BYTES`. Takes well under a second."""
    weights = gemv_weights(config)
    blas, onednn, packs = Gemm(blocks), Gemm(blocks, onednn_min_rows=1), OneDNNPacks(weights)
    timings = {
        rows: alternate_medians(
            lambda rows=rows: time_pass(weights, blas, rows),
            lambda rows=rows: time_pass(weights, onednn, rows, packs),
            reps,
        )
        for rows in ONEDNN_ROW_CANDIDATES
    }
    chosen = None
    for rows in reversed(ONEDNN_ROW_CANDIDATES):
        if timings[rows][1] > timings[rows][0]:
            break
        chosen = rows
    shown = ", ".join(f"{r} rows {b * 1e3:.1f}/{o * 1e3:.1f} ms" for r, (b, o) in timings.items())
    log.info("batched GEMM calibration (BLAS/oneDNN): %s -> oneDNN from %s rows", shown, chosen)
    return chosen, {r: (b * 1e3, o * 1e3) for r, (b, o) in timings.items()}


def onednn_rows_for(
    setting: str, config: ModelConfig, dtype: torch.dtype, device: torch.device, blocks: int
) -> int | None:
    """oneDNN's first row count for the `model.batched_gemm` setting: `blas` None, `onednn`
    the first candidate, `auto` calibrated here; None off a CPU, for weights oneDNN does not
    serve, or (`auto`) where torch has no oneDNN."""
    if setting == "blas" or torch.device(device).type != "cpu" or dtype != torch.float32:
        return None
    if not onednn_available():
        if setting == "onednn":
            raise ValueError("model.batched_gemm = onednn: this torch build has no oneDNN")
        return None
    if setting == "onednn":
        return ONEDNN_ROW_CANDIDATES[0]
    return calibrate_onednn_rows(config, blocks)[0]


def batch_dtype_for(
    setting: str, dtype: torch.dtype, device: torch.device, gemm: Gemm, config: ModelConfig
) -> torch.dtype | None:
    """The batched-decode weights' dtype for the `model.batch_dtype` setting (None: `dtype`,
    exact). `bfloat16` needs oneDNN's native bfloat16 products on a float32 CPU model (a
    clear error elsewhere); `auto` keeps it where `gemm` uses oneDNN and its products time
    `AUTO_BF16_MIN_SPEEDUP` faster than float32 ones."""
    if setting == "same":
        return None
    usable = (
        torch.device(device).type == "cpu"
        and dtype == torch.float32
        and gemm.onednn_min_rows is not None
        and onednn_bf16_available()
    )
    if setting == "bfloat16":
        if not usable:
            raise ValueError(
                "model.batch_dtype = bfloat16 needs a float32 model on a CPU whose oneDNN "
                "multiplies bfloat16 natively, with model.batched_gemm auto or onednn"
            )
        return torch.bfloat16
    if not usable:
        return None
    fp32, bf16 = time_batch_dtypes(config, gemm)
    chosen = torch.bfloat16 if fp32 >= AUTO_BF16_MIN_SPEEDUP * bf16 else None
    log.info(
        "batched decode dtype calibration (%d rows): float32 %.1f ms, bfloat16 %.1f ms -> %s",
        BATCH_CALIBRATION_ROWS, fp32 * 1e3, bf16 * 1e3, "bfloat16" if chosen else "float32",
    )  # fmt: skip
    return chosen


def time_batch_dtypes(config: ModelConfig, gemm: Gemm, reps: int = 5) -> tuple[float, float]:
    """Median seconds of `BATCH_CALIBRATION_ROWS`-row products over `gemv_weights(config)`
    in float32 and in bfloat16 copies, as `gemm` runs them, timed alternately."""
    rows = max(BATCH_CALIBRATION_ROWS, gemm.onednn_min_rows or 1)
    fp32, bf16 = gemv_weights(config), gemv_weights(config, torch.bfloat16)
    fp32_packs, bf16_packs = OneDNNPacks(fp32), OneDNNPacks(bf16)
    return alternate_medians(
        lambda: time_pass(fp32, gemm, rows, fp32_packs),
        lambda: time_pass(bf16, gemm, rows, bf16_packs),
        reps,
    )


def calibrated_products(
    settings: ModelSettings, config: ModelConfig, dtype: torch.dtype, device: torch.device
) -> tuple[Gemm, torch.dtype | None, torch.dtype | None]:
    """The products of a model for its `model.*` settings, each `auto` one timed here:
    (the GEMM layout and library, the one-row decode dtype, the batched decode dtype)."""
    blocks = column_blocks_for(settings.gemm_layout, config, device)
    gemm = Gemm(blocks, onednn_rows_for(settings.batched_gemm, config, dtype, device, blocks))
    if settings.decode_dtype == "auto" and native_decode_ready(settings, dtype, device):
        # the native step reads float16 weights with float32 activations: faster and closer
        # to float32 than the torch float16 path that `decode_dtype_for` times
        decode_dtype = torch.float16
    else:
        decode_dtype = decode_dtype_for(settings.decode_dtype, config, dtype, device, blocks)
    return gemm, decode_dtype, batch_dtype_for(settings.batch_dtype, dtype, device, gemm, config)


def native_batches_for(
    settings: ModelSettings,
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    gemm: Gemm,
    batch_dtype: torch.dtype | None,
) -> bool:
    """Whether batched decode steps run natively on bfloat16 panels: bfloat16 batches, the
    native step ready, a CPU with AVX512-BF16, and its products timed here against oneDNN's
    (`NATIVE_BATCH_MAX_SLOWDOWN`)."""
    if batch_dtype != torch.bfloat16 or not native_decode_ready(settings, dtype, device):
        return False
    if not cpu_decode.bf16_supported():
        return False
    native, onednn = time_native_batches(config, gemm)
    chosen = native <= NATIVE_BATCH_MAX_SLOWDOWN * onednn
    log.info(
        "batched decode calibration (%d rows, bfloat16): native %.1f ms, oneDNN %.1f ms -> %s",
        BATCH_CALIBRATION_ROWS, native * 1e3, onednn * 1e3, "native" if chosen else "oneDNN",
    )  # fmt: skip
    return chosen


def time_native_batches(config: ModelConfig, gemm: Gemm, reps: int = 7) -> tuple[float, float]:
    """Fastest seconds of `BATCH_CALIBRATION_ROWS`-row bfloat16 products over
    `gemv_weights(config)`: on the library's panels, and on oneDNN's packs as `gemm` runs
    them, timed alternately. The fastest, not the median: other work on the machine only
    adds time, and it hurt the native products' barriers more (under a test run beside it,
    median 5.6 vs 2.4 ms; alone 1.4-1.6 vs 2.1-2.5 ms)."""
    rows = max(BATCH_CALIBRATION_ROWS, gemm.onednn_min_rows or 1)
    weights = gemv_weights(config, torch.bfloat16)
    packs = OneDNNPacks(weights)
    panels = [cpu_decode.pack_bf16_panels(weight.t()) for weight in weights]
    x = torch.ones(rows, weights[0].shape[0])

    def native() -> float:
        started = time.perf_counter()
        for panel, weight in zip(panels, weights, strict=True):
            cpu_decode.gemm_bf16(x, panel, weight.shape[1])
        return time.perf_counter() - started

    native_s, onednn_s = alternate_times(
        native, lambda: time_pass(weights, gemm, rows, packs), reps
    )
    return min(native_s), min(onednn_s)


def native_decode_ready(settings: ModelSettings, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether decode steps will run natively (`ragkv.engine.native_decode`) once the model
    has float16 decode weights: asked for, on a CPU serving float32, the library built."""
    if settings.native_decode != "auto" or torch.device(device).type != "cpu":
        return False
    if settings.backend == "triton":  # the native step replaces the torch ops only
        return False
    return dtype == torch.float32 and cpu_decode.load() is not None
