"""The bfloat16 products of batched native decode steps (`kernels/cpu_bf16.c`) against a
float64 product of the same bfloat16-rounded inputs and weights: every register tile (16 x 2,
16 x 1, 8 x 3, 8 x 1), outputs not a multiple of 16, odd input counts, and a row's result
independent of the rows beside it."""

from __future__ import annotations

import pytest
import torch

from ragkv.kernels import cpu_decode

if not cpu_decode.bf16_supported():
    pytest.skip(
        "the bfloat16 products need AVX512-BF16 (and the native library); "
        f"{cpu_decode.why_unavailable() or 'this CPU lacks AVX512-BF16'}",
        allow_module_level=True,
    )


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`x @ weight.T` in float64 of the bfloat16-rounded operands."""
    return x.bfloat16().double() @ weight.bfloat16().double().T


@pytest.mark.parametrize("batch", [1, 3, 8, 9, 16, 17, 24, 33])
@pytest.mark.parametrize(
    "outputs, inputs", [(960, 576), (576, 1536), (100, 37), (49, 301), (16, 2), (200, 64)]
)
def test_products_match_float64_of_the_rounded_operands(batch, outputs, inputs) -> None:
    generator = torch.Generator().manual_seed(batch * 1000 + outputs + inputs)
    weight = torch.randn(outputs, inputs, generator=generator) * 0.05
    x = torch.randn(batch, inputs, generator=generator) * 3
    got = cpu_decode.gemm_bf16(x, cpu_decode.pack_bf16_panels(weight), outputs)
    want = reference(x, weight)
    # float32 sums of exact products: each off by at most ~inputs * 2^-24 of the magnitudes
    bound = (x.bfloat16().double().abs() @ weight.bfloat16().double().abs().T) * inputs * 2**-23
    assert got.shape == (batch, outputs)
    assert bool(((got.double() - want).abs() <= bound + 1e-30).all())


def test_a_rows_result_does_not_depend_on_the_rows_beside_it() -> None:
    """Each row's sums run in the same order in every tile: bit-identical alone or batched."""
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(330, 576, generator=generator)
    panels = cpu_decode.pack_bf16_panels(weight)
    x = torch.randn(33, 576, generator=generator)
    batched = cpu_decode.gemm_bf16(x, panels, 330)
    for rows in (slice(0, 1), slice(5, 13), slice(8, 25), slice(20, 33)):
        assert torch.equal(cpu_decode.gemm_bf16(x[rows], panels, 330), batched[rows])


def test_panels_hold_sixteen_outputs_by_input_pairs_zero_padded() -> None:
    weight = torch.arange(18 * 5, dtype=torch.float32).view(18, 5)
    panels = cpu_decode.pack_bf16_panels(weight)
    assert panels.shape == (2, 3, 16, 2) and panels.dtype == torch.bfloat16
    assert panels[0, 1, 3].tolist() == [weight[3, 2].item(), weight[3, 3].item()]
    assert panels[1, 2, 1].tolist() == [weight[17, 4].item(), 0.0]  # the odd input's pair
    assert bool((panels[1, :, 2:] == 0).all())  # outputs 18..31 do not exist


@pytest.mark.parametrize("batch", [1, 7, 8, 9, 16, 21])
@pytest.mark.parametrize("outputs, inputs", [(1000, 576), (49, 37), (16, 3)])
def test_the_batched_head_matches_float64_of_its_float16_weights(batch, outputs, inputs) -> None:
    """The LM head of batched steps (`gemm_head_f16`): float16 panels, float32 rows and sums;
    8-row and single-row tiles of 3 panels and of 1."""
    generator = torch.Generator().manual_seed(batch * 7 + outputs + inputs)
    weight = torch.randn(outputs, inputs, generator=generator) * 0.05
    x = torch.randn(batch, inputs, generator=generator) * 3
    got = cpu_decode.gemm_head_f16(x, cpu_decode.pack_f16_panels(weight), outputs)
    want = x.double() @ weight.half().double().T
    bound = (x.double().abs() @ weight.half().double().abs().T) * inputs * 2**-23
    assert got.shape == (batch, outputs)
    assert bool(((got.double() - want).abs() <= bound + 1e-30).all())
    alone = cpu_decode.gemm_head_f16(x[-1:], cpu_decode.pack_f16_panels(weight), outputs)
    assert torch.allclose(alone, got[-1:], rtol=1e-6, atol=1e-6)
