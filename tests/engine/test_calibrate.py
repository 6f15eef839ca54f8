"""The decode GEMV layout, decode dtypes and batched GEMM calibrations: every candidate is
timed and the fastest kept, every layout computes the same products (close to float
rounding), and fixed settings or a GPU skip the timing."""

from __future__ import annotations

import pytest
import torch

from ragkv.engine.calibrate import (
    ONEDNN_ROW_CANDIDATES,
    batch_dtype_for,
    calibrate_column_blocks,
    calibrate_onednn_rows,
    candidate_blocks,
    column_blocks_for,
    decode_dtype_for,
    onednn_rows_for,
    time_batch_dtypes,
)
from ragkv.engine.gemm import Gemm, onednn_available, onednn_bf16_available
from ragkv.engine.model import _low_precision
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
            got = Gemm(blocks).matmul(x, weight.t().contiguous())
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
    copy = _low_precision(weight.t().contiguous(), torch.float16)
    assert copy.dtype == torch.float16 and copy.shape == (40, 96)
    expected = (x.half().float() @ weight.half().float().t()).half().float()
    for blocks in (1, 2):
        torch.testing.assert_close(Gemm(blocks).matmul(x, copy), expected, rtol=2e-3, atol=2e-3)


def test_batched_gemm_calibration_times_both_libraries_at_each_row_count(
    smollm: LoadedModel,
) -> None:
    if not onednn_available():
        pytest.skip("torch built without oneDNN")
    chosen, timings = calibrate_onednn_rows(smollm.config, blocks=2, reps=1)
    assert set(timings) == set(ONEDNN_ROW_CANDIDATES)
    assert all(blas > 0 and onednn > 0 for blas, onednn in timings.values())
    # The choice is the fewest rows from which oneDNN never lost (this CPU's speed decides
    # which; the rule is checked here).
    later = [rows for rows in ONEDNN_ROW_CANDIDATES if chosen is not None and rows >= chosen]
    assert all(timings[rows][1] <= timings[rows][0] for rows in later)
    if chosen is None:
        assert timings[ONEDNN_ROW_CANDIDATES[-1]][1] > timings[ONEDNN_ROW_CANDIDATES[-1]][0]


def test_fixed_batched_gemm_settings_skip_the_calibration(smollm: LoadedModel) -> None:
    cpu, fp32, config = torch.device("cpu"), torch.float32, smollm.config
    assert onednn_rows_for("blas", config, fp32, cpu, 2) is None
    assert onednn_rows_for("auto", config, fp32, torch.device("cuda"), 1) is None
    assert onednn_rows_for("auto", config, torch.bfloat16, cpu, 2) is None
    if onednn_available():
        assert onednn_rows_for("onednn", config, fp32, cpu, 2) == ONEDNN_ROW_CANDIDATES[0]


def test_fixed_batch_dtypes_skip_the_calibration(smollm: LoadedModel) -> None:
    cpu, fp32, config = torch.device("cpu"), torch.float32, smollm.config
    onednn = Gemm(2, ONEDNN_ROW_CANDIDATES[0])
    assert batch_dtype_for("same", fp32, cpu, onednn, config) is None
    # No timing off a float32 CPU model on oneDNN: exact batches.
    assert batch_dtype_for("auto", fp32, torch.device("cuda"), onednn, config) is None
    assert batch_dtype_for("auto", torch.bfloat16, cpu, onednn, config) is None
    assert batch_dtype_for("auto", fp32, cpu, Gemm(2), config) is None
    with pytest.raises(ValueError, match="batch_dtype = bfloat16"):
        batch_dtype_for("bfloat16", fp32, cpu, Gemm(2), config)  # BLAS batches
    if onednn_bf16_available():
        assert batch_dtype_for("bfloat16", fp32, cpu, onednn, config) == torch.bfloat16


def test_auto_batch_dtype_times_bfloat16_on_onednn(smollm: LoadedModel) -> None:
    if not onednn_bf16_available():
        pytest.skip("oneDNN here has no native bfloat16 products")
    onednn = Gemm(2, ONEDNN_ROW_CANDIDATES[0])
    fp32, bf16 = time_batch_dtypes(smollm.config, onednn, reps=1)
    assert fp32 > 0 and bf16 > 0
    chosen = batch_dtype_for("auto", torch.float32, torch.device("cpu"), onednn, smollm.config)
    assert chosen in (None, torch.bfloat16)  # which one is this CPU's speed, not a property


def test_bfloat16_copies_run_on_onednn_from_its_first_row_count() -> None:
    if not onednn_bf16_available():
        pytest.skip("oneDNN here has no native bfloat16 products")
    generator = torch.Generator().manual_seed(5)
    weight = torch.randn(96, 40, generator=generator)
    copy = _low_precision(weight.t().contiguous(), torch.bfloat16)
    gemm = Gemm(2, onednn_min_rows=4)
    assert not gemm.uses_onednn(3, copy) and gemm.uses_onednn(4, copy)
    x = torch.randn(8, 40, generator=generator)
    expected = x.bfloat16().float() @ weight.bfloat16().float().t()
    got = gemm.matmul(x, copy)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)
