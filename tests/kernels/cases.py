"""Paged-attention test batches shared by the torch and Triton kernel tests."""

from __future__ import annotations

import torch

from ragkv.engine.kv_pool import page_table_csr


def make_case(
    q_lens: list[int],
    kv_lens: list[int],
    heads: tuple[int, int],
    head_dim: int,
    page_size: int = 16,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
):
    """A batch whose queries are the last `q_len` positions of each sequence's `kv_len`
    tokens, its KV in scattered pages. Returns the reference's arguments, on device."""
    num_heads, num_kv_heads = heads
    generator = torch.Generator().manual_seed(sum(kv_lens) + 7 * num_heads + head_dim)
    pages_needed = [-(-n // page_size) for n in kv_lens]
    total_pages = sum(pages_needed) + 3
    cache_shape = (total_pages, page_size, num_kv_heads, head_dim)
    k_cache = torch.randn(cache_shape, generator=generator)
    v_cache = torch.randn(cache_shape, generator=generator)
    order = torch.randperm(total_pages, generator=generator).tolist()
    tables, start = [], 0
    for count in pages_needed:
        tables.append(order[start : start + count])
        start += count
    kv_indptr, kv_indices = page_table_csr(tables)
    qo_indptr, positions = [0], []
    for q_len, kv_len in zip(q_lens, kv_lens, strict=True):
        qo_indptr.append(qo_indptr[-1] + q_len)
        positions.append(torch.arange(kv_len - q_len, kv_len))
    q = torch.randn(qo_indptr[-1], num_heads, head_dim, generator=generator)
    q, k_cache, v_cache = (x.to(device, dtype) for x in (q, k_cache, v_cache))
    q_positions = torch.cat(positions).to(device)
    return q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions
