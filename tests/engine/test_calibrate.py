"""The decode GEMV layout and decode dtype calibrations: every candidate is timed and the
fastest kept, every layout computes the same products (close to float rounding), and fixed
settings or a GPU skip the timing."""

from __future__ import annotations

import torch

from ragkv.engine.calibrate import (
    calibrate_column_blocks,
    candidate_blocks,
    column_blocks_for,
    decode_dtype_for,
)
from ragkv.engine.model import _column_blocks, _low_precision, _matmul
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


def test_fixed_decode_dtypes_skip_the_calibration(smollm: LoadedModel) -> None:
    cpu, fp32 = torch.device("cpu"), torch.float32
    assert decode_dtype_for("same", smollm.config, fp32, cpu, 2) is None
    assert decode_dtype_for("float16", smollm.config, fp32, cpu, 2) == torch.float16
    assert decode_dtype_for("bfloat16", smollm.config, fp32, cpu, 2) == torch.bfloat16


def test_auto_decode_dtype_is_exact_off_a_float32_cpu(smollm: LoadedModel) -> None:
    # No timing happens for these: a GPU or reduced-precision weights keep decode as it is.
    config = smollm.config
    assert decode_dtype_for("auto", config, torch.float32, torch.device("cuda"), 1) is None
    assert decode_dtype_for("auto", config, torch.bfloat16, torch.device("cpu"), 2) is None


def test_auto_decode_dtype_times_float16_on_a_cpu(smollm: LoadedModel) -> None:
    chosen = decode_dtype_for("auto", smollm.config, torch.float32, torch.device("cpu"), 2)
    assert chosen in (None, torch.float16)  # which one is this CPU's speed, not a property


def test_float16_copies_compute_the_products_in_float16() -> None:
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(96, 40, generator=generator)
    x = torch.randn(1, 40, generator=generator)
    for blocks in (1, 2):
        copy = _low_precision(_column_blocks(weight, blocks), torch.float16)
        assert copy.dtype == torch.float16 and copy.shape == (40, 96)
        expected = (x.half().float() @ weight.half().float().t()).half().float()
        torch.testing.assert_close(_matmul(x, copy), expected, rtol=2e-3, atol=2e-3)
