"""Triton rotary position embedding (reference: `ops.apply_rope_ref`), rotate-half convention.

A program rotates a block of (token, head) rows; each row's two halves are loaded before
anything is stored, so `out` may be `x` itself. The same call re-rotates cached keys by a
position delta (a one-row `[1, D]` table broadcast to every token): R(p + d) = R(d) R(p).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragkv.kernels.checks import check_device, check_float, check_same_dtype, check_shape
from ragkv.kernels.triton_norm import num_warps_for, rows_per_program


@triton.jit
def _rope_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    num_rows,
    num_heads,
    half,
    x_stride_t,
    x_stride_h,
    cos_stride_t,
    sin_stride_t,
    out_stride_t,
    out_stride_h,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (rows < num_rows)[:, None] & (cols < half)
    token = (rows // num_heads)[:, None]
    head = (rows % num_heads)[:, None]
    x_lo_ptrs = x_ptr + token * x_stride_t + head * x_stride_h + cols
    x_lo = tl.load(x_lo_ptrs, mask=mask, other=0.0).to(tl.float32)
    x_hi = tl.load(x_lo_ptrs + half, mask=mask, other=0.0).to(tl.float32)
    # A `[1, D]` table has token stride 0: every token reads row 0.
    cos_ptrs = cos_ptr + token * cos_stride_t + cols
    sin_ptrs = sin_ptr + token * sin_stride_t + cols
    cos_lo = tl.load(cos_ptrs, mask=mask, other=0.0).to(tl.float32)
    cos_hi = tl.load(cos_ptrs + half, mask=mask, other=0.0).to(tl.float32)
    sin_lo = tl.load(sin_ptrs, mask=mask, other=0.0).to(tl.float32)
    sin_hi = tl.load(sin_ptrs + half, mask=mask, other=0.0).to(tl.float32)
    out_lo = x_lo * cos_lo - x_hi * sin_lo
    out_hi = x_hi * cos_hi + x_lo * sin_hi
    out_lo_ptrs = out_ptr + token * out_stride_t + head * out_stride_h + cols
    tl.store(out_lo_ptrs, out_lo.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_lo_ptrs + half, out_hi.to(out_ptr.dtype.element_ty), mask=mask)


def _check_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None
) -> None:
    named = [("x", x), ("cos", cos), ("sin", sin)] + ([("out", out)] if out is not None else [])
    check_device(*named)
    check_float("x", x, 3)
    num_tokens, _, head_dim = x.shape
    if head_dim % 2:
        raise ValueError(f"x has head dim {head_dim}; rotate-half needs an even head dim")
    for name, table in (("cos", cos), ("sin", sin)):
        check_float(name, table, 2)
        rows = 1 if table.shape[0] == 1 else num_tokens
        check_shape(name, table, (rows, head_dim))
    if out is not None:
        check_float("out", out, 3)
        check_shape("out", out, tuple(x.shape))
        if out.data_ptr() == x.data_ptr() and out.stride() != x.stride():
            raise ValueError("out starts where x does but has other strides; pass x itself")
    check_same_dtype(*named)


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate `x: [T, heads, D]` by `cos, sin: [T, D]` (or `[1, D]`: one rotation for every
    token), fp32 math. `x` may be a strided view (unit last stride), e.g. the q and k heads of
    a fused qkv buffer. The result goes to `out` (`[T, heads, D]`; may be `x` itself, else it
    must not overlap `x`) or, with `out=None`, a new tensor; returns it. One dtype for all."""
    _check_rope(x, cos, sin, out)
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    num_tokens, num_heads, head_dim = x.shape
    num_rows, half = num_tokens * num_heads, head_dim // 2
    if num_rows == 0 or half == 0:
        return out
    block_half = triton.next_power_of_2(half)
    block_rows = rows_per_program(num_rows, 2 * block_half)
    # Row 0 of a one-row table serves every token.
    cos_stride = cos.stride(0) if cos.shape[0] > 1 else 0
    sin_stride = sin.stride(0) if sin.shape[0] > 1 else 0
    _rope_kernel[(triton.cdiv(num_rows, block_rows),)](
        x,
        cos,
        sin,
        out,
        num_rows,
        num_heads,
        half,
        x.stride(0),
        x.stride(1),
        cos_stride,
        sin_stride,
        out.stride(0),
        out.stride(1),
        BLOCK_ROWS=block_rows,
        BLOCK_HALF=block_half,
        num_warps=num_warps_for(2 * block_rows * block_half),
    )
    return out
