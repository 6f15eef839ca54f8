"""Value types of the semantic cache API, and the checks on what callers pass in."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ragkv.errors import InvalidRequest


class CacheHit(NamedTuple):
    """A served entry: its id, the cached query and answer, and how close the match was."""

    entry_id: int
    query: str
    response: str
    similarity: float
    category: str
    created_at: float


class LookupResult(NamedTuple):
    """Outcome of a lookup. `hit` is None on a miss; `reason` says why (e.g. "guard_numbers").

    `similarity`/`entry_id` describe the best candidate even on a miss (None with no entries);
    `threshold` is the category's effective threshold at the time (load-adapted).
    """

    hit: CacheHit | None
    category: str
    threshold: float
    similarity: float | None
    entry_id: int | None
    reason: str


class Sources(NamedTuple):
    """What a RAG answer was generated from: a collection (an opaque key the caller makes,
    tenant included) and the ids (content hashes) of the chunks retrieval returned."""

    collection: str
    chunk_ids: tuple[str, ...]


class CacheWrite(NamedTuple):
    """One answer to cache. `vector: [dim]`; `category`/`ttl_s` None take the defaults;
    `sources` ties a RAG answer to its chunks, so that changing one of them drops it."""

    query: str
    response: str
    vector: np.ndarray
    category: str | None = None
    ttl_s: float | None = None
    sources: Sources | None = None


class StoreResult(NamedTuple):
    """Where a write went: the new entry id (None when refused and why), evictions it caused."""

    entry_id: int | None
    category: str
    reason: str
    evicted: int


def check_query(query: Any) -> str:
    """The stripped query; InvalidRequest when it is not a non-empty string."""
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest("query must be a non-empty string", param="query")
    return query.strip()


def check_vector(vector: Any) -> np.ndarray:
    """`vector` as an L2-normalised float32 `[dim]`; InvalidRequest when unusable."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise InvalidRequest("the query vector must be a finite 1-D array", param="vector")
    squared = float(np.dot(array, array))  # NaN or inf when any element is (one pass)
    if not math.isfinite(squared):
        raise InvalidRequest("the query vector must be a finite 1-D array", param="vector")
    if squared == 0.0:
        raise InvalidRequest("the query vector must not be all zeros", param="vector")
    return array / math.sqrt(squared)
