"""Paged attention on the native causal kernel (`cpu_attention.c`), with the signatures of
`ops.plan_paged_attention` / `ops.paged_attention_grouped`, so the model swaps the pair in
where the library loads (`ragkv.engine.native_decode.attention_supported`).

The plan is per sequence: its rows of the step, its keys' slots, its queries' positions. Each
sequence is one call that reads the pool in place: no gathered KV, no mask tensors, no query
blocks for a prefill after cached KV, no padded decode group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ragkv.kernels.cpu_decode import causal_attention


@dataclass(frozen=True)
class SequenceQueries:
    """One sequence of a step: rows `start:end` of q, keys at `slots`, queries at
    `positions` (ascending; each sees the keys at positions up to its own)."""

    start: int
    end: int
    slots: torch.Tensor
    positions: torch.Tensor


def plan_native_attention(
    qo_indptr: list[int],
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_lens: list[int],
    q_positions: torch.Tensor,
    page_size: int,
) -> list[SequenceQueries]:
    """Per sequence of the step, what its call needs (once per forward, not per layer)."""
    offsets = torch.arange(page_size)
    plan = []
    for b, kv_len in enumerate(kv_lens):
        pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])]
        slots = (pages[:, None] * page_size + offsets[None, :]).reshape(-1)[:kv_len]
        start, end = qo_indptr[b], qo_indptr[b + 1]
        plan.append(SequenceQueries(start, end, slots.contiguous(), q_positions[start:end]))
    return plan


def native_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: list[SequenceQueries],
    scale: float,
) -> torch.Tensor:
    """`q: [T, H, D]` over the pool's `k_cache, v_cache: [pages, page_size, KH, D]` -> `[T, H,
    D]`, one native call per sequence."""
    if len(plan) == 1 and plan[0].end - plan[0].start == q.shape[0]:
        (only,) = plan
        return causal_attention(q, k_cache, v_cache, only.slots, only.positions, scale)
    out = torch.empty(q.shape, dtype=torch.float32)
    for seq in plan:
        out[seq.start : seq.end] = causal_attention(
            q[seq.start : seq.end], k_cache, v_cache, seq.slots, seq.positions, scale
        )
    return out
