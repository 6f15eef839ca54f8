"""Architecture of a Llama-family model, read from a GGUF file or a Hugging Face config.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragkv.errors import ModelError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and hyper-parameters of a decoder-only Llama/Qwen2 model."""

    architecture: str
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    rope_theta: float
    rms_norm_eps: float
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)

    @property
    def q_size(self) -> int:
        """Width of the query projection output."""
        return self.num_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.num_heads // self.num_kv_heads

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim


def _field(fields: dict[str, Any], key: str, default: Any = None) -> Any:
    if key in fields:
        return fields[key].contents()
    if default is None:
        raise ModelError(f"GGUF metadata has no '{key}'; is this a Llama-family model?")
    return default


def config_from_gguf(path: Path, reader: Any = None) -> ModelConfig:
    """Read the architecture from GGUF metadata. `reader` is an open `gguf.GGUFReader` or None."""
    if reader is None:
        import gguf

        reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    arch = _field(fields, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"GGUF architecture '{arch}' is not supported; use llama or qwen2")
    hidden = int(_field(fields, f"{arch}.embedding_length"))
    num_heads = int(_field(fields, f"{arch}.attention.head_count"))
    tensor_names = {t.name for t in reader.tensors}
    vocab = _field(fields, f"{arch}.vocab_size", 0) or len(_field(fields, "tokenizer.ggml.tokens"))
    rope_scaling = None
    if _field(fields, f"{arch}.rope.scaling.type", "none") == "llama3":
        rope_scaling = {"rope_type": "llama3"}
    return ModelConfig(
        architecture=arch,
        name=str(_field(fields, "general.name", path.stem)),
        num_layers=int(_field(fields, f"{arch}.block_count")),
        hidden_size=hidden,
        intermediate_size=int(_field(fields, f"{arch}.feed_forward_length")),
        num_heads=num_heads,
        num_kv_heads=int(_field(fields, f"{arch}.attention.head_count_kv", num_heads)),
        head_dim=int(_field(fields, f"{arch}.rope.dimension_count", hidden // num_heads)),
        vocab_size=int(vocab),
        context_length=int(_field(fields, f"{arch}.context_length")),
        rope_theta=float(_field(fields, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(fields, f"{arch}.attention.layer_norm_rms_epsilon")),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias="blk.0.attn_q.bias" in tensor_names,
        rope_scaling=rope_scaling,
    )


def config_from_hf(folder: Path) -> ModelConfig:
    """Read the architecture from a Hugging Face `config.json`."""
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read '{folder / 'config.json'}': {exc}") from exc
    arch = str(raw.get("model_type", ""))
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"model_type '{arch}' in {folder} is not supported; use llama or qwen2")
    hidden = int(raw["hidden_size"])
    num_heads = int(raw["num_attention_heads"])
    rope_scaling = raw.get("rope_scaling") or None
    rope_params = raw.get("rope_parameters") or {}
    rope_theta = raw.get("rope_theta", rope_params.get("rope_theta", 10000.0))
    if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
        rope_scaling = rope_params
    return ModelConfig(
        architecture=arch,
        name=folder.name,
        num_layers=int(raw["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(raw["intermediate_size"]),
        num_heads=num_heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or num_heads),
        head_dim=int(raw.get("head_dim") or hidden // num_heads),
        vocab_size=int(raw["vocab_size"]),
        context_length=int(raw.get("max_position_embeddings", 2048)),
        rope_theta=float(rope_theta),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=bool(raw.get("attention_bias", arch == "qwen2")),
        rope_scaling=rope_scaling,
    )


def load_config(path: Path) -> ModelConfig:
    """Config of a GGUF file or a Hugging Face folder."""
    path = Path(path)
    return config_from_hf(path) if path.is_dir() else config_from_gguf(path)
