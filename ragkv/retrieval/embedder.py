"""Sentence embeddings with all-MiniLM-L6-v2 (transformers + mean pooling), offline, batched."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from ragkv.assets import embedding_model_dir
from ragkv.compute import ComputeThread
from ragkv.errors import Unprocessable
from ragkv.settings import EmbeddingSettings

T = TypeVar("T")


class Embedder:
    """Turn texts into L2-normalised float32 vectors `[n, dim]`; thread-safe.

    The model loads lazily on first use (no import-time or construction-time work). With a
    `compute` thread (a serving process), the model loads and runs there, whatever thread
    calls (see `ragkv/compute.py`).
    """

    max_tokens = 256

    def __init__(self, settings: EmbeddingSettings, compute: ComputeThread | None = None) -> None:
        self.settings = settings
        self._compute = compute
        self.model_dir: Path = embedding_model_dir(settings.model_dir)
        self.model_name = "all-MiniLM-L6-v2" if settings.model_dir is None else self.model_dir.name
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None

    def _load(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        model = AutoModel.from_pretrained(str(self.model_dir))
        model.eval()
        self._model = model

    def _loaded(self) -> None:
        with self._lock:
            if self._model is None:
                self._load()

    def _on_compute(self, fn: Callable[..., T], *args: object) -> T:
        # Never hold self._lock while waiting for the compute thread: the work takes it there.
        return fn(*args) if self._compute is None else self._compute.call(fn, *args)

    @property
    def dim(self) -> int:
        """Vector width (384 for MiniLM)."""
        self._on_compute(self._loaded)
        return int(self._model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` in batches: returns `[len(texts), dim]` float32."""
        if isinstance(texts, str):
            raise Unprocessable("embed() takes a list of strings, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._on_compute(self._embed, list(texts))

    def _embed(self, texts: list[str]) -> np.ndarray:
        import torch

        out: list[np.ndarray] = []
        # Batching texts of similar length wastes less compute on padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with self._lock:
            if self._model is None:
                self._load()
            for start in range(0, len(texts), self.settings.batch_size):
                batch = [texts[i] for i in order[start : start + self.settings.batch_size]]
                encoded = self._tokenizer(
                    batch,
                    padding=True,
                    truncation=True,
                    max_length=self.max_tokens,
                    return_tensors="pt",
                )
                with torch.inference_mode():
                    hidden = self._model(**encoded).last_hidden_state
                mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out.append(pooled.float().numpy())
        vectors = np.empty((len(texts), out[0].shape[1]), dtype=np.float32)
        vectors[order] = np.concatenate(out, axis=0)
        return vectors

    def embed_one(self, text: str) -> np.ndarray:
        """One text -> `[dim]` float32."""
        return self.embed([text])[0]

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads for `texts` (with specials, after truncation), for usage."""
        self._on_compute(self._loaded)
        with self._lock:
            encoded = self._tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
        return sum(len(ids) for ids in encoded["input_ids"])
