"""Fixtures of the property tests: the serving model's tokenizer, loaded once."""

from __future__ import annotations

import pytest

from ragkv.assets import generation_model_path
from ragkv.retrieval.tokenizer import HFTokenizer, load_model_tokenizer


@pytest.fixture(scope="session")
def serving_tokenizer() -> HFTokenizer:
    """SmolLM2's tokenizer, read from the bundled GGUF file."""
    return load_model_tokenizer(generation_model_path())
