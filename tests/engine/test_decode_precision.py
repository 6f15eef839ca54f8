"""Low-precision decode weights (`model.decode_dtype` for one-row decode steps,
`model.batch_dtype` for batched ones): prefill stays exact, decode stays close."""

from __future__ import annotations

import pytest
import torch

from ragkv.assets import generation_model_path
from ragkv.engine.engine import LLMEngine
from ragkv.engine.gemm import onednn_bf16_available
from ragkv.engine.model import LlamaModel
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request
from ragkv.engine.weights import load_weights
from ragkv.settings import EngineSettings
from tests.engine.conftest import LoadedModel

QUESTIONS = ("Name a color.", "What is 2 + 2?", "Who wrote Hamlet?", "Say hello.",
             "Name a fruit.", "What is the capital of Italy?", "Count to three.",
             "What is water made of?")  # fmt: skip


def first_two_steps(model: LlamaModel, smollm: LoadedModel, prompt: list[int]):
    """Top logprobs after prefill and after the first decode step."""
    return first_two_steps_batched(model, smollm, [prompt])[0]


def first_two_steps_batched(model: LlamaModel, smollm: LoadedModel, prompts: list[list[int]]):
    """Per prompt, top logprobs after prefill and after the first decode step, the prompts
    run together (one prefill step, then decode steps of `len(prompts)` rows)."""
    engine = LLMEngine(model, smollm.tokenizer, EngineSettings(kv_cache_mb=16), "precision")
    params = SamplingParams(max_tokens=2, temperature=0, logprobs=True, top_logprobs=5)
    requests = [Request(f"r{i}", prompt, params) for i, prompt in enumerate(prompts)]
    outputs = engine.generate(requests)
    return [[o.logprobs[0] for o in outputs[r.request_id]] for r in requests]


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


def chat(smollm: LoadedModel, question: str) -> list[int]:
    return smollm.tokenizer.apply_chat_template([{"role": "user", "content": question}])


def test_bf16_batched_decode_keeps_prefill_exact_and_decode_close(smollm: LoadedModel) -> None:
    if not onednn_bf16_available() or smollm.model.gemm.onednn_min_rows is None:
        pytest.skip("batched bfloat16 decode runs on oneDNN's native bfloat16 products")
    config, weights = load_weights(generation_model_path())
    mixed = LlamaModel(config, weights, gemm=smollm.model.gemm, batch_dtype=torch.bfloat16)
    assert mixed.batch_layers is not None and mixed.decode_layers is None
    assert mixed.batch_layers[0].w_gate_up.dtype == torch.bfloat16
    assert mixed.layers[0].w_gate_up.dtype == torch.float32
    assert mixed.lm_head.dtype == torch.float32  # the head stays exact: it decides quality
    assert mixed.batched_decode_in_low_precision(len(QUESTIONS))
    prompts = [chat(smollm, q) for q in QUESTIONS]
    exact = first_two_steps_batched(smollm.model, smollm, prompts)
    approx = first_two_steps_batched(mixed, smollm, prompts)
    drifts = []
    for exact_steps, approx_steps in zip(exact, approx, strict=True):
        assert exact_steps[0].top == approx_steps[0].top  # the fp32 prefill: identical
        # the batched decode step used bf16 projections: close, not bit-identical; where fp32's
        # top two are far apart the token cannot move
        top = [logprob for _, logprob in exact_steps[1].top]
        if top[0] - top[1] > 0.5:
            assert exact_steps[1].token_id == approx_steps[1].token_id
        drifts.append(abs(exact_steps[1].logprob - approx_steps[1].logprob))
    assert max(drifts) > 0 and max(drifts) < 0.5


def test_bf16_batch_copies_leave_one_row_decode_exact(smollm: LoadedModel) -> None:
    if not onednn_bf16_available() or smollm.model.gemm.onednn_min_rows is None:
        pytest.skip("batched bfloat16 decode runs on oneDNN's native bfloat16 products")
    config, weights = load_weights(generation_model_path())
    mixed = LlamaModel(config, weights, gemm=smollm.model.gemm, batch_dtype=torch.bfloat16)
    assert not mixed.batched_decode_in_low_precision(1)  # oneDNN starts at 2 rows here
    prompt = chat(smollm, QUESTIONS[0])
    assert first_two_steps(mixed, smollm, prompt) == first_two_steps(smollm.model, smollm, prompt)
