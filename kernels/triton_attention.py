"""Causal GQA attention over paged KV in Triton: prefill/extend tiles and split-K decodes.

The Triton path of `ops.paged_attention_grouped` and `ops.attention_dense` (same signatures,
same results). A step's sequences are laid out once per forward by `plan_attention`; every
layer then calls `paged_attention`, which runs at most two launches: the prefill kernel over
a host-built tile list (one entry per sequence and query tile, so sequences of any lengths
share one launch and an empty sequence costs nothing) and the decode kernel
(`triton_decode`) for the single-query sequences.

A tile packs the GQA group's query heads into its rows (FlashInfer-style): row r of the
sequence's row space is query r // group, head kv_head * group + r % group, so the keys and
values of a kv head are read once for the whole group. It reads keys only up to its last
query's position: keys every row sees run unmasked, the causal diagonal masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton
import triton.language as tl

from ragkv.kernels import checks
from ragkv.kernels.triton_decode import (
    LOG2E,
    NEG_BIG,
    _attend_keys,
    decode_attention,
    decode_num_splits,
)

TILE_FIELDS = 4  # sequence, first query row, rows (queries * group), first row of the tile


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_cache,
    v_cache,
    out_ptr,
    tiles,
    q_positions,
    kv_indptr,
    kv_indices,
    kv_lens,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kp,
    stride_kt,
    stride_kh,
    stride_vp,
    stride_vt,
    stride_vh,
    page_size,
    qk_scale,
    GROUP: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tiles + tl.program_id(0) * 4
    kv_head = tl.program_id(1)
    seq = tl.load(tile)
    q_start = tl.load(tile + 1)
    num_rows = tl.load(tile + 2)
    row_start = tl.load(tile + 3)
    rows = row_start + tl.arange(0, BLOCK_M)
    valid = rows < num_rows
    tokens = (q_start + rows // GROUP).to(tl.int64)
    heads = kv_head * GROUP + rows % GROUP
    kv_len = tl.load(kv_lens + seq)
    first_pos = tl.load(q_positions + q_start + row_start // GROUP)
    last_row = tl.minimum(row_start + BLOCK_M, num_rows) - 1
    key_hi = tl.minimum(kv_len, tl.load(q_positions + q_start + last_row // GROUP) + 1)
    # Keys below the tile's first position are seen by every row: no mask for whole blocks
    # of them. Padding rows see every key (their output is never stored).
    unmasked_hi = tl.minimum(kv_len, first_pos + 1) // BLOCK_N * BLOCK_N
    row_pos = tl.load(q_positions + tokens, mask=valid, other=0)
    row_pos = tl.where(valid, row_pos, key_hi)

    dims = tl.arange(0, HEAD_DIM)
    q_ptrs = q_ptr + tokens[:, None] * stride_qt + heads[:, None] * stride_qh + dims[None, :]
    q = tl.load(q_ptrs, mask=valid[:, None], other=0.0)
    m_i = tl.full([BLOCK_M], NEG_BIG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    k_head = k_cache + kv_head * stride_kh
    v_head = v_cache + kv_head * stride_vh
    page_ids = kv_indices + tl.load(kv_indptr + seq)
    m_i, l_i, acc = _attend_keys(
        q, row_pos, m_i, l_i, acc, k_head, v_head, page_ids, 0, unmasked_hi, page_size,
        stride_kp, stride_kt, stride_vp, stride_vt, qk_scale,
        False, BLOCK_N, HEAD_DIM, PRECISION,
    )  # fmt: skip
    m_i, l_i, acc = _attend_keys(
        q, row_pos, m_i, l_i, acc, k_head, v_head, page_ids, unmasked_hi, key_hi, page_size,
        stride_kp, stride_kt, stride_vp, stride_vt, qk_scale,
        True, BLOCK_N, HEAD_DIM, PRECISION,
    )  # fmt: skip
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    out_ptrs = out_ptr + tokens[:, None] * stride_ot + heads[:, None] * stride_oh + dims[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=valid[:, None])


@dataclass
class TritonAttentionPlan:
    """A step's attention layout, built once per forward by `plan_attention` and read by
    every layer's `paged_attention`.

    q_positions: [T], kv_indptr: [B+1], kv_indices: [pages], kv_lens: [B], int tensors on the
    step's device; prefill_seqs: (sequence, first query row, query count, kv length) of each
    sequence with more than one query; decode_rows, decode_seqs: [N] query row and sequence of each
    single-query sequence; num_splits: key ranges per decode.
    """

    num_tokens: int
    page_size: int
    q_positions: torch.Tensor
    kv_indptr: torch.Tensor
    kv_indices: torch.Tensor
    kv_lens: torch.Tensor
    prefill_seqs: list[tuple[int, int, int, int]]
    decode_rows: torch.Tensor
    decode_seqs: torch.Tensor
    num_splits: int
    _tiles: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def prefill_tiles(self, group: int, block_m: int) -> torch.Tensor:
        """`[num_tiles, 4]` int32 (sequence, first query row, rows, first row of the tile) for
        tiles of `block_m` rows with `group` heads per query. Built on the first layer's
        call; the other layers of the forward reuse it."""
        key = (group, block_m)
        if key not in self._tiles:
            entries = [
                (seq, q_start, num_queries * group, row_start)
                for seq, q_start, num_queries, _ in self.prefill_seqs
                for row_start in range(0, num_queries * group, block_m)
            ]
            kv_lens = {seq: kv_len for seq, _, _, kv_len in self.prefill_seqs}

            def keys_read(tile: tuple[int, int, int, int]) -> int:
                """About the tile's last position + 1 (queries taken as the last tokens)."""
                seq, _, num_rows, row_start = tile
                return kv_lens[seq] - (num_rows - min(row_start + block_m, num_rows)) // group

            # The longest tiles start first, so none is left to run alone at the launch's end.
            entries.sort(key=keys_read, reverse=True)
            tiles = torch.tensor(entries, dtype=torch.int32).reshape(-1, TILE_FIELDS)
            self._tiles[key] = tiles.to(self.q_positions.device)
        return self._tiles[key]


def plan_attention(
    qo_indptr: list[int],
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_lens: list[int],
    q_positions: torch.Tensor,
    page_size: int,
) -> TritonAttentionPlan:
    """Lay out a step for `paged_attention` (arguments as `ops.plan_paged_attention`):
    sequences with one query go to the split-K decode kernel, longer ones to the prefill
    kernel, empty ones nowhere. Device tensors are made on q_positions' device."""
    num_seqs = len(kv_lens)
    device = checks.check_device(("q_positions", q_positions))
    if len(qo_indptr) != num_seqs + 1:
        raise ValueError(f"qo_indptr has {len(qo_indptr)} entries, expected {num_seqs + 1}")
    checks.check_shape("q_positions", q_positions, (qo_indptr[-1],))
    checks.check_shape("kv_indptr", kv_indptr, (num_seqs + 1,))
    for name, tensor in (("kv_indptr", kv_indptr), ("kv_indices", kv_indices)):
        if tensor.is_floating_point() or tensor.dim() != 1:
            raise ValueError(f"{name} must be a 1-D integer tensor, got {tensor.dtype}")
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, got {page_size}")
    q_lens = [qo_indptr[b + 1] - qo_indptr[b] for b in range(num_seqs)]
    decodes = [b for b in range(num_seqs) if q_lens[b] == 1]

    def on_device(values: list[int] | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.int32).to(device)

    return TritonAttentionPlan(
        num_tokens=qo_indptr[-1],
        page_size=page_size,
        q_positions=q_positions.contiguous(),
        kv_indptr=on_device(kv_indptr),
        kv_indices=on_device(kv_indices),
        kv_lens=on_device(kv_lens),
        prefill_seqs=[
            (b, qo_indptr[b], q_lens[b], kv_lens[b]) for b in range(num_seqs) if q_lens[b] > 1
        ],
        decode_rows=on_device([qo_indptr[b] for b in decodes]),
        decode_seqs=on_device(decodes),
        num_splits=decode_num_splits(max((kv_lens[b] for b in decodes), default=0)),
    )


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: TritonAttentionPlan,
    scale: float,
) -> torch.Tensor:
    """Causal GQA attention of the planned step: `q: [T, H, D]` over `k_cache, v_cache:
    [pages, page_size, KH, D]` (views with any strides but a unit last one) -> `[T, H, D]`
    in q's dtype. fp32, fp16 and bf16; D a power of two from 16 to 256."""
    _check_inputs(q, k_cache, v_cache, plan)
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    block_m, block_n, num_warps, num_stages = _prefill_config(q.dtype, head_dim)
    tiles = plan.prefill_tiles(group, block_m)
    if tiles.shape[0]:
        _prefill_kernel[(tiles.shape[0], num_kv_heads)](
            q, k_cache, v_cache, out, tiles,
            plan.q_positions, plan.kv_indptr, plan.kv_indices, plan.kv_lens,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            plan.page_size, scale * LOG2E,
            GROUP=group,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            HEAD_DIM=head_dim,
            PRECISION=checks.dot_precision(q.dtype),
            num_warps=num_warps,
            num_stages=num_stages,
        )  # fmt: skip
    paging = (plan.q_positions, plan.kv_indptr, plan.kv_indices, plan.kv_lens, plan.page_size)
    decode_attention(
        q, k_cache, v_cache, out, plan.decode_rows, plan.decode_seqs, paging, plan.num_splits, scale
    )
    return out


def attention_sparse(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    q_positions: torch.Tensor,
    scale: float,
    group: int,
) -> torch.Tensor:
    """The blended prefill's attention (as `ops.attention_dense`): `q: [Q, H, D]` at sorted
    positions `q_positions: [Q]` over one request's dense `keys, values: [N, KH, D]` at
    positions 0..N-1 -> `[Q, H, D]`. Runs `paged_attention` with the KV as one page of N."""
    checks.check_float("keys", keys, 3)
    checks.check_float("values", values, 3)
    checks.check_float("q", q, 3)
    checks.check_shape("values", values, tuple(keys.shape))
    if q.shape[1] != group * keys.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, expected group {group} x {keys.shape[1]}")
    num_keys = keys.shape[0]
    if q.shape[0] == 0 or num_keys == 0:
        return torch.zeros_like(q)
    one_page = torch.zeros(1, dtype=torch.int32)
    plan = plan_attention(
        [0, q.shape[0]], torch.tensor([0, 1]), one_page, [num_keys], q_positions, num_keys
    )
    return paged_attention(q, keys.unsqueeze(0), values.unsqueeze(0), plan, scale)


def _check_inputs(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, plan: TritonAttentionPlan
) -> None:
    """ValueError naming the argument for anything the kernels cannot run on."""
    checks.check_float("q", q, 3)
    checks.check_float("k_cache", k_cache, 4)
    checks.check_float("v_cache", v_cache, 4)
    checks.check_same_dtype(("q", q), ("k_cache", k_cache), ("v_cache", v_cache))
    checks.check_device(
        ("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("plan", plan.q_positions)
    )
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    checks.check_shape("q", q, (plan.num_tokens, -1, -1))
    checks.check_shape("k_cache", k_cache, (-1, plan.page_size, -1, head_dim))
    checks.check_shape("v_cache", v_cache, tuple(k_cache.shape))
    if num_kv_heads == 0 or num_heads % num_kv_heads:
        raise ValueError(f"q has {num_heads} heads, not a multiple of k_cache's {num_kv_heads}")
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise ValueError(f"q has head_dim {head_dim}; expected a power of two from 16 to 256")


def _prefill_config(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the prefill kernel."""
    if checks.interpreting():
        return 64, 64, 4, 1
    if dtype == torch.float32:
        return 64, 32 if head_dim > 64 else 64, 4, 2
    return 128, 64, 8 if head_dim > 64 else 4, 2
