"""Triton RMSNorm and fused residual add + RMSNorm (references: `ops.rms_norm_ref`,
`ops.add_rms_norm_ref`).

One program normalizes a block of rows, `BLOCK_ROWS x next_power_of_2(hidden)` masked, so a
small hidden size (576, 960) still gives each program enough work.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragkv.kernels.checks import check_device, check_float, check_same_dtype, check_shape

# Elements one program holds: several rows for small widths, a single row for wide ones.
BLOCK_ELEMENTS = 8192
# Widest row a program normalizes whole (the row is reduced in registers).
MAX_HIDDEN = 65536


def rows_per_program(num_rows: int, block_cols: int) -> int:
    """Rows one program takes so it holds about `BLOCK_ELEMENTS` elements (a power of two)."""
    return max(1, min(triton.next_power_of_2(num_rows), BLOCK_ELEMENTS // block_cols))


def num_warps_for(block_elements: int) -> int:
    """Warps for a program holding `block_elements` elements (about 32 per thread, 1 to 8)."""
    return max(1, min(8, block_elements // 1024))


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    delta_ptr,
    weight_ptr,
    sum_ptr,
    out_ptr,
    num_rows,
    hidden,
    stride_x,
    stride_delta,
    stride_sum,
    stride_out,
    eps,
    HAS_DELTA: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_COLS)
    col_mask = cols < hidden
    mask = (rows < num_rows)[:, None] & col_mask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_DELTA:
        delta_ptrs = delta_ptr + rows[:, None] * stride_delta + cols[None, :]
        delta = tl.load(delta_ptrs, mask=mask, other=0.0)  # masked lanes enter the sum
        # Rounded to the input dtype first: the reference normalizes the stored sum.
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + rows[:, None] * stride_sum + cols[None, :], x, mask=mask)
    x32 = x.to(tl.float32)
    mean_square = tl.sum(x32 * x32, axis=1) / hidden
    # Cast to the input dtype before the weight multiply, as the reference does.
    normed = (x32 * tl.rsqrt(mean_square + eps)[:, None]).to(x_ptr.dtype.element_ty)
    weight = tl.load(weight_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    out = weight[None, :] * normed.to(tl.float32)
    tl.store(
        out_ptr + rows[:, None] * stride_out + cols[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


def _check_norm(x: torch.Tensor, weight: torch.Tensor, *others: tuple[str, torch.Tensor]) -> None:
    check_device(("x", x), ("weight", weight), *others)
    check_float("x", x, 2)
    check_float("weight", weight, 1)
    check_shape("weight", weight, (x.shape[1],))
    for name, tensor in others:
        check_float(name, tensor, 2)
        check_shape(name, tensor, tuple(x.shape))
    check_same_dtype(("x", x), ("weight", weight), *others)
    if x.shape[1] > MAX_HIDDEN:
        raise ValueError(f"x has {x.shape[1]} columns; at most {MAX_HIDDEN} are supported")


def _launch(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    weight: torch.Tensor,
    total: torch.Tensor | None,
    out: torch.Tensor,
    eps: float,
) -> None:
    num_rows, hidden = x.shape
    if num_rows == 0 or hidden == 0:
        return
    block_cols = triton.next_power_of_2(hidden)
    block_rows = rows_per_program(num_rows, block_cols)
    has_delta = delta is not None
    delta = x if delta is None else delta  # unread placeholders when there is no delta
    total = out if total is None else total
    _rms_norm_kernel[(triton.cdiv(num_rows, block_rows),)](
        x,
        delta,
        weight,
        total,
        out,
        num_rows,
        hidden,
        x.stride(0),
        delta.stride(0),
        total.stride(0),
        out.stride(0),
        eps,
        HAS_DELTA=has_delta,
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
        num_warps=num_warps_for(block_rows * block_cols),
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32, cast back: `x: [T, hidden]`, `weight: [hidden]` (same dtype as `x`)
    -> new `[T, hidden]`. `x` may have any row stride (unit last stride)."""
    _check_norm(x, weight)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, None, weight, None, out, eps)
    return out


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm in one pass: `(x + delta, rms_norm(x + delta))`, both new
    `[T, hidden]`; `x, delta: [T, hidden]`, `weight: [hidden]`, one dtype for all three."""
    _check_norm(x, weight, ("delta", delta))
    total = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out = torch.empty_like(total)
    _launch(x, delta, weight, total, out, eps)
    return total, out
