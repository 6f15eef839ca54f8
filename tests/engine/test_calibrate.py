"""The decode GEMV layout calibration: it times every candidate and keeps the fastest, and
every layout computes the same products (close to float rounding)."""

from __future__ import annotations

import torch

from ragkv.engine.calibrate import (
    calibrate_column_blocks,
    candidate_blocks,
    column_blocks_for,
)
from ragkv.engine.model import _column_blocks, _matmul
from tests.engine.conftest import LoadedModel


def test_candidates_cover_one_matrix_and_blocks_per_thread() -> None:
    assert candidate_blocks(1) == [1, 2]
    assert candidate_blocks(2) == [1, 2, 4]
    assert candidate_blocks(8) == [1, 8, 16]


def test_calibration_times_each_candidate_and_keeps_the_fastest(smollm: LoadedModel) -> None:
    best, timings = calibrate_column_blocks(smollm.config, threads=2)
    assert set(timings) == {1, 2, 4}
    assert all(ms > 0 for ms in timings.values())
    assert timings[best] == min(timings.values())


def test_fixed_layouts_skip_the_calibration(smollm: LoadedModel) -> None:
    cpu = torch.device("cpu")
    assert column_blocks_for("joined", smollm.config, cpu) == 1
    assert column_blocks_for("blocked", smollm.config, cpu) == torch.get_num_threads()


def test_every_layout_computes_the_same_products() -> None:
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(96, 40, generator=generator)  # [out, in]
    for rows in (1, 3):
        x = torch.randn(rows, 40, generator=generator)
        reference = x @ weight.t()
        for blocks in (1, 2, 4):
            got = _matmul(x, _column_blocks(weight, blocks))
            torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-5)
