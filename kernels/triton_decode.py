"""Split-K decode attention over paged KV (FlashDecoding), and the online-softmax key loop
it shares with the prefill kernel (`triton_attention`).

One query per sequence: the keys are cut into `num_splits` contiguous ranges, each program
(sequence, kv head, split) attends its range for the kv head's whole GQA group (the group's
query heads are rows of one tile, so K/V are read once per kv head) and writes fp32 partials
(running max, sum of exponentials, unnormalised output); a second kernel combines the splits.
Scores are kept in base 2 (`exp2`, the scale multiplied by log2(e)) throughout.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ragkv.kernels import checks

LOG2E = 1.4426950408889634
# Initial running max: finite, so a row that has seen only masked keys gives exp2(0) = 1
# rescales and exp2(-inf) = 0 weights instead of NaN.
NEG_BIG = tl.constexpr(-1.0e30)
DECODE_BLOCK_N = 64
MIN_ROWS = 16  # tl.dot needs at least 16 rows
MIN_SPLIT_KEYS = 256
MAX_SPLITS = 16
# The interpreter pays per program, so it gets fewer, longer splits.
INTERPRETER_MAX_SPLITS = 4


@triton.jit
def _attend_keys(
    q,
    row_pos,
    m_i,
    l_i,
    acc,
    k_head,
    v_head,
    page_ids,
    key_lo,
    key_hi,
    page_size,
    stride_kp,
    stride_kt,
    stride_vp,
    stride_vt,
    qk_scale,
    MASKED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Online softmax of the rows `q: [M, HEAD_DIM]` over keys `[key_lo, key_hi)` gathered
    through the page table `page_ids`; returns the updated `(m_i, l_i, acc)` (fp32, base 2).

    `k_head`/`v_head` point at the kv head inside page 0. MASKED: a key is visible to row r
    only when `key <= row_pos[r]` and `key < key_hi`; unmasked ranges must hold only keys
    that every row sees.
    """
    dims = tl.arange(0, HEAD_DIM)
    for start in range(key_lo, key_hi, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        in_range = keys < key_hi
        if MASKED:
            pages = tl.load(page_ids + keys // page_size, mask=in_range, other=0).to(tl.int64)
        else:
            pages = tl.load(page_ids + keys // page_size).to(tl.int64)
        within = (keys % page_size).to(tl.int64)
        k_rows = pages * stride_kp + within * stride_kt
        v_rows = pages * stride_vp + within * stride_vt
        k_ptrs = k_head + k_rows[None, :] + dims[:, None]  # [HEAD_DIM, BLOCK_N]: K transposed
        v_ptrs = v_head + v_rows[:, None] + dims[None, :]
        if MASKED:
            k = tl.load(k_ptrs, mask=in_range[None, :], other=0.0)
            v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        scores = tl.dot(q, k, input_precision=PRECISION) * qk_scale
        if MASKED:
            visible = (keys[None, :] <= row_pos[:, None]) & in_range[None, :]
            scores = tl.where(visible, scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
    return m_i, l_i, acc


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache,
    v_cache,
    part_m,
    part_l,
    part_acc,
    decode_rows,
    decode_seqs,
    q_positions,
    kv_indptr,
    kv_indices,
    kv_lens,
    stride_qt,
    stride_qh,
    stride_kp,
    stride_kt,
    stride_kh,
    stride_vp,
    stride_vt,
    stride_vh,
    page_size,
    num_heads,
    num_splits,
    qk_scale,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    decode = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    token = tl.load(decode_rows + decode).to(tl.int64)
    seq = tl.load(decode_seqs + decode)
    position = tl.load(q_positions + token)
    key_hi = tl.minimum(tl.load(kv_lens + seq), position + 1)
    split_len = tl.cdiv(key_hi, num_splits)
    key_lo = split * split_len
    split_hi = tl.minimum(key_lo + split_len, key_hi)

    rows = tl.arange(0, BLOCK_H)
    heads = kv_head * GROUP + rows
    dims = tl.arange(0, HEAD_DIM)
    q_ptrs = q_ptr + token * stride_qt + heads[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptrs, mask=rows[:, None] < GROUP, other=0.0)
    m_i = tl.full([BLOCK_H], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], dtype=tl.float32)
    m_i, l_i, acc = _attend_keys(
        q, tl.full([BLOCK_H], 0, dtype=tl.int32) + split_hi - 1, m_i, l_i, acc,
        k_cache + kv_head * stride_kh, v_cache + kv_head * stride_vh,
        kv_indices + tl.load(kv_indptr + seq), key_lo, split_hi, page_size,
        stride_kp, stride_kt, stride_vp, stride_vt, qk_scale,
        True, BLOCK_N, HEAD_DIM, PRECISION,
    )  # fmt: skip
    # An empty split (key_lo >= split_hi) writes NEG_BIG / 0 / 0: weight 0 in the reduction.
    part = (decode * num_heads + heads) * num_splits + split
    written = rows < GROUP
    tl.store(part_m + part, m_i, mask=written)
    tl.store(part_l + part, l_i, mask=written)
    tl.store(part_acc + part[:, None] * HEAD_DIM + dims[None, :], acc, mask=written[:, None])


@triton.jit
def _decode_reduce_kernel(
    out_ptr,
    part_m,
    part_l,
    part_acc,
    decode_rows,
    stride_ot,
    stride_oh,
    num_heads,
    num_splits,
    BLOCK_S: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    decode = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, BLOCK_S)
    dims = tl.arange(0, HEAD_DIM)
    valid = splits < num_splits
    part = (decode * num_heads + head) * num_splits + splits
    m = tl.load(part_m + part, mask=valid, other=float("-inf"))
    l = tl.load(part_l + part, mask=valid, other=0.0)  # noqa: E741
    acc = tl.load(
        part_acc + part[:, None] * HEAD_DIM + dims[None, :], mask=valid[:, None], other=0.0
    )
    weight = tl.exp2(m - tl.max(m, 0))
    total = tl.sum(l * weight, 0)
    out = tl.sum(acc * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    token = tl.load(decode_rows + decode).to(tl.int64)
    out_ptrs = out_ptr + token * stride_ot + head * stride_oh + dims
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty))


def decode_num_splits(max_kv_len: int) -> int:
    """Splits per sequence for a decode batch whose longest context is `max_kv_len` keys:
    enough that each split still reads at least MIN_SPLIT_KEYS keys, at most MAX_SPLITS."""
    most = INTERPRETER_MAX_SPLITS if checks.interpreting() else MAX_SPLITS
    return max(1, min(most, triton.cdiv(max_kv_len, MIN_SPLIT_KEYS)))


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    decode_rows: torch.Tensor,
    decode_seqs: torch.Tensor,
    paging: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int],
    num_splits: int,
    scale: float,
) -> None:
    """Attention of the single-query sequences, written into `out` in place.

    q, out: [T, H, D]; k_cache, v_cache: [pages, page_size, KH, D] (checked by the caller);
    decode_rows: [N] row of each decode's query in q; decode_seqs: [N] its sequence index;
    paging: (q_positions [T], kv_indptr [B+1], kv_indices, kv_lens [B], page_size), int
    tensors on q's device.
    """
    num_decodes = decode_rows.shape[0]
    if num_decodes == 0:
        return
    q_positions, kv_indptr, kv_indices, kv_lens, page_size = paging
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    part_acc = torch.empty((num_decodes, num_heads, num_splits, head_dim), **_fp32(q))
    part_m = torch.empty((num_decodes, num_heads, num_splits), **_fp32(q))
    part_l = torch.empty_like(part_m)
    _decode_split_kernel[(num_decodes, num_kv_heads, num_splits)](
        q, k_cache, v_cache, part_m, part_l, part_acc,
        decode_rows, decode_seqs, q_positions, kv_indptr, kv_indices, kv_lens,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        page_size, num_heads, num_splits, scale * LOG2E,
        GROUP=group,
        BLOCK_H=max(MIN_ROWS, triton.next_power_of_2(group)),
        BLOCK_N=DECODE_BLOCK_N,
        HEAD_DIM=head_dim,
        PRECISION=checks.dot_precision(q.dtype),
    )  # fmt: skip
    _decode_reduce_kernel[(num_decodes, num_heads)](
        out, part_m, part_l, part_acc, decode_rows,
        out.stride(0), out.stride(1), num_heads, num_splits,
        BLOCK_S=triton.next_power_of_2(num_splits),
        HEAD_DIM=head_dim,
    )  # fmt: skip


def _fp32(like: torch.Tensor) -> dict[str, object]:
    return {"dtype": torch.float32, "device": like.device}
