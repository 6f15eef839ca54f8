"""The batched torch attention path against the plain per-sequence reference."""

from __future__ import annotations

import pytest
import torch

from ragkv.kernels import ops
from tests.kernels.cases import make_case

PAGE = 16


@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 1)], ids=["gqa1", "gqa3", "gqa8"])
@pytest.mark.parametrize(
    ("q_lens", "kv_lens"),
    [
        ([1], [1]),
        ([1, 1, 1], [5, 37, 16]),
        ([1, 1, 1], [20, 20, 20]),
        ([17], [17]),
        ([7], [40]),
        ([1, 33, 1, 0], [100, 33, 2, 9]),
        ([130, 1], [161, 20]),
        ([64, 90], [70, 100]),
    ],
    ids=[
        "one-token",
        "decodes",
        "equal-length-decodes",
        "square-prefill",
        "chunked-prefill",
        "mixed-with-empty",
        "long-prefill-after-prefix",
        "padded-and-masked-prefills",
    ],
)
def test_grouped_matches_reference(q_lens, kv_lens, heads) -> None:
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, positions = make_case(
        q_lens, kv_lens, heads, 32, PAGE
    )
    scale = 0.2
    expected = ops.paged_attention_ref(
        q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, positions, scale
    )
    plan = ops.plan_paged_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, positions, PAGE)
    got = ops.paged_attention_grouped(q, k_cache, v_cache, plan, scale)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rope_and_norm_references_have_the_known_values() -> None:
    x = torch.tensor([[3.0, 4.0]])
    normed = ops.rms_norm_ref(x, torch.tensor([1.0, 2.0]), eps=0.0)
    torch.testing.assert_close(normed, torch.tensor([[3.0, 8.0]]) / (12.5**0.5))
    cos, sin = ops.rope_cos_sin(torch.tensor([1]), torch.tensor([torch.pi / 2]), torch.float32)
    rotated = ops.apply_rope_ref(torch.tensor([[[1.0, 0.0]]]), cos, sin)
    torch.testing.assert_close(rotated, torch.tensor([[[0.0, 1.0]]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_rms_norm_matches_reference(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(37, 576, generator=generator) * 3).to(dtype)
    weight = torch.randn(576, generator=generator).to(dtype)
    expected = ops.rms_norm_ref(x, weight, 1e-5)
    torch.testing.assert_close(ops.rms_norm_fused(x, weight, 1e-5), expected)


def brute_force_attention(q, keys, values, q_positions, scale):
    """Softmax attention written out per query and head, causal by position."""
    group = q.shape[1] // keys.shape[1]
    out = torch.empty_like(q)
    for row, position in enumerate(q_positions.tolist()):
        for head in range(q.shape[1]):
            k = keys[: position + 1, head // group]
            v = values[: position + 1, head // group]
            weights = torch.softmax((k @ q[row, head]) * scale, dim=0)
            out[row, head] = weights @ v
    return out


@pytest.mark.parametrize("heads", [(4, 4), (6, 2), (8, 1)], ids=["gqa1", "gqa3", "gqa8"])
@pytest.mark.parametrize(
    ("num_keys", "positions"),
    [
        (1, [0]),
        (37, list(range(37))),
        (37, [36]),
        (50, [0, 3, 17, 18, 49]),
        (33, [5, 32]),
        (40, list(range(8, 40))),
        (40, list(range(20, 40))),
        (300, list(range(1, 300, 3))),
        (200, list(range(10)) + list(range(120, 200))),
    ],
    ids=[
        "one-token",
        "all-square",
        "last-only",
        "scattered",
        "two",
        "after-short",
        "after-long",
        "scattered-in-blocks",
        "clustered-in-blocks",
    ],
)
def test_dense_attention_of_selected_queries(num_keys, positions, heads) -> None:
    generator = torch.Generator().manual_seed(num_keys + heads[0])
    num_heads, num_kv_heads = heads
    q = torch.randn(len(positions), num_heads, 16, generator=generator)
    keys = torch.randn(num_keys, num_kv_heads, 16, generator=generator)
    values = torch.randn(num_keys, num_kv_heads, 16, generator=generator)
    q_positions = torch.tensor(positions)
    got = ops.attention(q, keys, values, q_positions, 0.25, num_heads // num_kv_heads)
    expected = brute_force_attention(q, keys, values, q_positions, 0.25)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("q_lens", "kv_lens"),
    [
        ([1], [300]),
        ([130, 1], [161, 60]),
        ([64, 90], [70, 100]),
        ([1, 1], [40, 50]),
        ([1, 1, 1], [300, 400, 20]),
    ],
    ids=["long-decode", "prefill-and-decode", "masked-prefills", "two-decodes", "long-decodes"],
)
def test_consecutive_pages_are_read_as_a_view(q_lens, kv_lens) -> None:
    q, k_cache, v_cache, qo_indptr, kv_indptr, scattered, kv_lens, positions = make_case(
        q_lens, kv_lens, (6, 2), 32, PAGE
    )
    # The same pages in allocation order (the pool hands out the lowest ids first).
    consecutive = torch.arange(scattered.shape[0])
    scale = 0.2
    for kv_indices, views in ((consecutive, True), (scattered, False)):
        expected = ops.paged_attention_ref(
            q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, positions, scale
        )
        plan = ops.plan_paged_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, positions, PAGE)
        single = [group for group in plan if group.kv_slots.shape[0] == 1]
        # Every one-sequence group reads a view exactly when its pages are consecutive (a
        # group of several decodes always gathers; a decode over at least VIEW_MIN_KEYS
        # consecutive keys leaves the batch for a group of its own).
        assert all((group.kv_start is not None) == views for group in single)
        assert all(group.kv_start is None for group in plan if group.kv_slots.shape[0] > 1)
        long_decodes = [g for g in single if g.q_len == 1 and g.kv_start is not None]
        long_decodes = [g for g in long_decodes if g.kv_slots.shape[1] >= ops.VIEW_MIN_KEYS]
        assert len(long_decodes) == (sum(n >= ops.VIEW_MIN_KEYS for n in kv_lens) if views else 0)
        got = ops.paged_attention_grouped(q, k_cache, v_cache, plan, scale)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
