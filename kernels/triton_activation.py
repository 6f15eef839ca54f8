"""Triton SwiGLU activation (reference: `ops.silu_mul_ref`): `silu(gate) * up` in fp32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragkv.kernels.checks import check_device, check_float
from ragkv.kernels.triton_norm import num_warps_for, rows_per_program

# Widest column block of one program; wider intermediates (14336) take several programs.
MAX_BLOCK_COLS = 2048


@triton.jit
def _silu_mul_kernel(
    gate_up_ptr,
    out_ptr,
    num_rows,
    intermediate,
    stride_in,
    stride_out,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    mask = (rows < num_rows)[:, None] & (cols < intermediate)[None, :]
    gate_ptrs = gate_up_ptr + rows[:, None] * stride_in + cols[None, :]
    gate = tl.load(gate_ptrs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(gate_ptrs + intermediate, mask=mask, other=0.0).to(tl.float32)
    out = gate * tl.sigmoid(gate) * up
    tl.store(
        out_ptr + rows[:, None] * stride_out + cols[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU: `gate_up: [T, 2*I]` (gate then up; any row stride, unit last stride) -> new
    `silu(gate) * up: [T, I]` in `gate_up`'s dtype, computed in fp32."""
    check_device(("gate_up", gate_up))
    check_float("gate_up", gate_up, 2)
    num_rows, width = gate_up.shape
    if width % 2:
        raise ValueError(f"gate_up has {width} columns; expected an even number (gate, up)")
    intermediate = width // 2
    out = torch.empty((num_rows, intermediate), dtype=gate_up.dtype, device=gate_up.device)
    if out.numel() == 0:
        return out
    block_cols = min(triton.next_power_of_2(intermediate), MAX_BLOCK_COLS)
    block_rows = rows_per_program(num_rows, block_cols)
    grid = (triton.cdiv(num_rows, block_rows), triton.cdiv(intermediate, block_cols))
    _silu_mul_kernel[grid](
        gate_up,
        out,
        num_rows,
        intermediate,
        gate_up.stride(0),
        out.stride(0),
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
        num_warps=num_warps_for(block_rows * block_cols),
    )
    return out
