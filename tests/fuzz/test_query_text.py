"""The category classifier and the hit guard on any Unicode (lone surrogates included): they
never raise, the classifier names a known category, and the guard is symmetric, passes a
query against itself and refuses a query whose number changed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from ragkv.cache.semantic.categories import CategoryClassifier, PolicyTable, rule_category
from ragkv.cache.semantic.guard import guard_conflict, query_features
from ragkv.settings import SemanticCacheSettings
from tests.fuzz import fuzz_settings

ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]))
HINTS = st.sampled_from(
    ["not", "n't", "May", "Paris", "today", "3", "1,000.5", "12:30", "my balance", "```",
     "def f(", "x.y(", "2 + 2", "%", "’s", "İ", "ß", "٣", "½", "\u0301", "\ufeff", "\x00"]
)  # fmt: skip
TEXTS = st.lists(st.one_of(HINTS, st.text(ANY_CHAR, max_size=8), st.just(" ")), max_size=24).map(
    "".join
)
REASONS = {None, "numbers", "dates", "negation", "entities"}


def fake_embed(texts: list[str]) -> np.ndarray:
    """Unit vectors [n, 32], a fixed function of each text's bytes (no model needed)."""
    rows = []
    for text in texts:
        seed = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
        row = np.random.default_rng(list(seed)).standard_normal(32)
        rows.append(row / np.linalg.norm(row))
    return np.asarray(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def classifier() -> CategoryClassifier:
    settings = SemanticCacheSettings()
    table = PolicyTable(settings.categories, settings.default_category)
    return CategoryClassifier(
        settings.classifier_examples, table, settings.classifier_min_similarity, fake_embed
    )


@fuzz_settings(300)
@given(text=TEXTS, with_vector=st.booleans())
def test_classifier_names_a_known_category(
    classifier: CategoryClassifier, text: str, with_vector: bool
) -> None:
    vector = fake_embed([text])[0] if with_vector else None
    assert classifier.classify(text, vector) in classifier.table.all()
    assert rule_category(text) in {None, *classifier.table.all()}


@fuzz_settings(300)
@given(query=TEXTS, cached=TEXTS)
def test_guard_is_total_symmetric_and_reflexive(query: str, cached: str) -> None:
    reason = guard_conflict(query, cached)
    assert reason in REASONS
    assert guard_conflict(cached, query) == reason
    assert guard_conflict(query, query) is None


@fuzz_settings(150)
@given(query=TEXTS)
def test_guard_refuses_another_number(query: str) -> None:
    assume(not {"7", "8"} & query_features(query).numbers)
    assert guard_conflict(f"{query} 7", f"{query} 8") == "numbers"
