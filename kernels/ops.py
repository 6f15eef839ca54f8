"""The compute ops the engine calls, as plain torch references (the CPU path).

Each op here is the reference a Triton kernel is tested against. Shapes are written once:
`T` tokens in a step, `H` query heads, `KH` KV heads, `D` head dim.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 then cast back. `x: [T, hidden]`, `weight: [hidden]`."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rms_norm_fused(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm_ref` as one native torch op (fewer dispatches per layer on CPU)."""
    if x.dtype != torch.float32:
        return rms_norm_ref(x, weight, eps)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for `positions: [T]` -> two `[T, D]` tensors (halves duplicated, HF layout)."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope_ref(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotate `x: [T, heads, D]` by `cos, sin: [T, D]` (or `[1, D]`, one rotation for every
    token; rotate-half convention). With `out` (may be `x` itself) the result is written there."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    result = x * cos[:, None, :] + rotated * sin[:, None, :]
    if out is None:
        return result
    return out.copy_(result)


def add_rms_norm_ref(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add then RMSNorm: `(x + delta, rms_norm(x + delta))`, both `[T, hidden]`."""
    total = x + delta
    return total, rms_norm_fused(total, weight, eps)


def k_deviation_ref(fresh: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
    """Per-token L2 distance `[S]` (fp32) between `fresh, cached: [S, KH, D]` keys."""
    return (fresh.float() - cached.float()).flatten(1).norm(dim=-1)


def topk_indices_ref(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `[k]` (int64) of the `k` largest of `scores: [N]`, largest first; equal scores
    in index order (`torch.topk` has no tie rule: the backends would pick differently)."""
    return scores.sort(descending=True, stable=True).indices[:k]


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU activation: `gate_up: [T, 2*I]` -> `silu(gate) * up: [T, I]`."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


def gather_pages(cache: torch.Tensor, page_ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Contiguous `[num_tokens, KH, D]` from `cache: [pages, page_size, KH, D]` pages."""
    pages = cache.index_select(0, page_ids)
    return pages.reshape(-1, *cache.shape[2:])[:num_tokens]


def paged_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    qo_indptr: list[int],
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_lens: list[int],
    q_positions: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Causal GQA attention of each sequence's queries over its paged KV.

    q: [T, H, D] (sequences concatenated, boundaries in `qo_indptr`, len B+1);
    k_cache, v_cache: [pages, page_size, KH, D]; page table of sequence b is
    `kv_indices[kv_indptr[b]:kv_indptr[b+1]]` holding `kv_lens[b]` tokens at positions
    0..kv_len-1; q_positions: [T] position of each query (a query sees keys at <= its position).
    Returns [T, H, D].
    """
    out = torch.empty_like(q)
    num_heads, num_kv_heads = q.shape[1], k_cache.shape[2]
    for b in range(len(kv_lens)):
        q_start, q_end = qo_indptr[b], qo_indptr[b + 1]
        if q_end == q_start:
            continue
        page_ids = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])]
        keys = gather_pages(k_cache, page_ids, kv_lens[b])
        values = gather_pages(v_cache, page_ids, kv_lens[b])
        out[q_start:q_end] = attention_ref(
            q[q_start:q_end],
            keys,
            values,
            q_positions[q_start:q_end],
            scale,
            num_heads // num_kv_heads,
        )
    return out


def attention_ref(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    q_positions: torch.Tensor,
    scale: float,
    group: int,
    key_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sequence: `q: [Q, H, D]` over `keys, values: [K, KH, D]` -> `[Q, H, D]`.

    Key j is visible to query i when key_positions[j] <= q_positions[i]; key positions
    default to 0..K-1.
    """
    num_q, num_k = q.shape[0], keys.shape[0]
    qh = q.transpose(0, 1).unsqueeze(0)
    kh = keys.transpose(0, 1).unsqueeze(0)
    vh = values.transpose(0, 1).unsqueeze(0)
    if num_q == 1 and key_positions is None and int(q_positions[0]) >= num_k - 1:
        mask = None
    else:
        if key_positions is None:
            key_positions = torch.arange(num_k, device=q.device)
        mask = key_positions[None, :] <= q_positions[:, None]
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=group > 1
    )
    return out.squeeze(0).transpose(0, 1)


PREFILL_QUERY_BLOCKS = 4
# Blocks of the blended prefill's scattered queries (`attention_dense`).
DENSE_QUERY_BLOCKS = 8
MIN_BLOCKED_QUERIES = 64
# A decode batched with others attends on its own, reading its keys as a view of the cache,
# from this many consecutive keys: copying them into the padded batch costs more there than
# the extra call (at 4,000 keys the gather was 44% of a decode step).
VIEW_MIN_KEYS = 256
# A prefill after a cached prefix at most this share of its new tokens runs as square causal
# attention with dummy queries for the prefix: the unmasked causal kernel skips the upper
# triangle, so the few wasted rows cost less than a masked call.
MAX_PAD_SHARE = 0.25


@dataclass
class AttentionGroup:
    """Sequences attended together in one batched call.

    q_rows: [b * q_len] rows of the step's queries, sequence-major; kv_slots: [b, max_kv]
    flat slot ids into the cache; mask: [b, 1, q_len, max_kv] (True = visible) or None with
    `causal` meaning plain square causal attention; `pad` zero queries go before the rows
    (standing for a cached prefix of `pad` tokens) and their outputs are dropped; `kv_start`
    set when b is 1 and the slots are `kv_start, kv_start + 1, ...`.
    """

    q_rows: torch.Tensor
    kv_slots: torch.Tensor
    mask: torch.Tensor | None
    q_len: int
    causal: bool
    pad: int = 0
    # One sequence whose keys are consecutive slots from this one: attention reads them as
    # a view of the cache (no gather; at 4,000 keys that halved a decode step's attention).
    kv_start: int | None = None


def plan_paged_attention(
    qo_indptr: list[int],
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_lens: list[int],
    q_positions: torch.Tensor,
    page_size: int,
) -> list[AttentionGroup]:
    """Group a step's sequences for batched attention, once per forward (not per layer).

    Single-query sequences (decodes) form one padded group, but for a decode over at least
    `VIEW_MIN_KEYS` consecutive keys, which attends on its own to a view of the cache; each
    longer query run is a group of its own, so padding never multiplies prefill work.
    """
    device = q_positions.device
    decode = [b for b in range(len(kv_lens)) if qo_indptr[b + 1] - qo_indptr[b] == 1]
    groups = _decode_groups(
        decode, qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions, page_size
    )
    for b in range(len(kv_lens)):
        q_start, q_end = qo_indptr[b], qo_indptr[b + 1]
        if q_end - q_start <= 1:
            continue
        slots = _slots(kv_indptr, kv_indices, b, kv_lens[b], page_size)
        start = _consecutive_start(slots)
        positions = q_positions[q_start:q_end]
        prefix = int(positions[0])
        if q_end - q_start == kv_lens[b] - prefix and prefix <= MAX_PAD_SHARE * (q_end - q_start):
            rows = torch.arange(q_start, q_end, device=device)
            groups.append(
                AttentionGroup(rows, slots[None], None, q_end - q_start, True, prefix, start)
            )
            continue
        # A prefill after cached KV needs a mask, and a masked call computes the whole
        # rectangle: split the queries so each block reads keys only up to its last position.
        num_blocks = PREFILL_QUERY_BLOCKS if q_end - q_start >= MIN_BLOCKED_QUERIES else 1
        for block_start, end, visible in _query_blocks(q_positions, q_start, q_end, num_blocks):
            key_pos = torch.arange(visible, device=device)
            mask = (key_pos[None, :] <= q_positions[block_start:end, None])[None, None]
            rows = torch.arange(block_start, end, device=device)
            group = AttentionGroup(rows, slots[:visible][None], mask, end - block_start, False)
            groups.append(replace(group, kv_start=start))
    return groups


def _decode_groups(
    decode: list[int],
    qo_indptr: list[int],
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    kv_lens: list[int],
    q_positions: torch.Tensor,
    page_size: int,
) -> list[AttentionGroup]:
    """The decodes `decode` (sequence indices): each one with at least `VIEW_MIN_KEYS`
    consecutive keys on its own (read as a view), the rest as one padded group."""
    device = q_positions.device
    groups, padded = [], []
    for b in decode:
        slots = _slots(kv_indptr, kv_indices, b, kv_lens[b], page_size)
        start = _consecutive_start(slots)
        last = int(q_positions[qo_indptr[b]]) == kv_lens[b] - 1  # sees every key: no mask
        if start is not None and last and (kv_lens[b] >= VIEW_MIN_KEYS or len(decode) == 1):
            rows = torch.tensor([qo_indptr[b]], device=device)
            groups.append(AttentionGroup(rows, slots[None], None, 1, False, 0, start))
        else:
            padded.append((b, slots, start))
    if padded:
        max_kv = max(kv_lens[b] for b, _, _ in padded)
        slots = torch.zeros((len(padded), max_kv), dtype=torch.long, device=device)
        mask = torch.zeros((len(padded), 1, 1, max_kv), dtype=torch.bool, device=device)
        key_pos = torch.arange(max_kv, device=device)
        for row, (b, row_slots, _) in enumerate(padded):
            slots[row, : kv_lens[b]] = row_slots
            visible = key_pos <= q_positions[qo_indptr[b]]
            mask[row, 0, 0] = visible & (key_pos < kv_lens[b])
        rows = torch.tensor([qo_indptr[b] for b, _, _ in padded], device=device)
        # Decodes of equal length at their last position see every key: no mask to apply.
        start = padded[0][2] if len(padded) == 1 else None
        group = AttentionGroup(rows, slots, None if bool(mask.all()) else mask, 1, False)
        groups.append(replace(group, kv_start=start))
    return groups


def _consecutive_start(slots: torch.Tensor) -> int | None:
    """The first of `slots: [n]` when they run `first, first + 1, ...` (a view of the
    cache can stand for their gather), else None."""
    first, count = int(slots[0]), slots.shape[0]
    if int(slots[-1]) != first + count - 1:
        return None
    return first if bool((slots.diff() == 1).all()) else None


def _query_blocks(
    q_positions: torch.Tensor, start: int, end: int, num_blocks: int
) -> list[tuple[int, int, int]]:
    """Split the queries `[start, end)` (positions sorted) into `num_blocks` runs of about
    equal size: `(block_start, block_end, visible)`, where `visible` = the block's last
    position + 1 is how many keys its causal attention can read. Empty runs are left out."""
    bounds = [start + (end - start) * i // num_blocks for i in range(num_blocks + 1)]
    return [
        (lo, hi, int(q_positions[hi - 1]) + 1)
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]


def _slots(
    kv_indptr: torch.Tensor, kv_indices: torch.Tensor, b: int, kv_len: int, page_size: int
) -> torch.Tensor:
    pages = kv_indices[int(kv_indptr[b]) : int(kv_indptr[b + 1])]
    offsets = torch.arange(page_size, device=pages.device)
    return (pages[:, None] * page_size + offsets[None, :]).reshape(-1)[:kv_len]


def paged_attention_grouped(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    groups: list[AttentionGroup],
    scale: float,
) -> torch.Tensor:
    """Batched torch path of `paged_attention_ref`: one SDPA call per group.

    q: [T, H, D]; k_cache, v_cache: [pages, page_size, KH, D]; returns [T, H, D].
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    k_flat = k_cache.reshape(-1, num_kv_heads, head_dim)
    v_flat = v_cache.reshape(-1, num_kv_heads, head_dim)
    # One group over every row (one sequence's decode or prefill, or a padded decode batch):
    # its rows are the step's rows in order, so q goes in and the answer out as they are,
    # without a gather and a scatter (three ops a layer of a decode step of a few dozen).
    whole = len(groups) == 1 and groups[0].q_rows.shape[0] == q.shape[0]
    out = None if whole else torch.empty_like(q)
    for group in groups:
        batch, num_keys = group.kv_slots.shape
        if group.kv_start is not None:  # consecutive slots: a view, nothing copied
            keys = k_flat[group.kv_start : group.kv_start + num_keys][None]
            values = v_flat[group.kv_start : group.kv_start + num_keys][None]
        else:  # index_select on the flat slot list gathers 3-4x faster than advanced indexing
            slots = group.kv_slots.reshape(-1)
            keys = k_flat.index_select(0, slots).view(batch, num_keys, num_kv_heads, head_dim)
            values = v_flat.index_select(0, slots).view(batch, num_keys, num_kv_heads, head_dim)
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)
        queries = q if whole else q.index_select(0, group.q_rows)
        queries = queries.view(batch, group.q_len, num_heads, head_dim).transpose(1, 2)
        if group.pad:
            queries = F.pad(queries, (0, 0, group.pad, 0))
        attended = F.scaled_dot_product_attention(
            queries,
            keys,
            values,
            attn_mask=group.mask,
            is_causal=group.causal,
            scale=scale,
            enable_gqa=num_heads != num_kv_heads,
        )
        attended = attended[:, :, group.pad :].transpose(1, 2).reshape(-1, num_heads, head_dim)
        if whole:
            return attended
        out.index_copy_(0, group.q_rows, attended)
    return out


def attention_dense(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    q_positions: torch.Tensor,
    scale: float,
    group: int,
) -> torch.Tensor:
    """Causal attention of queries at arbitrary sorted prompt positions over one request's
    dense KV: `q: [Q, H, D]`, `keys, values: [N, KH, D]` at positions 0..N-1.

    The blended prefill's attention: only selected tokens are queries, every token is a key.
    When the queries are all N positions it is plain square causal attention (no mask).
    """
    num_queries, num_keys = q.shape[0], keys.shape[0]
    pad = num_keys - num_queries  # when the queries are the last positions: pad to a square
    if num_queries > 1 and pad <= MAX_PAD_SHARE * num_queries and int(q_positions[0]) == pad:
        qh, kh, vh = (x.transpose(0, 1).unsqueeze(0) for x in (q, keys, values))
        if pad:
            qh = F.pad(qh, (0, 0, pad, 0))
        out = F.scaled_dot_product_attention(
            qh, kh, vh, is_causal=True, scale=scale, enable_gqa=group > 1
        )
        return out[:, :, pad:].squeeze(0).transpose(0, 1)
    if num_queries < MIN_BLOCKED_QUERIES:
        return attention_ref(q, keys, values, q_positions, scale, group)
    # A masked call computes every query x key pair: split the (sorted) queries into blocks
    # that each read keys only up to their last position, the causal half skipped.
    out = torch.empty_like(q)
    for start, end, visible in _query_blocks(q_positions, 0, num_queries, DENSE_QUERY_BLOCKS):
        out[start:end] = attention_ref(
            q[start:end], keys[:visible], values[:visible], q_positions[start:end], scale, group
        )
    return out


# The interface the engine calls. A Triton backend replaces these on CUDA tensors.
rms_norm = rms_norm_fused
apply_rope = apply_rope_ref
silu_mul = silu_mul_ref
plan_attention = plan_paged_attention
paged_attention = paged_attention_grouped
attention = attention_dense
