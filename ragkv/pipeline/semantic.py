"""The semantic-cache step of a chat request: look up before the engine, store back after.

Only deterministic requests take part (temperature 0, or `ragkv.semantic_cache: true`), and
never requests asking for logprobs (a cached answer has none). The partition key carries the
system prompt and the earlier turns, so an answer is only reused in the same context.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.keys import is_cacheable, template_hash
from ragkv.cache.semantic.types import CacheHit
from ragkv.retrieval.embedder import Embedder

log = logging.getLogger("ragkv.pipeline")


@dataclass
class SemanticProbe:
    """A cacheable request's key and lookup outcome (`hit` None on a miss)."""

    tenant: str
    model: str
    template: str
    query: str
    vector: np.ndarray
    category: str
    threshold: float
    similarity: float | None
    hit: CacheHit | None
    reason: str

    def info(self) -> dict[str, Any]:
        """The `semantic_cache` part of the response's `ragkv` object."""
        return {
            "semantic_cache": "hit" if self.hit else "miss",
            "category": self.category,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "threshold": round(self.threshold, 4),
            "entry_id": self.hit.entry_id if self.hit else None,
        }


class SemanticStep:
    """Looks up and stores chat answers in the semantic cache for one model."""

    def __init__(self, cache: SemanticCache, embedder: Embedder, model_id: str) -> None:
        self.cache = cache
        self.embedder = embedder
        self.model_id = model_id

    async def probe(
        self,
        tenant: str,
        messages: list[dict[str, str]],
        temperature: float,
        requested: bool | None,
        category: str | None,
        load: float,
    ) -> SemanticProbe | None:
        """Look the request up; None when it does not take part in the semantic cache."""
        if not is_cacheable(temperature, requested) or messages[-1]["role"] != "user":
            return None
        query = messages[-1]["content"].strip()
        if not query:
            return None
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        earlier = json.dumps([m for m in messages[:-1] if m["role"] != "system"])
        template = template_hash(system or None, earlier if earlier != "[]" else None)
        self.cache.set_load(load)
        vector = await run_in_threadpool(self.embedder.embed_one, query)
        result = await run_in_threadpool(
            self.cache.lookup, tenant, self.model_id, template, query, vector, category
        )
        return SemanticProbe(
            tenant,
            self.model_id,
            template,
            query,
            vector,
            result.category,
            result.threshold,
            result.similarity,
            result.hit,
            result.reason,
        )

    async def store(self, probe: SemanticProbe, answer: str, finish_reason: str | None) -> None:
        """Store a finished miss's answer (complete answers only: finish_reason 'stop')."""
        if probe.hit is not None or probe.reason == "not_cacheable":
            return
        if finish_reason != "stop" or not answer.strip():
            return
        try:
            await run_in_threadpool(
                self.cache.store_answer,
                probe.tenant,
                probe.model,
                probe.template,
                probe.query,
                probe.vector,
                answer,
                probe.category,
            )
        except Exception:  # a full quota or similar must not fail an answered request
            log.exception("semantic cache store-back failed")
