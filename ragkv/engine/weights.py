"""Load Llama/Qwen2 weights from GGUF (dequantized) or Hugging Face safetensors.

Both paths produce one naming: `embed`, `final_norm`, `lm_head`, and per layer `layers.{i}.`
`attn_norm, wq, wk, wv, bq, bk, bv, wo, ffn_norm, w_gate, w_up, w_down` (HF orientation:
`[out_features, in_features]`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ragkv.engine.config import ModelConfig, config_from_gguf, config_from_hf
from ragkv.errors import ModelError

_GGUF_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm",
    "attn_q.weight": "wq",
    "attn_k.weight": "wk",
    "attn_v.weight": "wv",
    "attn_q.bias": "bq",
    "attn_k.bias": "bk",
    "attn_v.bias": "bv",
    "attn_output.weight": "wo",
    "ffn_norm.weight": "ffn_norm",
    "ffn_gate.weight": "w_gate",
    "ffn_up.weight": "w_up",
    "ffn_down.weight": "w_down",
}
_HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm",
    "self_attn.q_proj.weight": "wq",
    "self_attn.k_proj.weight": "wk",
    "self_attn.v_proj.weight": "wv",
    "self_attn.q_proj.bias": "bq",
    "self_attn.k_proj.bias": "bk",
    "self_attn.v_proj.bias": "bv",
    "self_attn.o_proj.weight": "wo",
    "post_attention_layernorm.weight": "ffn_norm",
    "mlp.gate_proj.weight": "w_gate",
    "mlp.up_proj.weight": "w_up",
    "mlp.down_proj.weight": "w_down",
}


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head row interleave of `attn_q`/`attn_k` (HF rotate-half layout)."""
    head_half = weight.shape[0] // num_heads // 2
    grouped = weight.reshape(num_heads, head_half, 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def _gguf_name(name: str) -> str | None:
    if name == "token_embd.weight":
        return "embed"
    if name == "output_norm.weight":
        return "final_norm"
    if name == "output.weight":
        return "lm_head"
    if name.startswith("blk."):
        _, index, rest = name.split(".", 2)
        if rest in _GGUF_LAYER_NAMES:
            return f"layers.{index}.{_GGUF_LAYER_NAMES[rest]}"
    return None


def load_gguf(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and fp32 weights of a GGUF file (any quantization the gguf package reads)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    config = config_from_gguf(path, reader)
    weights: dict[str, torch.Tensor] = {}
    for tensor in reader.tensors:
        name = _gguf_name(tensor.name)
        if name is None:
            continue
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, dtype=np.float32).reshape(
            [int(d) for d in reversed(tensor.shape)]
        )
        if config.architecture == "llama" and name.endswith((".wq", ".bq")):
            array = unpermute_rope_rows(array, config.num_heads)
        elif config.architecture == "llama" and name.endswith((".wk", ".bk")):
            array = unpermute_rope_rows(array, config.num_kv_heads)
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, copy=True)  # mmap-backed F32 tensors are read-only
        weights[name] = torch.from_numpy(array)
    return config, weights


def _safetensor_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no *.safetensors files in '{folder}'")
    return files


def _iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors.torch import safe_open

    for file in _safetensor_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield key, handle.get_tensor(key)


def load_hf(folder: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and fp32 weights of a Hugging Face folder (config.json + safetensors)."""
    config = config_from_hf(folder)
    weights: dict[str, torch.Tensor] = {}
    for key, tensor in _iter_safetensors(folder):
        key = key.removeprefix("model.")
        if key == "embed_tokens.weight":
            name = "embed"
        elif key == "norm.weight":
            name = "final_norm"
        elif key == "lm_head.weight":
            name = "lm_head"
        elif key.startswith("layers."):
            _, index, rest = key.split(".", 2)
            if rest not in _HF_LAYER_NAMES:
                continue
            name = f"layers.{index}.{_HF_LAYER_NAMES[rest]}"
        else:
            continue
        weights[name] = tensor.to(torch.float32)
    return config, weights


def load_weights(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """Config and fp32 weights of a GGUF file or HF folder; checks every tensor is present."""
    path = Path(path)
    config, weights = load_hf(path) if path.is_dir() else load_gguf(path)
    required = ["embed", "final_norm"]
    per_layer = ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_up", "w_down"]
    if config.attention_bias:
        per_layer += ["bq", "bk", "bv"]
    required += [f"layers.{i}.{n}" for i in range(config.num_layers) for n in per_layer]
    missing = [name for name in required if name not in weights]
    if missing:
        raise ModelError(f"model '{path}' lacks tensors: {', '.join(missing[:5])}")
    if "lm_head" not in weights:
        weights["lm_head"] = weights["embed"]
    return config, weights


def fingerprint(path: Path, tokenizer_json: str) -> str:
    """Stable id of (weights, tokenizer): keys every KV cache entry made with this model.

    Hashes each weight file's size and its first and last 8 MiB (fast for multi-GB models,
    yet any re-quantization or fine-tune changes it) plus the tokenizer's serialization.
    """
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else [*_safetensor_files(path), path / "config.json"]
    window = 8 * 1024 * 1024
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with file.open("rb") as fh:
            digest.update(fh.read(window))
            if size > window:
                fh.seek(max(window, size - window))
                digest.update(fh.read(window))
    digest.update(hashlib.sha256(tokenizer_json.encode()).digest())
    return digest.hexdigest()[:16]


def config_json(config: ModelConfig) -> str:
    """The config as canonical JSON (for logs and fingerprints)."""
    from dataclasses import asdict

    return json.dumps(asdict(config), sort_keys=True, default=str)
