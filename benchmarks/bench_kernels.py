"""Kernel benchmark: the Triton attention kernels on CUDA, against what they replace.

Rows:
- prefill: `triton_attention.paged_attention` on 8 sequences x 2,048 tokens (H=32, KH=8,
  D=128, bf16, pages of 16 in order) vs `F.scaled_dot_product_attention` on the flash backend
  over the same tensors laid out contiguously; `vs_sdpa` = SDPA time / Triton time (above 1:
  Triton faster). TFLOP/s counts the causal half only.
- decode: the split-K decode kernel on 64 sequences x 4,096 keys (pages scattered): achieved
  bandwidth (bytes of K and V read / time) and its share of `--peak-gbps` (default 4,800, the
  H200's HBM3e).

Timed with `triton.testing.do_bench` (median). `--dry-run` runs every row once on tiny fp32
shapes on the CPU under Triton's interpreter and reports only the largest difference from the
torch reference: it proves the script without a GPU and claims no timing.
Not a test: nothing is asserted. Prints a table; writes JSON (`--json PATH`, by default
results/kernels.json for a timed run).

    python benchmarks/bench_kernels.py [--dry-run] [--peak-gbps 4800] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from machine import machine

RESULTS = Path(__file__).parent / "results" / "kernels.json"
PAGE_SIZE = 16


@dataclass(frozen=True)
class Shape:
    """Sequences, tokens per prefill sequence, decode context, heads, head dim, dtype."""

    prefill_seqs: int
    prefill_len: int
    decode_seqs: int
    decode_ctx: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype


GPU_SHAPE = Shape(8, 2048, 64, 4096, 32, 8, 128, torch.bfloat16)
DRY_SHAPE = Shape(2, 40, 4, 600, 4, 2, 32, torch.float32)


def _paged_kv(shape: Shape, kv_lens: list[int], device: str, scatter: bool):
    """Random K/V caches holding `kv_lens` tokens per sequence and their CSR page table
    (pages in order, or shuffled with `scatter`)."""
    generator = torch.Generator().manual_seed(0)
    pages_needed = [-(-n // PAGE_SIZE) for n in kv_lens]
    total_pages = sum(pages_needed)
    cache_shape = (total_pages, PAGE_SIZE, shape.num_kv_heads, shape.head_dim)
    k_cache = torch.randn(cache_shape, generator=generator).to(device, shape.dtype)
    v_cache = torch.randn(cache_shape, generator=generator).to(device, shape.dtype)
    order = torch.randperm(total_pages, generator=generator) if scatter else None
    pages = order if order is not None else torch.arange(total_pages)
    indptr = torch.tensor([0, *torch.tensor(pages_needed).cumsum(0).tolist()])
    return k_cache, v_cache, indptr.to(device), pages.to(device)


def _queries(shape: Shape, num_tokens: int, device: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(num_tokens, shape.num_heads, shape.head_dim, generator=generator)
    return q.to(device, shape.dtype)


def _sdpa_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """A closure of causal SDPA on `[B, H, S, D]` tensors: flash backend on CUDA (KV heads
    expanded when flash refuses GQA), the default backend on the CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    group = q.shape[1] // k.shape[1]
    if q.device.type != "cuda":
        return lambda: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=True
        )

    def flash() -> torch.Tensor:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=scale, enable_gqa=True
            )

    try:
        flash()
        return flash
    except RuntimeError:
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        return lambda: _flash_dense(q, k, v, scale)


def _flash_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale
        )


def _prefill_row(shape: Shape, device: str, dry_run: bool) -> dict:
    """The prefill kernel vs SDPA on the same causal prefill batch."""
    from ragkv.kernels import triton_attention as ta

    seqs, length = shape.prefill_seqs, shape.prefill_len
    scale = shape.head_dim**-0.5
    kv_lens = [length] * seqs
    k_cache, v_cache, kv_indptr, kv_indices = _paged_kv(shape, kv_lens, device, scatter=False)
    q = _queries(shape, seqs * length, device)
    positions = torch.arange(length, device=device).repeat(seqs)
    qo_indptr = [b * length for b in range(seqs + 1)]
    plan = ta.plan_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, positions, PAGE_SIZE)

    def dense(cache: torch.Tensor) -> torch.Tensor:  # pages in order: a view, no copy
        per_seq = cache.view(seqs, -1, shape.num_kv_heads, shape.head_dim)
        return per_seq[:, :length].transpose(1, 2)

    q_dense = q.view(seqs, length, shape.num_heads, shape.head_dim).transpose(1, 2)
    sdpa = _sdpa_flash(q_dense, dense(k_cache), dense(v_cache), scale)
    triton_fn = lambda: ta.paged_attention(q, k_cache, v_cache, plan, scale)  # noqa: E731
    row = {
        "kernel": "prefill",
        "shape": f"{seqs}x{length} H={shape.num_heads} KH={shape.num_kv_heads} "
        f"D={shape.head_dim} {str(shape.dtype).removeprefix('torch.')}",
    }
    if dry_run:
        expected = sdpa().transpose(1, 2).reshape(q.shape)
        return {**row, "max_abs_diff": float((triton_fn() - expected).abs().max())}
    from triton.testing import do_bench

    triton_ms = do_bench(triton_fn, return_mode="median")
    sdpa_ms = do_bench(sdpa, return_mode="median")
    flops = 2 * 2 * seqs * shape.num_heads * shape.head_dim * length * (length + 1) / 2
    return {
        **row,
        "triton_ms": round(triton_ms, 3),
        "sdpa_ms": round(sdpa_ms, 3),
        "triton_tflops": round(flops / triton_ms / 1e9, 1),
        "sdpa_tflops": round(flops / sdpa_ms / 1e9, 1),
        "vs_sdpa": round(sdpa_ms / triton_ms, 2),
    }


def _decode_row(shape: Shape, device: str, dry_run: bool, peak_gbps: float) -> dict:
    """The split-K decode kernel's achieved K/V bandwidth."""
    from ragkv.kernels import ops
    from ragkv.kernels import triton_attention as ta

    seqs, ctx = shape.decode_seqs, shape.decode_ctx
    scale = shape.head_dim**-0.5
    kv_lens = [ctx] * seqs
    k_cache, v_cache, kv_indptr, kv_indices = _paged_kv(shape, kv_lens, device, scatter=True)
    q = _queries(shape, seqs, device)
    positions = torch.full((seqs,), ctx - 1, device=device)
    qo_indptr = list(range(seqs + 1))
    plan = ta.plan_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, positions, PAGE_SIZE)
    triton_fn = lambda: ta.paged_attention(q, k_cache, v_cache, plan, scale)  # noqa: E731
    row = {
        "kernel": "decode",
        "shape": f"{seqs}x{ctx} ctx H={shape.num_heads} KH={shape.num_kv_heads} "
        f"D={shape.head_dim} {str(shape.dtype).removeprefix('torch.')}",
        "splits": plan.num_splits,
    }
    if dry_run:
        expected = ops.paged_attention_ref(
            q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, positions, scale
        )
        return {**row, "max_abs_diff": float((triton_fn() - expected).abs().max())}
    from triton.testing import do_bench

    triton_ms = do_bench(triton_fn, return_mode="median")
    kv_bytes = 2 * seqs * ctx * shape.num_kv_heads * shape.head_dim * shape.dtype.itemsize
    gbps = kv_bytes / triton_ms / 1e6
    return {
        **row,
        "triton_ms": round(triton_ms, 3),
        "kv_gbps": round(gbps, 1),
        "peak_share": round(gbps / peak_gbps, 3),
    }


def bench_attention(args: argparse.Namespace) -> list[dict]:
    """Prefill and decode rows (see the module docstring). With `args.dry_run`, tiny CPU
    shapes under the interpreter, switched on here unless a kernel module is already loaded."""
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        shape, device = DRY_SHAPE, "cpu"
    else:
        shape, device = GPU_SHAPE, "cuda"
    return [
        _prefill_row(shape, device, args.dry_run),
        _decode_row(shape, device, args.dry_run, args.peak_gbps),
    ]


def bench_pointwise(args: argparse.Namespace) -> list[dict]:
    """RMSNorm, residual+RMSNorm, SwiGLU, RoPE, K deviation, top-k vs torch (kernel_rows.py)."""
    from kernel_rows import bench_pointwise as rows

    return rows(args.dry_run)


# Each section: args -> rows.
SECTIONS = {
    "attention": bench_attention,
    "pointwise": bench_pointwise,
}


def print_table(rows: list[dict]) -> None:
    """Rows as an aligned text table; a column a row lacks is left blank."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[str(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for line in cells:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


def main() -> None:
    """Run the sections, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU shapes, no timing")
    parser.add_argument("--peak-gbps", type=float, default=4800.0, help="HBM peak, GB/s")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("timing needs a CUDA device; --dry-run checks the script on the CPU")
    rows = [row for bench in SECTIONS.values() for row in bench(args)]
    print_table(rows)
    import triton

    record = {
        "machine": machine(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dry_run": args.dry_run,
        "peak_gbps": args.peak_gbps,
        "rows": rows,
    }
    path = args.json or (None if args.dry_run else RESULTS)
    if path is not None:
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
