"""The native causal attention (`kernels/cpu_attention.c`) against `paged_attention_ref`: plain
prefills, prefills after cached KV, decodes and mixed steps, over scattered pages, on awkward
lengths (not multiples of the 16-query blocks or 16-key tiles) and head sizes."""

from __future__ import annotations

import pytest
import torch

from ragkv.engine.kv_pool import page_table_csr
from ragkv.kernels import cpu_decode
from ragkv.kernels.cpu_attention import native_paged_attention, plan_native_attention
from ragkv.kernels.ops import paged_attention_ref

if cpu_decode.load() is None:
    pytest.skip(f"{cpu_decode.why_unavailable()}", allow_module_level=True)

PAGE = 4


def step(sequences: list[tuple[int, int]], heads: int, kv_heads: int, dim: int, seed: int):
    """q, caches and page tables of one step: per sequence (cached keys, new queries); pages
    handed out in turn between the sequences, so none is a consecutive run."""
    generator = torch.Generator().manual_seed(seed)
    lengths = [cached + new for cached, new in sequences]
    num_pages = sum(-(-n // PAGE) for n in lengths) + 2
    k_cache = torch.randn(num_pages, PAGE, kv_heads, dim, generator=generator)
    v_cache = torch.randn(num_pages, PAGE, kv_heads, dim, generator=generator)
    order = torch.randperm(num_pages, generator=generator).tolist()
    tables = [[] for _ in sequences]
    for b, n in enumerate(lengths):
        tables[b] = [order.pop() for _ in range(-(-n // PAGE))]
    kv_indptr, kv_indices = page_table_csr(tables)
    qo_indptr, positions = [0], []
    for cached, new in sequences:
        qo_indptr.append(qo_indptr[-1] + new)
        positions.append(torch.arange(cached, cached + new))
    q_all = torch.randn(qo_indptr[-1], heads + 2 * kv_heads, dim, generator=generator)
    q = q_all[:, :heads]  # strided rows, as the model's rotated q/k buffer hands them out
    return q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, lengths, torch.cat(positions)


@pytest.mark.parametrize(
    ("sequences", "heads", "kv_heads", "dim"),
    [
        ([(0, 1)], 9, 3, 64),  # one token
        ([(0, 37)], 9, 3, 64),  # a plain prefill, 2 query blocks + 5, 2 key tiles + 5
        ([(0, 100)], 4, 2, 32),  # head_dim 32, GQA 2:1
        ([(53, 21)], 9, 3, 64),  # a prefill after 53 cached keys
        ([(70, 1), (5, 1), (33, 1)], 6, 2, 64),  # three decodes of different lengths
        ([(16, 17), (0, 3), (40, 1)], 6, 6, 48),  # mixed step, no GQA, head_dim 48 (axpy)
    ],
)
def test_native_attention_matches_the_reference(sequences, heads, kv_heads, dim) -> None:
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, lens, positions = step(
        sequences, heads, kv_heads, dim, seed=len(sequences) * 100 + heads + dim
    )
    scale = dim**-0.5
    plan = plan_native_attention(qo_indptr, kv_indptr, kv_indices, lens, positions, PAGE)
    got = native_paged_attention(q, k_cache, v_cache, plan, scale)
    want = paged_attention_ref(
        q.contiguous(), k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, lens, positions, scale
    )
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), float((got - want).abs().max())


def test_a_query_row_does_not_depend_on_how_the_prompt_was_split() -> None:
    """The last 20 queries of a 60-token prefill, and the same 20 as a prefill after 40 cached
    keys: the same values, bit for bit (each row's sums run in one fixed order)."""
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, lens, positions = step(
        [(0, 60)], 9, 3, 64, seed=9
    )
    whole = native_paged_attention(
        q,
        k_cache,
        v_cache,
        plan_native_attention(qo_indptr, kv_indptr, kv_indices, lens, positions, PAGE),
        0.125,
    )
    tail_plan = plan_native_attention([0, 20], kv_indptr, kv_indices, lens, positions[40:], PAGE)
    tail = native_paged_attention(q[40:], k_cache, v_cache, tail_plan, 0.125)
    assert torch.equal(whole[40:], tail)


def test_peaked_scores_give_finite_weights() -> None:
    """Scores far apart (differences past e^-87) still give a finite, normalised answer."""
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, lens, positions = step(
        [(0, 40)], 4, 2, 32, seed=11
    )
    q = q * 400.0
    plan = plan_native_attention(qo_indptr, kv_indptr, kv_indices, lens, positions, PAGE)
    got = native_paged_attention(q, k_cache, v_cache, plan, 1.0)
    want = paged_attention_ref(
        q.contiguous(), k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, lens, positions, 1.0
    )
    assert bool(torch.isfinite(got).all())
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())
