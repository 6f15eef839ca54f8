"""The Triton row kernels (norms, SwiGLU, RoPE, K deviation, top-k) against their torch
references in `ops`. Without CUDA they run on CPU tensors under the Triton interpreter, which
must be switched on before the kernel modules are imported."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from ragkv.engine.config import ModelConfig  # noqa: E402
from ragkv.engine.rope import rope_inv_freq  # noqa: E402
from ragkv.kernels import ops  # noqa: E402
from ragkv.kernels.triton_activation import silu_mul  # noqa: E402
from ragkv.kernels.triton_norm import add_rms_norm, rms_norm  # noqa: E402
from ragkv.kernels.triton_rope import apply_rope  # noqa: E402
from ragkv.kernels.triton_select import k_deviation, topk_indices  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROW_COUNTS = [1, 15, 16, 17, 300]
EPS = 1e-5
# fp32: the kernels and the references differ only in summation order, rsqrt and FMA rounding.
FP32_TOL = {"atol": 1e-5, "rtol": 1e-5}
# fp16/bf16: a few ulps of the output dtype (the references round after every op).
LOW_TOL = {
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 3e-2, "rtol": 2e-2},
}
gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 kernels need CUDA"),
]


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Deterministic standard normal values on DEVICE."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(device=DEVICE, dtype=dtype)


def llama3_inv_freq(head_dim: int) -> torch.Tensor:
    """Llama-3.1-style scaled RoPE frequencies, as the engine builds them."""
    config = ModelConfig(
        architecture="llama",
        name="rope-test",
        num_layers=1,
        hidden_size=4 * head_dim,
        intermediate_size=8 * head_dim,
        num_heads=4,
        num_kv_heads=2,
        head_dim=head_dim,
        vocab_size=16,
        context_length=131072,
        rope_theta=500000.0,
        rms_norm_eps=EPS,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    return rope_inv_freq(config).to(DEVICE)


def rope_table(positions: torch.Tensor, head_dim: int = 64, dtype=torch.float32):
    return ops.rope_cos_sin(positions.to(DEVICE), llama3_inv_freq(head_dim), dtype)


@pytest.mark.parametrize("num_rows", ROW_COUNTS)
@pytest.mark.parametrize("hidden", [576, 960])
def test_rms_norm_matches_reference(num_rows: int, hidden: int) -> None:
    x = randn(num_rows, hidden, seed=num_rows) * 3
    weight = randn(hidden, seed=1)
    torch.testing.assert_close(
        rms_norm(x, weight, EPS), ops.rms_norm_ref(x, weight, EPS), **FP32_TOL
    )


def test_rms_norm_reads_a_strided_view() -> None:
    wide = randn(17, 1200, seed=2)
    x = wide[:, 100:1060]  # row stride 1200, unit last stride
    weight = randn(960, seed=3)
    torch.testing.assert_close(
        rms_norm(x, weight, EPS), ops.rms_norm_ref(x, weight, EPS), **FP32_TOL
    )


@pytest.mark.parametrize("num_rows", ROW_COUNTS)
def test_add_rms_norm_matches_reference(num_rows: int) -> None:
    x, delta, weight = (
        randn(num_rows, 576, seed=4),
        randn(num_rows, 576, seed=5),
        randn(576, seed=6),
    )
    total, normed = add_rms_norm(x, delta, weight, EPS)
    want_total, want_normed = ops.add_rms_norm_ref(x, delta, weight, EPS)
    torch.testing.assert_close(total, want_total, atol=0, rtol=0)
    torch.testing.assert_close(normed, want_normed, **FP32_TOL)


@pytest.mark.parametrize("num_rows", ROW_COUNTS)
@pytest.mark.parametrize("intermediate", [960, 2600])  # 2600: two column blocks per row
def test_silu_mul_matches_reference(num_rows: int, intermediate: int) -> None:
    gate_up = randn(num_rows, 2 * intermediate, seed=num_rows + intermediate) * 4
    torch.testing.assert_close(silu_mul(gate_up), ops.silu_mul_ref(gate_up), **FP32_TOL)


def qkv_heads(num_tokens: int, seed: int) -> torch.Tensor:
    """A fused qkv buffer `[T, H + 2*KH, D]` (H=9, KH=3, D=64), as the model views it."""
    return randn(num_tokens, (9 + 2 * 3) * 64, seed=seed).view(num_tokens, 15, 64)


@pytest.mark.parametrize("num_tokens", ROW_COUNTS)
def test_apply_rope_on_the_qkv_view(num_tokens: int) -> None:
    heads = qkv_heads(num_tokens, seed=num_tokens)
    q_k = heads[:, :12]  # q and k heads: token stride 960, not 768
    cos, sin = rope_table(torch.arange(num_tokens) * 7)
    before = heads.clone()
    got = apply_rope(q_k, cos, sin)
    torch.testing.assert_close(got, ops.apply_rope_ref(q_k, cos, sin), **FP32_TOL)
    assert torch.equal(heads, before), "out=None must not write into x"


@pytest.mark.parametrize("num_tokens", [1, 17])
def test_apply_rope_in_place(num_tokens: int) -> None:
    heads = qkv_heads(num_tokens, seed=7)
    q_k = heads[:, :12]
    v_before = heads[:, 12:].clone()
    cos, sin = rope_table(torch.arange(num_tokens) + 100)
    want = ops.apply_rope_ref(q_k, cos, sin)
    got = apply_rope(q_k, cos, sin, out=q_k)
    assert got.data_ptr() == q_k.data_ptr()
    torch.testing.assert_close(heads[:, :12], want, **FP32_TOL)
    assert torch.equal(heads[:, 12:], v_before), "heads outside the view must stay as they were"


def test_apply_rope_into_a_separate_out() -> None:
    x = randn(16, 3, 64, seed=8)
    out = torch.zeros(16, 3, 64, device=DEVICE)
    cos, sin = rope_table(torch.arange(16))
    assert apply_rope(x, cos, sin, out=out) is out
    torch.testing.assert_close(out, ops.apply_rope_ref(x, cos, sin), **FP32_TOL)


@pytest.mark.parametrize("num_tokens", [1, 300])
def test_apply_rope_broadcasts_a_one_row_table(num_tokens: int) -> None:
    keys = randn(num_tokens, 3, 64, seed=9)
    before = keys.clone()
    cos, sin = rope_table(torch.tensor([-513]))
    got = apply_rope(keys, cos, sin)
    torch.testing.assert_close(got, ops.apply_rope_ref(keys, cos, sin), **FP32_TOL)
    assert torch.equal(keys, before), "re-rotation must not modify the cached keys"


def exact_table(positions: torch.Tensor, head_dim: int = 64):
    """cos/sin from fp64 angles: the only rounding left is cos/sin's own, to fp32."""
    freqs = positions.to(DEVICE, torch.float64)[:, None] * llama3_inv_freq(head_dim).double()
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().float(), angles.sin().float()


@pytest.mark.parametrize(("start", "delta"), [(0, 100), (37, 1000), (1000, 3000), (2500, -2000)])
def test_rerotation_equals_rotation_at_the_moved_position(start: int, delta: int) -> None:
    keys = randn(64, 2, 64, seed=start)
    positions = torch.arange(start, start + 64)
    # With exact tables R(d) R(p) = R(p + d) up to fp32 rounding of the kernel's math (~1e-7).
    moved = apply_rope(
        apply_rope(keys, *exact_table(positions)), *exact_table(torch.tensor([delta]))
    )
    direct = apply_rope(keys, *exact_table(positions + delta))
    assert float((moved - direct).abs().max() / direct.abs().max()) < 1e-6
    # With the engine's tables each fp32 angle p * inv_freq is rounded (half an ulp of up to p
    # radians, three roundings): the error grows with the position, whatever the kernel does
    # (~9e-5 of max|k| at p + d = 4.5k); the bound is 3 eps * angle * max|k|.
    rotated = apply_rope(keys, *rope_table(positions))
    delta_cos, delta_sin = rope_table(torch.tensor([delta]))
    moved = apply_rope(rotated, delta_cos, delta_sin)
    torch.testing.assert_close(moved, ops.apply_rope_ref(rotated, delta_cos, delta_sin), **FP32_TOL)
    direct = apply_rope(keys, *rope_table(positions + delta))
    max_angle = float(start + 64 + abs(delta))  # inv_freq[0] == 1 rad per position
    bound = 3 * torch.finfo(torch.float32).eps * max_angle * float(keys.abs().max())
    assert float((moved - direct).abs().max()) < bound


@pytest.mark.parametrize("num_tokens", ROW_COUNTS)
def test_k_deviation_matches_reference(num_tokens: int) -> None:
    fresh, cached = randn(num_tokens, 3, 64, seed=10), randn(num_tokens, 3, 64, seed=11)
    torch.testing.assert_close(
        k_deviation(fresh, cached), ops.k_deviation_ref(fresh, cached), **FP32_TOL
    )


def test_k_deviation_reads_strided_keys() -> None:
    kv = randn(2, 40, 5, 64, seed=12)  # [k/v, S, KH, D]: keys are kv[0], heads a slice
    fresh, cached = kv[0, :, 1:4], kv[1, :, :3]
    torch.testing.assert_close(
        k_deviation(fresh, cached), ops.k_deviation_ref(fresh, cached), **FP32_TOL
    )


@pytest.mark.parametrize("k", [1, 37, 300])
def test_topk_indices_matches_torch(k: int) -> None:
    scores = randn(300, seed=13)  # distinct values: no ties for torch.topk to order its own way
    assert torch.equal(topk_indices(scores, k), ops.topk_indices_ref(scores, k))


def test_topk_indices_breaks_ties_by_lower_index() -> None:
    scores = torch.tensor([1.0, 3.0, -0.0, 3.0, 0.0, 2.0, 3.0, -1.0, 2.0, 0.0], device=DEVICE)
    assert topk_indices(scores, 10).tolist() == [1, 3, 6, 5, 8, 0, 2, 4, 9, 7]
    assert topk_indices(scores, 4).tolist() == [1, 3, 6, 5]


def test_topk_indices_falls_back_above_one_block_and_for_k_zero() -> None:
    scores = randn(20000, seed=14)
    scores[5000] = scores[100] = 10.0  # a tie: the fallback keeps the lower index first
    got = topk_indices(scores, 50)
    assert got[:2].tolist() == [100, 5000]
    assert torch.equal(got[2:], scores.topk(50).indices[2:])
    assert topk_indices(scores, 0).shape == (0,)


def test_kernels_handle_zero_rows() -> None:
    weight = randn(576, seed=15)
    assert rms_norm(randn(0, 576, seed=0), weight, EPS).shape == (0, 576)
    assert silu_mul(randn(0, 64, seed=0)).shape == (0, 32)
    cos, sin = rope_table(torch.tensor([3]))
    assert apply_rope(randn(0, 3, 64, seed=0), cos, sin).shape == (0, 3, 64)
    assert k_deviation(randn(0, 3, 64, seed=0), randn(0, 3, 64, seed=0)).shape == (0,)


def launches_on_cpu() -> list:
    """One call of each launcher on CPU tensors."""
    x, weight = torch.randn(4, 96), torch.randn(96)
    keys = torch.randn(4, 2, 64)
    cos, sin = torch.ones(1, 64), torch.zeros(1, 64)
    return [
        lambda: rms_norm(x, weight, EPS),
        lambda: add_rms_norm(x, x, weight, EPS),
        lambda: silu_mul(x),
        lambda: apply_rope(keys, cos, sin),
        lambda: k_deviation(keys, keys),
        lambda: topk_indices(weight, 3),
    ]


@pytest.mark.parametrize("index", range(6))
def test_launchers_refuse_cpu_tensors_without_the_interpreter(
    index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    launch = launches_on_cpu()[index]
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA"):
        launch()


def test_launchers_refuse_wrong_dtypes() -> None:
    x, weight = randn(4, 96, seed=16), randn(96, seed=17)
    with pytest.raises(ValueError, match="x has dtype torch.float64"):
        rms_norm(x.double(), weight, EPS)
    with pytest.raises(ValueError, match="weight has dtype torch.float16"):
        rms_norm(x, weight.half(), EPS)
    with pytest.raises(ValueError, match="gate_up has dtype torch.int64"):
        silu_mul(x.long())
    with pytest.raises(ValueError, match="scores has dtype torch.int32"):
        topk_indices(torch.arange(8, dtype=torch.int32, device=DEVICE), 2)
    keys = randn(4, 2, 64, seed=18)
    with pytest.raises(ValueError, match="cached has dtype torch.float16"):
        k_deviation(keys, keys.half())


def test_launchers_refuse_wrong_shapes() -> None:
    x, weight = randn(4, 96, seed=19), randn(96, seed=20)
    with pytest.raises(ValueError, match="weight has shape"):
        rms_norm(x, weight[:95], EPS)
    with pytest.raises(ValueError, match="delta has shape"):
        add_rms_norm(x, x[:3], weight, EPS)
    with pytest.raises(ValueError, match="gate_up has 95 columns"):
        silu_mul(x[:, :95])
    keys = randn(4, 2, 64, seed=21)
    cos, sin = rope_table(torch.arange(4))
    with pytest.raises(ValueError, match="cos has shape"):
        apply_rope(keys, cos[:3], sin)
    with pytest.raises(ValueError, match="x must have 3 dims"):
        apply_rope(keys[0], cos, sin)
    with pytest.raises(ValueError, match="out has shape"):
        apply_rope(keys, cos, sin, out=keys[:2])
    with pytest.raises(ValueError, match="cached has shape"):
        k_deviation(keys, keys[:, :1])
    with pytest.raises(ValueError, match="k is 9"):
        topk_indices(weight[:8], 9)


def test_launchers_refuse_non_unit_inner_strides() -> None:
    x = randn(96, 4, seed=22).t()
    with pytest.raises(ValueError, match="x must be contiguous in its last dim"):
        rms_norm(x, randn(96, seed=23), EPS)


@pytest.mark.parametrize(
    "dtype", [pytest.param(torch.float16, marks=gpu), pytest.param(torch.bfloat16, marks=gpu)]
)
def test_low_precision_kernels_match_references(dtype: torch.dtype) -> None:
    tol = LOW_TOL[dtype]
    x, delta = randn(300, 960, seed=24, dtype=dtype), randn(300, 960, seed=25, dtype=dtype)
    weight = randn(960, seed=26, dtype=dtype)
    torch.testing.assert_close(rms_norm(x, weight, EPS), ops.rms_norm_ref(x, weight, EPS), **tol)
    for got, want in zip(
        add_rms_norm(x, delta, weight, EPS),
        ops.add_rms_norm_ref(x, delta, weight, EPS),
        strict=True,
    ):
        torch.testing.assert_close(got, want, **tol)
    gate_up = randn(300, 2 * 2600, seed=27, dtype=dtype)
    torch.testing.assert_close(silu_mul(gate_up), ops.silu_mul_ref(gate_up), **tol)
    q_k = qkv_heads(300, seed=28).to(dtype)[:, :12]
    cos, sin = rope_table(torch.arange(300), dtype=dtype)
    torch.testing.assert_close(apply_rope(q_k, cos, sin), ops.apply_rope_ref(q_k, cos, sin), **tol)
    fresh, cached = randn(300, 3, 64, seed=29, dtype=dtype), randn(300, 3, 64, seed=30, dtype=dtype)
    torch.testing.assert_close(
        k_deviation(fresh, cached), ops.k_deviation_ref(fresh, cached), **FP32_TOL
    )
    distinct = randn(3000, seed=31, dtype=dtype).unique()[:2048]  # sorted: shuffle them
    order = torch.randperm(2048, generator=torch.Generator().manual_seed(32)).to(DEVICE)
    scores = distinct[order]
    assert torch.equal(topk_indices(scores, 100), scores.float().topk(100).indices)
