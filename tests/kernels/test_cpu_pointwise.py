"""The native pointwise ops (`kernels/cpu_pointwise.c` via `ragkv.kernels.cpu_pointwise`)
against the torch references of `kernels/ops.py`: widths that are not multiples of the
8-float vectors, one row and many, strided rows as the model hands them over; inputs the
library does not read fall back to the reference."""

from __future__ import annotations

import pytest
import torch

from ragkv.kernels import cpu_decode, cpu_pointwise, ops

if cpu_decode.load() is None:
    pytest.skip(f"{cpu_decode.why_unavailable()}", allow_module_level=True)

SHAPES = [(1, 576), (7, 196), (513, 64), (33, 13)]


def close(got: torch.Tensor, want: torch.Tensor) -> bool:
    """float32 results up to the order of the sums (relative 1e-5 of the values' scale)."""
    return torch.allclose(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


@pytest.mark.parametrize("rows, n", SHAPES)
def test_rms_norm_matches_the_reference_on_strided_rows(rows, n) -> None:
    generator = torch.Generator().manual_seed(rows + n)
    wide = torch.randn(rows, n + 5, generator=generator) * 4
    x, weight = wide[:, 2 : n + 2], torch.randn(n, generator=generator)
    assert x.stride(0) == n + 5
    assert close(cpu_pointwise.rms_norm(x, weight, 1e-5), ops.rms_norm_ref(x, weight, 1e-5))


@pytest.mark.parametrize("rows, n", SHAPES)
def test_add_rms_norm_matches_the_reference(rows, n) -> None:
    generator = torch.Generator().manual_seed(2 * rows + n)
    x, delta = torch.randn(2, rows, n, generator=generator)
    weight = torch.randn(n, generator=generator)
    total, normed = cpu_pointwise.add_rms_norm(x, delta, weight, 1e-6)
    want_total, want_normed = ops.add_rms_norm_ref(x, delta, weight, 1e-6)
    assert torch.equal(total, want_total)  # one float32 add per element: exact
    assert close(normed, want_normed)


@pytest.mark.parametrize("rows, n", SHAPES)
def test_silu_mul_matches_the_reference(rows, n) -> None:
    generator = torch.Generator().manual_seed(3 * rows + n)
    gate_up = torch.randn(rows, 2 * n, generator=generator) * 6
    gate_up[0, :3] = torch.tensor([-100.0, 100.0, 0.0])  # e^-x far out of range, and zero
    assert close(cpu_pointwise.silu_mul(gate_up), ops.silu_mul_ref(gate_up))


@pytest.mark.parametrize("rows, heads, dim", [(1, 12, 64), (17, 5, 32), (9, 3, 6)])
def test_rotate_qk_rotates_in_place_as_the_reference(rows, heads, dim) -> None:
    generator = torch.Generator().manual_seed(rows * heads + dim)
    qkv = torch.randn(rows, heads + 2, dim, generator=generator)
    positions = torch.randint(0, 4000, (rows,), generator=generator)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))
    cos, sin = ops.rope_cos_sin(positions, inv_freq, torch.float32)
    want = ops.apply_rope_ref(qkv[:, :heads], cos, sin)
    untouched = qkv[:, heads:].clone()
    got = cpu_pointwise.rotate_qk(qkv[:, :heads], cos, sin)
    assert got.data_ptr() == qkv.data_ptr()  # in place, in the step's own buffer
    assert close(qkv[:, :heads], want)
    assert torch.equal(qkv[:, heads:], untouched)  # the value heads beside them


def test_inputs_the_library_does_not_read_take_the_reference() -> None:
    x = torch.randn(4, 40, dtype=torch.float64)
    weight = torch.randn(40, dtype=torch.float64)
    assert torch.equal(cpu_pointwise.rms_norm(x, weight, 1e-5), ops.rms_norm(x, weight, 1e-5))
    gate_up = torch.randn(40, 6).t()  # columns strided
    assert torch.equal(cpu_pointwise.silu_mul(gate_up), ops.silu_mul(gate_up))
