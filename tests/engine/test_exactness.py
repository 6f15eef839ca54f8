"""Our engine against transformers on the same weights: logits within 1e-3, same greedy text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ragkv.assets import generation_model_path
from ragkv.engine.engine import LLMEngine
from ragkv.engine.model import LlamaModel
from ragkv.engine.weights import load_weights
from ragkv.settings import EngineSettings
from tests.engine.conftest import LoadedModel
from tests.engine.helpers import greedy_request, prefill_logits, run_greedy

SENTENCES = [
    "The river carried silt from the mountains down to the wide delta.",
    "Engineers measured the bridge every spring after the floods receded.",
    "In 1887 the town council voted to build a library near the market square.",
    "Most of the orchard's apples were sold in the city before winter.",
    "She wrote that the experiment failed twice before the third attempt worked.",
    "Trains from the north arrived late whenever snow covered the pass.",
    "A small museum now keeps the letters, maps and tools of the first settlers.",
    "Nobody expected the old lighthouse to survive the storm of 1953.",
]


def long_text(num_sentences: int) -> str:
    return " ".join(f"({i}) {SENTENCES[i % len(SENTENCES)]}" for i in range(num_sentences))


@pytest.fixture(scope="module")
def hf_smollm():
    from transformers import AutoModelForCausalLM

    path = generation_model_path()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def prompts(smollm: LoadedModel) -> list[list[int]]:
    tokenizer = smollm.tokenizer
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is a river delta?"}])
    return [chat, tokenizer.encode(long_text(12)), tokenizer.encode(long_text(60))]


def test_prompts_cover_a_long_one(smollm: LoadedModel) -> None:
    assert max(len(p) for p in prompts(smollm)) > 1000


@pytest.mark.parametrize("index", [0, 1, 2], ids=["chat", "medium", "over-1000-tokens"])
def test_logits_match_transformers(smollm: LoadedModel, hf_smollm, index: int) -> None:
    token_ids = prompts(smollm)[index]
    ours = prefill_logits(smollm.model, token_ids)
    with torch.inference_mode():
        reference = hf_smollm(torch.tensor([token_ids])).logits[0].float()
    assert ours.shape == reference.shape
    assert float((ours - reference).abs().max()) <= 1e-3


def test_greedy_64_tokens_match_transformers(make_engine, smollm: LoadedModel, hf_smollm) -> None:
    prompt = prompts(smollm)[0]
    engine = make_engine()
    ours, _ = run_greedy(engine, [greedy_request(prompt, 64)]).popitem()[1]
    with torch.inference_mode():
        generated = hf_smollm.generate(
            torch.tensor([prompt]),
            max_new_tokens=64,
            min_new_tokens=64,
            do_sample=False,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )
    assert ours == generated[0, len(prompt) :].tolist()


def build_random(kind: str, folder: Path):
    """A small random-weight model built by transformers and saved as safetensors."""
    import transformers

    torch.manual_seed(0)
    common = dict(
        vocab_size=1000,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
    )
    if kind == "llama-gqa3-llama3-rope":
        config = transformers.LlamaConfig(
            **common,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        )
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=50000.0)
        model = transformers.Qwen2ForCausalLM(config)
        with torch.no_grad():  # random biases, so a loader that drops them fails
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
                    proj.bias.normal_(0, 0.5)
                layer.self_attn.v_proj.bias.normal_(0, 0.5)
    model = model.float().eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.mark.parametrize("kind", ["llama-gqa3-llama3-rope", "qwen2-bias"])
def test_random_models_match_transformers(kind: str, tmp_path: Path, smollm: LoadedModel) -> None:
    reference = build_random(kind, tmp_path)
    config, weights = load_weights(tmp_path)
    assert config.num_heads // config.num_kv_heads == 3
    assert config.attention_bias == (kind == "qwen2-bias")
    model = LlamaModel(config, weights)
    generator = torch.Generator().manual_seed(1)
    token_ids = torch.randint(0, 1000, (300,), generator=generator).tolist()
    with torch.inference_mode():
        expected = reference(torch.tensor([token_ids])).logits[0]
    assert float((prefill_logits(model, token_ids) - expected).abs().max()) <= 1e-3

    engine = LLMEngine(model, smollm.tokenizer, EngineSettings(kv_cache_mb=8), "random")
    ours, _ = run_greedy(engine, [greedy_request(token_ids[:40], 32)]).popitem()[1]
    with torch.inference_mode():
        generated = reference.generate(
            torch.tensor([token_ids[:40]]),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            attention_mask=torch.ones(1, 40, dtype=torch.long),
        )
    assert ours == generated[0, 40:].tolist()
