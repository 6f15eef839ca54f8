"""Engine fixtures: the bundled SmolLM2 loaded once, engines built from it on demand."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from ragkv.assets import generation_model_path
from ragkv.cache.kv.chunk_store import ChunkKVStore
from ragkv.engine.calibrate import ONEDNN_ROW_CANDIDATES
from ragkv.engine.config import ModelConfig
from ragkv.engine.engine import LLMEngine
from ragkv.engine.gemm import Gemm, onednn_available
from ragkv.engine.model import LlamaModel
from ragkv.engine.tokenizer import Tokenizer
from ragkv.engine.weights import fingerprint, load_weights
from ragkv.settings import ChunkCacheSettings, EngineSettings


@dataclass
class LoadedModel:
    """Weights, model and tokenizer of the bundled SmolLM2, shared by the session."""

    config: ModelConfig
    model: LlamaModel
    tokenizer: Tokenizer
    fingerprint: str


@pytest.fixture(scope="session")
def smollm() -> LoadedModel:
    torch.set_num_threads(2)
    path = generation_model_path()
    config, weights = load_weights(path)
    tokenizer = Tokenizer(path)
    # Batches and prefills on oneDNN where torch has it, as `batched_gemm = auto` chose on
    # the machines measured (one-row decodes stay on the column blocks).
    gemm = Gemm(2, ONEDNN_ROW_CANDIDATES[0] if onednn_available() else None)
    model = LlamaModel(config, weights, gemm=gemm)
    return LoadedModel(config, model, tokenizer, fingerprint(path, tokenizer.serialization()))


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_engine(smollm: LoadedModel) -> Callable[..., LLMEngine]:
    """Build an engine over the shared model with the given engine settings."""

    def build(
        clock: Callable[[], float] = time.monotonic,
        chunk_store: ChunkKVStore | None = None,
        chunk_settings: ChunkCacheSettings | None = None,
        **settings: object,
    ) -> LLMEngine:
        settings.setdefault("kv_cache_mb", 64)
        return LLMEngine(
            smollm.model,
            smollm.tokenizer,
            EngineSettings(**settings),
            smollm.fingerprint,
            clock,
            chunk_store=chunk_store,
            chunk_settings=chunk_settings,
        )

    return build
