"""Shared fixtures of the semantic cache tests: the real MiniLM embedder, a manual clock."""

from __future__ import annotations

import pytest

from ragkv.retrieval.embedder import Embedder
from ragkv.settings import EmbeddingSettings


class ManualClock:
    """A clock tests move by hand (seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    return Embedder(EmbeddingSettings())


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
