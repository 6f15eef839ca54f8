"""Triton kernels of the blended prefill's token selection: per-token K deviation and top-k
(references: `ops.k_deviation_ref`, `ops.topk_indices_ref`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragkv.kernels.checks import check_device, check_float, check_same_dtype, check_shape
from ragkv.kernels.triton_norm import num_warps_for, rows_per_program

# Widest token row (KH * D) a program reduces whole.
MAX_ROW_ELEMENTS = 65536
# Most scores one program sorts (a bitonic network in registers); longer inputs use torch.
MAX_TOPK_BLOCK = 16384
# Below every packed key of a real score: masked entries sort last.
_INT64_MIN: tl.constexpr = tl.constexpr(-(2**63))


@triton.jit
def _k_deviation_kernel(
    fresh_ptr,
    cached_ptr,
    out_ptr,
    num_tokens,
    head_dim,
    row_elements,
    fresh_stride_s,
    fresh_stride_h,
    cached_stride_s,
    cached_stride_h,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLS: tl.constexpr,
):
    rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_COLS)
    head = (cols // head_dim)[None, :]
    dim = (cols % head_dim)[None, :]
    row_mask = rows < num_tokens
    mask = row_mask[:, None] & (cols < row_elements)[None, :]
    fresh_ptrs = fresh_ptr + rows[:, None] * fresh_stride_s + head * fresh_stride_h + dim
    cached_ptrs = cached_ptr + rows[:, None] * cached_stride_s + head * cached_stride_h + dim
    fresh = tl.load(fresh_ptrs, mask=mask, other=0.0).to(tl.float32)
    cached = tl.load(cached_ptrs, mask=mask, other=0.0).to(tl.float32)
    diff = fresh - cached
    tl.store(out_ptr + rows, tl.sqrt(tl.sum(diff * diff, axis=1)), mask=row_mask)


def k_deviation(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Per-token L2 distance, new `[S]` fp32, between `fresh, cached: [S, KH, D]` keys (one
    dtype; strided views allowed, unit last stride)."""
    check_device(("fresh", fresh), ("cached", cached))
    check_float("fresh", fresh, 3)
    check_float("cached", cached, 3)
    check_shape("cached", cached, tuple(fresh.shape))
    check_same_dtype(("fresh", fresh), ("cached", cached))
    num_tokens, num_heads, head_dim = fresh.shape
    row_elements = num_heads * head_dim
    if row_elements > MAX_ROW_ELEMENTS:
        raise ValueError(f"fresh has {row_elements} elements a token; at most {MAX_ROW_ELEMENTS}")
    out = torch.zeros(num_tokens, dtype=torch.float32, device=fresh.device)
    if num_tokens == 0 or row_elements == 0:
        return out
    block_cols = triton.next_power_of_2(row_elements)
    block_rows = rows_per_program(num_tokens, block_cols)
    _k_deviation_kernel[(triton.cdiv(num_tokens, block_rows),)](
        fresh,
        cached,
        out,
        num_tokens,
        head_dim,
        row_elements,
        fresh.stride(0),
        fresh.stride(1),
        cached.stride(0),
        cached.stride(1),
        BLOCK_ROWS=block_rows,
        BLOCK_COLS=block_cols,
        num_warps=num_warps_for(block_rows * block_cols),
    )
    return out


@triton.jit
def _topk_kernel(scores_ptr, out_ptr, num_scores, k, BLOCK: tl.constexpr, K_BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < num_scores
    score = tl.load(scores_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 ties with +0.0, as comparisons have it
    # Float bits as an int32 that orders like the float: negative floats flip their magnitude.
    bits = score.to(tl.int32, bitcast=True)
    ordered = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    # High half the score, low half the inverted index: among equal scores the lower index
    # has the larger key, so ties go to the lower index.
    key = (ordered.to(tl.int64) << 32) | (BLOCK - 1 - offs).to(tl.int64)
    key = tl.where(mask, key, tl.full([BLOCK], _INT64_MIN, tl.int64))
    top = tl.topk(key, K_BLOCK)
    # The low 32 bits hold the inverted index (below 2**31): truncating keeps exactly them.
    index = BLOCK - 1 - top.to(tl.int32)
    out_offs = tl.arange(0, K_BLOCK)
    tl.store(out_ptr + out_offs, index.to(tl.int64), mask=out_offs < k)


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices, new `[k]` int64, of the `k` largest of `scores: [N]` (contiguous float),
    largest first; equal scores go lower index first, and -0.0 equals +0.0. NaN order is
    unspecified. Sorts one block of next_power_of_2(N) in one program; for N above
    `MAX_TOPK_BLOCK` or k == 0 it runs a stable torch sort instead (same contract)."""
    check_device(("scores", scores))
    check_float("scores", scores, 1)
    num_scores = scores.shape[0]
    if not 0 <= k <= num_scores:
        raise ValueError(f"k is {k}; expected 0 <= k <= {num_scores} (the number of scores)")
    block = triton.next_power_of_2(num_scores)
    if k == 0 or block > MAX_TOPK_BLOCK:
        # Stable: equal scores keep index order, the kernel's tie rule (torch.topk has none).
        return torch.sort(scores, descending=True, stable=True).indices[:k]
    out = torch.empty(k, dtype=torch.int64, device=scores.device)
    _topk_kernel[(1,)](
        scores,
        out,
        num_scores,
        k,
        BLOCK=block,
        K_BLOCK=triton.next_power_of_2(k),
        num_warps=max(4, min(16, block // 1024)),
    )
    return out
