"""Every way `Gemm` runs a projection computes the plain `[in, out]` product: column-block
views (one per CPU thread) for decode-sized inputs, the whole matrix past
`BLOCKED_GEMM_MAX_ROWS`, and oneDNN on the `[out, in]` view from its row count on."""

from __future__ import annotations

import pytest
import torch

from ragkv.engine.gemm import (
    BLOCKED_GEMM_MAX_ROWS,
    ONEDNN_DTYPES,
    Gemm,
    OneDNNPacks,
    onednn_available,
)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
@pytest.mark.parametrize("rows", [1, 16, BLOCKED_GEMM_MAX_ROWS + 1])
def test_column_blocks_match_the_plain_matmul(blocks: int, rows: int) -> None:
    generator = torch.Generator().manual_seed(blocks * 1000 + rows)
    weight = torch.randn(96, 48, generator=generator)  # [out, in]
    bias = torch.randn(96, generator=generator)
    x = torch.randn(rows, 48, generator=generator)
    stored = weight.t().contiguous()
    view = Gemm(blocks).column_blocks(stored)
    # 96 columns split into 2 or 3 blocks (views of the stored matrix, no copy); 5 does not
    # divide them: kept whole
    assert (view is not None) == (blocks in (2, 3))
    if view is not None:
        assert view.data_ptr() == stored.data_ptr() and view.shape == (blocks, 48, 96 // blocks)
        assert torch.equal(torch.cat(list(view), dim=1), stored)
    expected = x @ weight.t() + bias
    # Two GEMM code paths sum in different orders: ~2e-6 apart here, more on another CPU's
    # kernels. A layout bug (a block misplaced or transposed) is off by O(1).
    torch.testing.assert_close(Gemm(blocks).matmul(x, stored, bias), expected, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("rows", [1, 2, 7, 600])
def test_onednn_matches_the_plain_matmul_from_its_first_row_count(rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 48, generator=generator)
    bias = torch.randn(96, generator=generator)
    x = torch.randn(rows, 48, generator=generator)
    gemm = Gemm(2, onednn_min_rows=2)
    stored = weight.t().contiguous()
    assert gemm.uses_onednn(rows, stored) == (rows >= 2)
    torch.testing.assert_close(
        gemm.matmul(x, stored, bias), x @ weight.t() + bias, rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(gemm.matmul(x, stored), x @ weight.t(), rtol=1e-4, atol=1e-4)


def test_onednn_serves_only_float32_cpu_weights() -> None:
    gemm = Gemm(2, onednn_min_rows=2)
    weight = torch.randn(48, 96)
    assert gemm.uses_onednn(4, weight)
    assert not gemm.uses_onednn(4, weight.half())  # float16 decode copies stay on BLAS
    assert not Gemm(2).uses_onednn(4, weight)  # no oneDNN row count: BLAS everywhere
    x = torch.randn(4, 48)
    half = weight.t().half().contiguous().t()  # a float16 decode copy, `[in, out]` view
    expected = (x.half().float() @ weight.half().float()).half().float()
    torch.testing.assert_close(gemm.matmul(x, half), expected, rtol=2e-3, atol=2e-3)


@needs_onednn
@pytest.mark.parametrize("dtype", ONEDNN_DTYPES)
@pytest.mark.parametrize("rows", [2, 16, 600])
def test_a_packed_weight_gives_the_plain_product(dtype: torch.dtype, rows: int) -> None:
    generator = torch.Generator().manual_seed(rows)
    weight = torch.randn(96, 48, generator=generator).to(dtype)
    bias = torch.randn(96, generator=generator).to(dtype)
    x = torch.randn(rows, 48, generator=generator)
    gemm = Gemm(2, onednn_min_rows=2)
    stored = weight.t().contiguous() if dtype == torch.float32 else weight.t()  # as the model
    packs = OneDNNPacks()
    packs.add(stored)
    packed = packs.get(stored)
    assert packed is not None and packs.get(weight) is None and len(packs) == 1
    for b in (bias, None):
        plain = gemm.matmul(x, stored, b)
        torch.testing.assert_close(gemm.matmul(x, stored, b, packed), plain, rtol=1e-4, atol=1e-4)
    expected = x.to(dtype).float() @ weight.float().t()
    tolerance = 1e-4 if dtype == torch.float32 else 0.05  # bfloat16: its output is rounded
    torch.testing.assert_close(gemm.matmul(x, stored, None, packed), expected,
                               rtol=tolerance, atol=tolerance)  # fmt: skip


@needs_onednn
def test_the_model_packs_what_onednn_multiplies(smollm) -> None:
    model = smollm.model
    if model.gemm.onednn_min_rows is None:
        pytest.skip("this model runs without oneDNN")
    layers = model.batch_layers or model.layers  # the weights of batched decode steps
    assert len(model.packs) == 4 * len(layers) + 1  # four projections a layer, the head
    assert model.packs.get(layers[0].w_gate_up) is not None
    assert model.packs.get(model.lm_head_t) is not None
