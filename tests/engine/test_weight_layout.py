"""Projection weights stored as column blocks (one per CPU thread) compute the same GEMM as
the plain `[in, out]` matrix, for decode-sized and prefill-sized inputs."""

from __future__ import annotations

import pytest
import torch

from ragkv.engine.model import BLOCKED_GEMM_MAX_ROWS, _column_blocks, _joined, _matmul


@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
@pytest.mark.parametrize("rows", [1, 16, BLOCKED_GEMM_MAX_ROWS + 1])
def test_column_blocks_match_the_plain_matmul(blocks: int, rows: int) -> None:
    generator = torch.Generator().manual_seed(blocks * 1000 + rows)
    weight = torch.randn(96, 48, generator=generator)  # [out, in]
    bias = torch.randn(96, generator=generator)
    x = torch.randn(rows, 48, generator=generator)
    stored = _column_blocks(weight, blocks)
    # 96 columns split into 2 or 3 blocks; 5 does not divide them: kept whole
    assert stored.dim() == (3 if blocks in (2, 3) else 2)
    assert torch.equal(_joined(stored), weight.t())
    expected = x @ weight.t() + bias
    # Two GEMM code paths sum in different orders: ~2e-6 apart here, more on another CPU's
    # kernels. A layout bug (a block misplaced or transposed) is off by O(1).
    torch.testing.assert_close(_matmul(x, stored, bias), expected, rtol=1e-4, atol=1e-4)
