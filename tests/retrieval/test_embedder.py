"""MiniLM embedder: real model, normalised vectors, meaning-aware similarity, batching."""

from __future__ import annotations

import numpy as np
import pytest

from ragkv.retrieval.embedder import Embedder
from ragkv.settings import EmbeddingSettings


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(EmbeddingSettings(batch_size=2))


def test_vectors_are_normalised_and_384d(embedder: Embedder) -> None:
    vectors = embedder.embed(["hello world", "a second sentence", "and a third"])
    assert vectors.shape == (3, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_meaning_scores_higher(embedder: Embedder) -> None:
    a, b, c = embedder.embed(
        [
            "How do I reset my password?",
            "What is the way to change my forgotten password?",
            "The capital of France is Paris.",
        ]
    )
    assert float(a @ b) > 0.6
    assert float(a @ b) > float(a @ c) + 0.3


def test_batching_does_not_change_results(embedder: Embedder) -> None:
    texts = ["short", "a much longer sentence that needs padding in a batch", "mid length text"]
    batched = embedder.embed(texts)
    single = np.stack([embedder.embed_one(t) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_empty_input(embedder: Embedder) -> None:
    assert embedder.embed([]).shape == (0, 384)
