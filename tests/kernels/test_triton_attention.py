"""The Triton attention kernels (prefill tiles, split-K decode, sparse queries) against the
torch references. Without CUDA they run on CPU tensors in Triton's interpreter, so the grids
here are kept small: a few kv heads, one case per awkward shape."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch

if not torch.cuda.is_available():
    # Must be set before the @triton.jit functions are defined (module import).
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ragkv.kernels import ops  # noqa: E402
from ragkv.kernels import triton_attention as ta  # noqa: E402
from tests.kernels import cases  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SCALE = 0.2
# fp32 inputs: exact (IEEE) dot products; only summation order differs from the reference.
FP32_TOL = {"atol": 2e-5, "rtol": 2e-5}
make_case = partial(cases.make_case, device=DEVICE)


def run_both(
    case, page_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor, ta.TritonAttentionPlan]:
    """(kernel output, reference output in fp32, plan) of a `make_case` batch."""
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions = case
    plan = ta.plan_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions, page_size)
    got = ta.paged_attention(q, k_cache, v_cache, plan, SCALE)
    expected = ops.paged_attention_ref(
        q.float(), k_cache.float(), v_cache.float(), qo_indptr,
        kv_indptr, kv_indices, kv_lens, q_positions, SCALE,
    )  # fmt: skip
    return got, expected, plan


@pytest.mark.parametrize(
    ("q_lens", "kv_lens", "heads", "head_dim", "page_size"),
    [
        ([1], [1], (3, 3), 32, 16),
        ([15, 16, 17], [15, 16, 17], (9, 3), 64, 16),
        ([300], [300], (3, 3), 128, 16),
        ([1, 33, 1, 0], [100, 33, 2, 9], (24, 3), 32, 16),
        ([40], [300], (9, 3), 64, 16),
        ([20, 1, 9], [45, 30, 9], (6, 3), 32, 7),
    ],
    ids=[
        "one-token",
        "lengths-15-16-17-gqa3",
        "long-prefill-d128",
        "mixed-decode-prefill-with-empty-gqa8",
        "prefix-cached-extend",
        "page-size-7",
    ],
)
def test_paged_attention_matches_reference(q_lens, kv_lens, heads, head_dim, page_size) -> None:
    case = make_case(q_lens, kv_lens, heads, head_dim, page_size)
    got, expected, _ = run_both(case, page_size)
    assert got.dtype == case[0].dtype
    torch.testing.assert_close(got, expected, **FP32_TOL)


def test_long_decodes_use_several_splits() -> None:
    # The 2-key sequence leaves some of its splits empty.
    case = make_case([1, 1, 1, 1], [1000, 37, 600, 2], (8, 1), 128)
    got, expected, plan = run_both(case)
    assert plan.num_splits > 2
    assert plan.prefill_seqs == []
    torch.testing.assert_close(got, expected, **FP32_TOL)


def test_queries_before_the_end_of_their_kv_see_only_earlier_keys() -> None:
    """A query sees keys up to its own position even when the sequence holds more."""
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, _ = make_case(
        [1, 5], [40, 300], (6, 3), 32
    )
    q_positions = torch.tensor([10, 100, 101, 102, 103, 200], device=DEVICE)
    got, expected, _ = run_both(
        (q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions)
    )
    torch.testing.assert_close(got, expected, **FP32_TOL)


def test_caches_and_queries_may_be_strided_views() -> None:
    """q sliced out of a fused qkv projection, and K/V as views of a pool stored
    `[layers, k/v, pages, KH, page_size, D]`: every stride differs from a contiguous one."""
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions = make_case(
        [1, 24], [50, 40], (6, 2), 32
    )
    pool = torch.zeros(2, 2, *k_cache.transpose(1, 2).shape, device=DEVICE)
    pool[1, 0], pool[1, 1] = k_cache.transpose(1, 2), v_cache.transpose(1, 2)
    k_view, v_view = pool[1, 0].transpose(1, 2), pool[1, 1].transpose(1, 2)
    qkv = torch.cat([q, torch.zeros_like(q[:, :4])], dim=1)  # [T, H + 2 * KH, D]
    assert not (k_view.is_contiguous() or qkv[:, :6].is_contiguous())
    plan = ta.plan_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions, 16)
    got = ta.paged_attention(qkv[:, :6], k_view, v_view, plan, SCALE)
    expected = ta.paged_attention(q, k_cache, v_cache, plan, SCALE)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_plan_is_reused_across_layers() -> None:
    case = make_case([17], [17], (3, 3), 32)
    q, k_cache, v_cache, *_ = case
    _, expected, plan = run_both(case)
    again = ta.paged_attention(q, k_cache, v_cache, plan, SCALE)  # the next layer
    torch.testing.assert_close(again, expected, **FP32_TOL)
    assert plan.prefill_tiles(1, 64) is plan.prefill_tiles(1, 64)  # built once
    assert plan.prefill_tiles(1, 64).tolist() == [[0, 0, 17, 0]]
    # 17 queries x 3 heads in tiles of 16 rows, the tiles reading the most keys first.
    assert plan.prefill_tiles(3, 16).tolist() == [[0, 0, 51, row] for row in (48, 32, 16, 0)]


@pytest.mark.parametrize(
    ("num_keys", "positions", "heads", "head_dim"),
    [
        (200, [*range(0, 195, 3), *range(195, 200)], (9, 3), 64),
        (50, list(range(50)), (8, 1), 32),
        (70, [40], (3, 3), 128),
        (33, [0, 5, 32], (6, 2), 32),
    ],
    ids=["every-third-and-last-five", "all-positions-gqa8", "one-query", "first-and-last"],
)
def test_sparse_attention_matches_dense(num_keys, positions, heads, head_dim) -> None:
    generator = torch.Generator().manual_seed(num_keys + len(positions))
    num_heads, num_kv_heads = heads
    q = torch.randn(len(positions), num_heads, head_dim, generator=generator).to(DEVICE)
    keys = torch.randn(num_keys, num_kv_heads, head_dim, generator=generator).to(DEVICE)
    values = torch.randn(num_keys, num_kv_heads, head_dim, generator=generator).to(DEVICE)
    q_positions = torch.tensor(positions, device=DEVICE)
    group = num_heads // num_kv_heads
    got = ta.attention_sparse(q, keys, values, q_positions, SCALE, group)
    expected = ops.attention_dense(q, keys, values, q_positions, SCALE, group)
    torch.testing.assert_close(got, expected, **FP32_TOL)


def _bad_inputs(change: str):
    q, k_cache, v_cache, qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions = make_case(
        [2], [5], (4, 2), 32
    )
    plan = ta.plan_attention(qo_indptr, kv_indptr, kv_indices, kv_lens, q_positions, 16)
    if change == "q-float64":
        q = q.double()
    elif change == "cache-dtype":
        k_cache = k_cache.half()
    elif change == "cache-device":
        k_cache = torch.empty(k_cache.shape, device="meta")
    elif change == "token-count":
        q = q[:1]
    elif change == "page-size":
        k_cache, v_cache = k_cache[:, :8], v_cache[:, :8]
    elif change == "heads":
        q = q[:, :3]
    elif change == "head-dim":
        q, k_cache, v_cache = q[..., :24], k_cache[..., :24], v_cache[..., :24]
    elif change == "inner-stride":
        q = q.transpose(1, 2).contiguous().transpose(1, 2)
    return q, k_cache, v_cache, plan


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("q-float64", "q"),
        ("cache-dtype", "k_cache"),
        ("cache-device", "k_cache"),
        ("token-count", "q"),
        ("page-size", "k_cache"),
        ("heads", "q"),
        ("head-dim", "q"),
        ("inner-stride", "q"),
    ],
)
def test_launcher_rejects_bad_inputs(change: str, named: str) -> None:
    q, k_cache, v_cache, plan = _bad_inputs(change)
    with pytest.raises(ValueError, match=named):
        ta.paged_attention(q, k_cache, v_cache, plan, SCALE)


def test_plan_and_sparse_reject_bad_arguments() -> None:
    positions = torch.arange(3, device=DEVICE)
    indptr, indices = torch.tensor([0, 1]), torch.tensor([0])
    with pytest.raises(ValueError, match="qo_indptr"):
        ta.plan_attention([0, 3, 3], indptr, indices, [3], positions, 16)
    with pytest.raises(ValueError, match="page_size"):
        ta.plan_attention([0, 3], indptr, indices, [3], positions, 0)
    with pytest.raises(ValueError, match="kv_indices"):
        ta.plan_attention([0, 3], indptr, indices.float(), [3], positions, 16)
    keys = torch.zeros(3, 2, 32, device=DEVICE)
    with pytest.raises(ValueError, match="group"):
        ta.attention_sparse(torch.zeros(3, 6, 32, device=DEVICE), keys, keys, positions, 1.0, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors only fail without CUDA")
def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        ta.plan_attention([0, 1], torch.tensor([0, 1]), torch.tensor([0]), [1], torch.zeros(1), 16)


@pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize(
    ("q_lens", "kv_lens", "heads", "head_dim"),
    [
        ([1, 300, 1, 0, 17], [1000, 300, 37, 9, 530], (32, 8), 128),
        ([64, 1, 200], [64, 4000, 260], (12, 4), 64),
    ],
    ids=["mixed-d128-gqa4", "mixed-d64-gqa3"],
)
def test_half_precision_on_gpu(q_lens, kv_lens, heads, head_dim, dtype, tol) -> None:
    case = make_case(q_lens, kv_lens, heads, head_dim, dtype=dtype)
    got, expected, _ = run_both(case)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)
