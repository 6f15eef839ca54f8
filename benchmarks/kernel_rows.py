"""Row-kernel benchmark: each Triton pointwise/row kernel (RMSNorm, add + RMSNorm, SwiGLU,
RoPE, K deviation, top-k) against its torch reference in `ops`, on CUDA.

`bench_pointwise(dry_run=False)` times both sides with `triton.testing.do_bench` at a Llama-3
8B-sized step (4,096 tokens, hidden 4,096, I 14,336, 32/8 heads of 128, bf16) and reports the
achieved GB/s (bytes each op must move once, over its median time) and the speed-up.
`dry_run=True` runs each kernel once on tiny CPU shapes under the Triton interpreter and
reports only the largest difference from the reference: no timings. Call the dry run in a
fresh process: the interpreter is switched on (`TRITON_INTERPRET=1`) before the kernel
modules are imported. Not a test: nothing is asserted.

    python benchmarks/kernel_rows.py [--dry-run]   # prints a table, writes results/ JSON
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "kernel_rows.json"


@dataclass(frozen=True)
class Sizes:
    """One step's shapes: tokens, hidden, intermediate, q/kv heads, head dim, top-k share."""

    tokens: int
    hidden: int
    intermediate: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    topk_share: float = 0.15


GPU_SIZES = Sizes(4096, 4096, 14336, 32, 8, 128, torch.bfloat16)
DRY_SIZES = Sizes(17, 96, 80, 4, 2, 16, torch.float32)


@dataclass(frozen=True)
class Case:
    """One op: its shape in words, the bytes it must move, and both sides as closures."""

    op: str
    shape: str
    bytes_moved: int
    triton_fn: Callable[[], object]
    torch_fn: Callable[[], object]


def _random(sizes: Sizes, device: str) -> Callable[..., torch.Tensor]:
    """A seeded standard-normal tensor maker in `sizes.dtype` on `device`."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=sizes.dtype)

    return randn


def _norm_cases(s: Sizes, device: str) -> list[Case]:
    """RMSNorm, add + RMSNorm and SwiGLU on random inputs of `s`."""
    from ragkv.kernels import ops, triton_activation, triton_norm

    randn, item, eps = _random(s, device), s.dtype.itemsize, 1e-5
    x, delta, weight = randn(s.tokens, s.hidden), randn(s.tokens, s.hidden), randn(s.hidden)
    gate_up = randn(s.tokens, 2 * s.intermediate)
    shape = f"T={s.tokens} hidden={s.hidden}"
    return [
        Case(
            "rms_norm",
            shape,
            (2 * s.tokens + 1) * s.hidden * item,
            lambda: triton_norm.rms_norm(x, weight, eps),
            lambda: ops.rms_norm_fused(x, weight, eps),
        ),
        Case(
            "add_rms_norm",
            shape,
            (4 * s.tokens + 1) * s.hidden * item,
            lambda: triton_norm.add_rms_norm(x, delta, weight, eps),
            lambda: ops.add_rms_norm_ref(x, delta, weight, eps),
        ),
        Case(
            "silu_mul",
            f"T={s.tokens} I={s.intermediate}",
            3 * s.tokens * s.intermediate * item,
            lambda: triton_activation.silu_mul(gate_up),
            lambda: ops.silu_mul_ref(gate_up),
        ),
    ]


def _rope_select_cases(s: Sizes, device: str) -> list[Case]:
    """In-place RoPE on the q/k heads of a fused qkv buffer, K deviation and top-k."""
    from ragkv.kernels import ops, triton_rope, triton_select

    randn, item = _random(s, device), s.dtype.itemsize
    rotated = s.num_heads + s.num_kv_heads
    qkv = randn(s.tokens, rotated + s.num_kv_heads, s.head_dim)
    # Each side rotates its own copy of the q/k heads in place, as the engine's forward does.
    qk_triton, qk_torch = qkv[:, :rotated], qkv.clone()[:, :rotated]
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, s.head_dim, 2, device=device) / s.head_dim))
    positions = torch.arange(s.tokens, device=device)
    cos, sin = ops.rope_cos_sin(positions, inv_freq.float(), s.dtype)
    fresh = randn(s.tokens, s.num_kv_heads, s.head_dim)
    cached = randn(s.tokens, s.num_kv_heads, s.head_dim)
    scores = randn(s.tokens).float()
    k = max(1, int(s.topk_share * s.tokens))
    return [
        Case(
            "apply_rope (in place, qkv view)",
            f"T={s.tokens} heads={rotated} D={s.head_dim}",
            2 * s.tokens * (rotated + 1) * s.head_dim * item,
            lambda: triton_rope.apply_rope(qk_triton, cos, sin, out=qk_triton),
            lambda: ops.apply_rope_ref(qk_torch, cos, sin, out=qk_torch),
        ),
        Case(
            "k_deviation",
            f"S={s.tokens} KH={s.num_kv_heads} D={s.head_dim}",
            2 * s.tokens * s.num_kv_heads * s.head_dim * item + s.tokens * 4,
            lambda: triton_select.k_deviation(fresh, cached),
            lambda: ops.k_deviation_ref(fresh, cached),
        ),
        Case(
            "topk_indices",
            f"N={s.tokens} k={k} fp32",
            s.tokens * 4 + k * 8,
            lambda: triton_select.topk_indices(scores, k),
            lambda: ops.topk_indices_ref(scores, k),
        ),
    ]


def _cases(sizes: Sizes, device: str) -> list[Case]:
    """Both sides of every op on random inputs of `sizes`, on `device`."""
    return _norm_cases(sizes, device) + _rope_select_cases(sizes, device)


def _max_difference(got: object, want: object) -> float:
    """Largest absolute difference between two results (tensors or tuples of tensors)."""
    if isinstance(got, tuple):
        return max(_max_difference(g, w) for g, w in zip(got, want, strict=True))
    return float((got.double() - want.double()).abs().max())


def _timed_row(case: Case) -> dict:
    from triton.testing import do_bench

    triton_ms = do_bench(case.triton_fn, return_mode="median")
    torch_ms = do_bench(case.torch_fn, return_mode="median")
    return {
        "op": case.op,
        "shape": case.shape,
        "triton_ms": round(triton_ms, 4),
        "torch_ms": round(torch_ms, 4),
        "triton_gbps": round(case.bytes_moved / triton_ms / 1e6, 1),
        "torch_gbps": round(case.bytes_moved / torch_ms / 1e6, 1),
        "speedup": round(torch_ms / triton_ms, 2),
    }


def bench_pointwise(dry_run: bool) -> list[dict]:
    """One row per op. Timed on CUDA (bf16, `GPU_SIZES`); with `dry_run`, each kernel runs
    once on tiny fp32 CPU shapes under the Triton interpreter and its row holds only the
    largest difference from the torch reference (`max_abs_diff`), no timing."""
    if dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        rows = []
        for case in _cases(DRY_SIZES, "cpu"):
            difference = _max_difference(case.triton_fn(), case.torch_fn())
            rows.append({"op": case.op, "shape": case.shape, "dry_run": True})
            rows[-1]["max_abs_diff"] = difference
        return rows
    if not torch.cuda.is_available():
        raise RuntimeError("timing the row kernels needs CUDA; use dry_run=True on the CPU")
    rows = []
    for case in _cases(GPU_SIZES, "cuda"):
        rows.append({**_timed_row(case), "dtype": str(GPU_SIZES.dtype).removeprefix("torch.")})
    return rows


def main() -> None:
    """Print the table; a timed run also writes `results/kernel_rows.json`."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU shapes, no timing")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("timing needs a CUDA device; --dry-run checks the kernels on the CPU")
    rows = bench_pointwise(args.dry_run)
    columns = list(rows[0])
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[column]) for column in columns))
    if not args.dry_run:
        record = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
        RESULTS.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
