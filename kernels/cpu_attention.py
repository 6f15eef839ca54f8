"""Paged attention on the native causal kernel (`cpu_attention.c`), with the signatures of
`ops.plan_paged_attention` / `ops.paged_attention_grouped`, so the model swaps the pair in
where the library loads (`ragkv.engine.native_decode.attention_supported`).

The plan holds, per sequence, its rows of the step, its keys' slots and its queries'
positions; the whole step is one call that reads the pool in place: no gathered KV, no mask
tensors, no query blocks for a prefill after cached KV, no padded decode group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ragkv.kernels.cpu_decode import causal_attention
from ragkv.kernels.ops import AttentionGroup, paged_attention_grouped, plan_paged_attention


@dataclass(frozen=True)
class NativePlan:
    """A step for `causal_attention`: sequence b's rows `q_start[b]:q_start[b + 1]`, its keys
    at `slots[slot_start[b]:]` (every page of its table, as slots), each row's position."""

    q_start: torch.Tensor
    slots: torch.Tensor
    slot_start: torch.Tensor
    positions: torch.Tensor


def plan_native_attention(
    qo_indptr: list[int],
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_lens: list[int],
    q_positions: torch.Tensor,
    page_size: int,
) -> NativePlan:
    """The step's plan (once per forward, not per layer); `kv_lens` is implied by the
    positions (a query sees its sequence's keys up to its own position). A step of decodes
    only keeps SDPA's plan: one query row per KV head fills few of the kernel's 16 lanes, and
    16 decodes ran 0.87x as fast on it (their single-sequence steps have the native decode
    step instead)."""
    if len(qo_indptr) - 1 == q_positions.shape[0]:
        return plan_paged_attention(
            qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions, page_size
        )
    slots, slot_start = page_slots(kv_indptr, kv_indices, page_size)
    return NativePlan(
        torch.tensor(qo_indptr, dtype=torch.long), slots, slot_start, q_positions.to(torch.long)
    )


def page_slots(
    kv_indptr: torch.Tensor, kv_indices: torch.Tensor, page_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every page of a step's page tables as slots, and where each sequence's run of them
    starts: sequence b's key j sits at `slots[slot_start[b] + j]` (the native kernels' form)."""
    slots = (kv_indices[:, None] * page_size + torch.arange(page_size)).reshape(-1)
    return slots, kv_indptr[:-1] * page_size


def native_paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: NativePlan | list[AttentionGroup],
    scale: float,
) -> torch.Tensor:
    """`q: [T, H, D]` over the pool's `k_cache, v_cache: [pages, page_size, KH, D]` -> `[T, H,
    D]`, every sequence of the step in one native call (SDPA for a plan of decodes only)."""
    if not isinstance(plan, NativePlan):
        return paged_attention_grouped(q, k_cache, v_cache, plan, scale)
    return causal_attention(
        q, k_cache, v_cache, plan.q_start, plan.slots, plan.slot_start, plan.positions, scale
    )
