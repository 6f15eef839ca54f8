"""Small random-weight Llama and Qwen2-style models for backend comparisons (no files)."""

from __future__ import annotations

import torch

from ragkv.engine.config import ModelConfig
from ragkv.engine.model import LlamaModel
from ragkv.engine.synthetic import random_weights

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,  # small, so the test positions cross the bands
}


def llama_config() -> ModelConfig:
    """A 2-layer Llama with GQA 3:1, head_dim 32 and llama3 RoPE scaling."""
    return ModelConfig(
        architecture="llama",
        name="random-llama",
        num_layers=2,
        hidden_size=192,
        intermediate_size=320,
        num_heads=6,
        num_kv_heads=2,
        head_dim=32,
        vocab_size=512,
        context_length=4096,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        rope_scaling=dict(LLAMA3_SCALING),
    )


def qwen2_config() -> ModelConfig:
    """A 2-layer Qwen2-style model: q/k/v biases, GQA 2:1, head_dim 64, untied LM head."""
    return ModelConfig(
        architecture="qwen2",
        name="random-qwen2",
        num_layers=2,
        hidden_size=256,
        intermediate_size=384,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vocab_size=512,
        context_length=4096,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_bias=True,
    )


def random_model(config: ModelConfig, backend: str, seed: int = 0) -> LlamaModel:
    """The model of `config` with seeded random weights on `backend` (CUDA when present)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return LlamaModel(config, random_weights(config, seed), device=device, backend=backend)
