"""Every way `Gemm` runs a projection computes the plain `[in, out]` product: column-block
views (one per CPU thread) for decode-sized inputs, the whole matrix past
`BLOCKED_GEMM_MAX_ROWS`, and oneDNN on the `[out, in]` view from its row count on."""

from __future__ import annotations

import pytest
import torch

from ragkv.engine.gemm import BLOCKED_GEMM_MAX_ROWS, Gemm, onednn_available

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
