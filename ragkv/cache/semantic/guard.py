"""Hit guard: refuse a semantic hit whose query differs from the cached one in a way that
changes the answer even when the embeddings are close (numbers/dates, negation, names).

Embedding models map "flights to Paris on May 3" and "flights to Rome on May 4" close
together; the guard catches these cheaply with surface features (microseconds per pair).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’.-]*[A-Za-z]|[A-Za-z]")
_NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "without",
        "cannot",
        "cant",
        "dont",
        "doesnt",
        "didnt",
        "isnt",
        "arent",
        "wasnt",
        "werent",
        "wont",
        "wouldnt",
        "shouldnt",
        "couldnt",
        "hasnt",
        "havent",
        "hadnt",
    ]
)
_DATE_WORDS = frozenset(
    [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "yesterday",
        "today",
        "tomorrow",
        "tonight",
    ]
)
# Capitalised words that are not names: sentence starters and pronouns.
_NOT_ENTITIES = frozenset(
    [
        "i",
        "i'm",
        "i've",
        "i'd",
        "i'll",
        "a",
        "an",
        "the",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "why",
        "how",
        "when",
        "where",
        "is",
        "are",
        "was",
        "were",
        "do",
        "does",
        "did",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "if",
        "in",
        "on",
        "at",
        "to",
        "for",
        "of",
        "and",
        "or",
        "but",
        "my",
        "your",
        "our",
        "their",
        "his",
        "her",
        "its",
        "it",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "hi",
        "hello",
        "please",
        "thanks",
        "ok",
        "okay",
    ]
)


class QueryFeatures(NamedTuple):
    """Surface features of one query that the guard compares."""

    numbers: frozenset[str]
    dates: frozenset[str]
    negated: bool
    entities: frozenset[str]
    words: frozenset[str]


@functools.lru_cache(maxsize=8192)
def query_features(text: str) -> QueryFeatures:
    """Extract numbers, date words, negation and capitalised names from `text`."""
    numbers = frozenset(n.replace(",", "") for n in _NUMBER.findall(text))
    tokens = _WORD.findall(text)
    lowered = [t.lower().replace("’", "'").rstrip(".") for t in tokens]
    bare = [t.replace("'", "") for t in lowered]
    negated = any(t in _NEGATIONS for t in bare) or any(t.endswith("n't") for t in lowered)
    entities = set()
    for index, (token, low) in enumerate(zip(tokens, lowered, strict=True)):
        starts_sentence = index == 0 or _ends_sentence(text, token)
        if low in _NOT_ENTITIES or low in _DATE_WORDS:
            continue
        if token.isupper() and len(token) > 1 or token[0].isupper() and not starts_sentence:
            entities.add(low.removesuffix("'s"))
    words = frozenset(w.removesuffix("'s") for w in lowered)
    dates = frozenset(w for w in lowered if w in _DATE_WORDS)
    return QueryFeatures(numbers, dates, negated, frozenset(entities), words)


def _ends_sentence(text: str, token: str) -> bool:
    # A capital right after ". ", "? " or "! " starts a sentence, so it is no evidence of a name.
    at = text.find(token)
    before = text[:at].rstrip()
    return not before or before[-1] in ".?!:\"'("


def guard_conflict(query: str, cached_query: str) -> str | None:
    """Why `cached_query`'s answer must not serve `query`, or None when the guard passes.

    Returns one of "numbers", "dates", "negation", "entities".
    """
    new, old = query_features(query), query_features(cached_query)
    if new.numbers != old.numbers:
        return "numbers"
    if new.dates != old.dates:
        return "dates"
    if new.negated != old.negated:
        return "negation"
    # A name counts as present if the other query has the same word in any case.
    if not new.entities <= old.words or not old.entities <= new.words:
        return "entities"
    return None
