"""Batched native decode steps (more than `NATIVE_MAX_ROWS` sequences) on packed bfloat16
panels (`kernels/cpu_bf16.c`): the step is the float32 torch path whose projections multiply
bfloat16-rounded activations by bfloat16 weights (what `model.batch_dtype = bfloat16` means),
the LM head on float16 weights with float32 rows (the weights here are bfloat16 values, which
float16 holds but for the few below its normal range), up to the order of float32 sums."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest
import torch

from ragkv.assets import generation_model_path
from ragkv.engine.calibrate import native_batches_for, time_native_batches
from ragkv.engine.engine import LLMEngine
from ragkv.engine.gemm import Gemm
from ragkv.engine.model import NATIVE_MAX_ROWS, LlamaModel
from ragkv.engine.synthetic import random_weights
from ragkv.kernels import cpu_decode
from ragkv.settings import EngineSettings, ModelSettings
from tests.engine.helpers import greedy_request, run_greedy
from tests.engine.random_model import llama_config, qwen2_config
from tests.engine.test_native_decode import decode_together

if not cpu_decode.bf16_supported():
    pytest.skip(
        "batched native steps need AVX512-BF16 (and the native library); "
        f"{cpu_decode.why_unavailable() or 'this CPU lacks AVX512-BF16'}",
        allow_module_level=True,
    )

ROWS = NATIVE_MAX_ROWS + 4


@dataclass(frozen=True)
class RoundedActivations(Gemm):
    """The reference products of decode steps (`rows` rows; the test's prefills have other
    lengths and stay float32): each projection's input rounded to bfloat16 (round to nearest
    even, as the packed step rounds it) times the float32 weights, which the test makes
    bfloat16-exact; the LM head (in `head`, once the model made it) multiplies the float32
    rows as they are."""

    rows: int = ROWS
    head: list[torch.Tensor] = field(default_factory=list)

    def matmul(self, x, weight_t, bias=None, packed=None):
        if x.shape[0] == self.rows and not any(weight_t is w for w in self.head):
            x = x.bfloat16().float()
        return super().matmul(x, weight_t, bias, packed)


def bfloat16_exact(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: w.bfloat16().float() for name, w in weights.items()}


def batch_model(config, weights, native_batches: bool = True) -> LlamaModel:
    """Float16 one-row decode, bfloat16 batches, native steps asked for (as the defaults
    choose on a CPU with AVX512-BF16)."""
    return LlamaModel(
        config,
        weights,
        decode_dtype=torch.float16,
        batch_dtype=torch.bfloat16,
        native_decode=True,
        native_batches=native_batches,
    )


def batch_inputs(config, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    lengths = [4 + 5 * i % 23 for i in range(ROWS)]  # 4..26, never ROWS
    assert ROWS not in lengths
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=generator) for n in lengths]
    return prompts, torch.randint(0, config.vocab_size, (ROWS, 6), generator=generator)


@pytest.mark.parametrize(
    "make_config",
    [llama_config, qwen2_config, lambda: replace(llama_config(), intermediate_size=300)],
    ids=["llama", "qwen2-bias", "odd-widths"],
)
def test_batched_native_steps_are_the_rounded_activation_steps(make_config) -> None:
    config = make_config()
    weights = bfloat16_exact(random_weights(config, seed=11))
    native = batch_model(config, weights)
    assert native.batch_panels is not None and native.batch_layers is None
    gemm = RoundedActivations()
    reference = LlamaModel(config, weights, gemm=gemm)
    gemm.head.append(reference.lm_head_t)
    prompts, forced = batch_inputs(config, seed=12)
    got, _ = decode_together(native, prompts, forced)
    want, _ = decode_together(reference, prompts, forced)
    plain, _ = decode_together(LlamaModel(config, weights), prompts, forced)
    assert native.native_steps == forced.shape[1]
    # Rows agree to float32 rounding, except where a float32 sum that differs in its last
    # bits rounded an activation to the other bfloat16 neighbour (from then on that row's
    # steps differ by such a step's effect): far below the rounding's own effect (`plain`).
    scale = float(want.abs().max())
    row_error = (got - want).abs().amax(-1)  # [steps, rows]
    exact = row_error <= 1e-5 * scale
    assert int(exact[0].sum()) >= ROWS - 2, row_error[0]
    assert float(exact.float().mean()) >= 0.7, row_error
    assert float(row_error.max()) < float((plain - want).abs().max())


def test_the_engine_decodes_large_batches_natively_by_default(smollm) -> None:
    settings = EngineSettings(kv_cache_mb=64, max_num_seqs=ROWS)
    engine = LLMEngine.from_path(generation_model_path(), ModelSettings(), settings)
    model = engine.model
    requests = [greedy_request(list(range(100 + i, 120 + 2 * i)), 6) for i in range(ROWS)]
    outputs = run_greedy(engine, requests)
    assert all(len(tokens) == 6 for tokens, _ in outputs.values())
    if model.batch_panels is None:  # the batches above ran on the torch path
        assert model.native_steps == 0
        pytest.skip("the start-up calibration kept batches off the native step here")
    assert model.native_steps >= 5  # the decode steps of all ROWS sequences at once


def test_batches_stay_on_the_torch_path_when_calibration_or_settings_say_so() -> None:
    config = llama_config()
    weights = bfloat16_exact(random_weights(config, seed=13))
    torch_batches = batch_model(config, weights, native_batches=False)
    assert torch_batches.batch_panels is None and torch_batches.batch_layers is not None
    prompts, forced = batch_inputs(config, seed=14)
    decode_together(torch_batches, prompts, forced[:, :2])
    assert torch_batches.native_steps == 0  # 12 rows: above NATIVE_MAX_ROWS, on oneDNN
    gemm, cpu, fp32 = torch_batches.gemm, torch.device("cpu"), torch.float32
    settings = ModelSettings()
    assert not native_batches_for(settings, config, fp32, cpu, gemm, None)  # float32 batches
    off = ModelSettings(native_decode="off")
    assert not native_batches_for(off, config, fp32, cpu, gemm, torch.bfloat16)
    native, onednn = time_native_batches(config, gemm, reps=1)  # both timed (never compared
    assert native > 0 and onednn > 0  # here: a test does not depend on timing)
