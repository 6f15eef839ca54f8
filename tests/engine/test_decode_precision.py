"""Low-precision decode weights (`model.decode_dtype`): prefill stays exact, decode stays close."""

from __future__ import annotations

import torch

from ragkv.assets import generation_model_path
from ragkv.engine.engine import LLMEngine
from ragkv.engine.model import LlamaModel
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request
from ragkv.engine.weights import load_weights
from ragkv.settings import EngineSettings
from tests.engine.conftest import LoadedModel


def first_two_steps(model: LlamaModel, smollm: LoadedModel, prompt: list[int]):
    """Top logprobs after prefill and after the first decode step."""
    engine = LLMEngine(model, smollm.tokenizer, EngineSettings(kv_cache_mb=16), "precision")
    params = SamplingParams(max_tokens=2, temperature=0, logprobs=True, top_logprobs=5)
    outputs = engine.generate([Request("r", prompt, params)])["r"]
    return [o.logprobs[0] for o in outputs]


def test_bf16_decode_keeps_prefill_exact_and_decode_close(smollm: LoadedModel) -> None:
    config, weights = load_weights(generation_model_path())
    mixed = LlamaModel(config, weights, decode_dtype=torch.bfloat16, gemm=smollm.model.gemm)
    assert mixed.decode_layers is not None
    assert mixed.decode_layers[0].wqkv.dtype == torch.bfloat16
    assert mixed.layers[0].wqkv.dtype == torch.float32
    prompt = smollm.tokenizer.apply_chat_template([{"role": "user", "content": "Name a color."}])
    exact = first_two_steps(smollm.model, smollm, prompt)
    approx = first_two_steps(mixed, smollm, prompt)
    # prefill ran in fp32 in both: the first token's distribution is identical
    assert exact[0].top == approx[0].top
    # the decode step used bf16 weights: close, but not bit-identical
    assert exact[1].token_id == approx[1].token_id
    drift = abs(exact[1].logprob - approx[1].logprob)
    assert 0 < drift < 0.5


def test_a_float16_overflow_redoes_the_decode_step_in_float32(smollm: LoadedModel) -> None:
    config, weights = load_weights(generation_model_path())
    mixed = LlamaModel(config, weights, decode_dtype=torch.float16, gemm=smollm.model.gemm)
    assert mixed.decode_layers is not None and mixed.decode_dtype == torch.float16
    mixed.decode_layers[3].w_down.mul_(1e9)  # every float16 product of this layer overflows
    prompt = smollm.tokenizer.apply_chat_template([{"role": "user", "content": "Name a color."}])
    exact = first_two_steps(smollm.model, smollm, prompt)
    redone = first_two_steps(mixed, smollm, prompt)
    assert mixed.low_precision_fallbacks == 1  # the one decode step, redone
    assert [s.token_id for s in redone] == [s.token_id for s in exact]
    assert abs(redone[1].logprob - exact[1].logprob) < 1e-4  # float32 again: the same step
