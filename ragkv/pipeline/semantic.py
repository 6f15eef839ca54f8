"""The semantic-cache step of a chat request: look up before the engine, store back after,
and coalesce concurrent identical misses (single-flight).

Only deterministic requests take part (temperature 0, or `ragkv.semantic_cache: true`), and
never requests asking for logprobs (a cached answer has none). The partition key carries the
system prompt and the earlier turns, so an answer is only reused in the same context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from starlette.concurrency import run_in_threadpool

from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.keys import is_cacheable, normalize_query, template_hash
from ragkv.cache.semantic.single_flight import Flight, SingleFlight
from ragkv.cache.semantic.types import CacheHit, Sources
from ragkv.pipeline.request import ChatRequest
from ragkv.retrieval.embedder import Embedder

log = logging.getLogger("ragkv.pipeline")

_PIECES = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class SharedAnswer:
    """A finished answer a single-flight leader hands to the identical requests waiting."""

    text: str
    entry_id: int | None


@dataclass(frozen=True)
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
    shared_entry_id: int | None = None
    sources: Sources | None = None  # a RAG answer's collection and retrieved chunks

    @property
    def served(self) -> bool:
        """Answered without the engine: a cache hit or a single-flight leader's answer."""
        return self.hit is not None or self.reason == "single_flight"

    @property
    def cacheable_miss(self) -> bool:
        """Looked up, not found, and its category is cached: the engine answers it, the
        answer is stored, and identical requests may share it."""
        return not self.served and self.reason != "not_cacheable"

    @property
    def flight_key(self) -> tuple[str, str, str, str, str]:
        """Identical requests: same tenant, model, template, category, normalised question."""
        return (self.tenant, self.model, self.template, self.category, normalize_query(self.query))

    def info(self) -> dict[str, Any]:
        """The `semantic` part of the response's `ragkv` object."""
        entry_id = self.hit.entry_id if self.hit else self.shared_entry_id
        return {
            "semantic_cache": "hit" if self.served else "miss",
            "category": self.category,
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "threshold": round(self.threshold, 4),
            "entry_id": entry_id,
        }


class SemanticStep:
    """Looks up, shares and stores chat answers in the semantic cache for one model."""

    def __init__(
        self,
        cache: SemanticCache,
        embedder: Embedder,
        model_id: str,
        flight_wait_s: float = 120.0,
    ) -> None:
        self.cache = cache
        self.embedder = embedder
        self.model_id = model_id
        self.flight_wait_s = flight_wait_s
        self.flights = SingleFlight()

    async def probe(
        self, request: ChatRequest, load: float, retrieved: tuple[str, ...] = ()
    ) -> SemanticProbe | None:
        """Look the request up (`retrieved`: the chunk ids retrieval found for a RAG request,
        in order); None when it does not take part in the semantic cache."""
        temperature = request.params.temperature
        if not is_cacheable(temperature, request.cache.semantic_cache):
            return None
        messages = keyed_by_context(request, retrieved)
        if messages[-1]["role"] != "user":
            return None
        query = str(messages[-1]["content"] or "").strip()
        if not query:
            return None
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        earlier = json.dumps([m for m in messages[:-1] if m["role"] != "system"])
        template = template_hash(system or None, earlier if earlier != "[]" else None)
        await run_in_threadpool(self.cache.set_load, load)  # the cache may be remote (cluster)
        vector = await run_in_threadpool(self.embedder.embed_one, query)
        result = await run_in_threadpool(
            self.cache.lookup,
            request.cache.owner(request.tenant),
            self.model_id,
            template,
            query,
            vector,
            request.cache.category,
        )
        return SemanticProbe(
            request.cache.owner(request.tenant),
            self.model_id,
            template,
            query,
            vector,
            result.category,
            result.threshold,
            result.similarity,
            result.hit,
            result.reason,
            sources=rag_sources(request, retrieved),
        )

    async def join(self, probe: SemanticProbe) -> tuple[SemanticProbe, SharedAnswer | None]:
        """For a miss: wait for an identical request being answered now and take its answer
        (the probe then reads as a hit on the leader's entry), or become the leader."""
        if not probe.cacheable_miss:
            return probe, None
        shared = await self.flights.wait(probe.flight_key, self.flight_wait_s)
        if shared is None:
            return probe, None
        joined = replace(
            probe, similarity=1.0, reason="single_flight", shared_entry_id=shared.entry_id
        )
        return joined, shared

    def lead(self, probe: SemanticProbe) -> Flight[SharedAnswer] | None:
        """Register a cacheable miss as the one request computing its answer."""
        if not probe.cacheable_miss:
            return None
        return self.flights.lead(probe.flight_key)

    async def store(
        self, probe: SemanticProbe, answer: str, finish_reason: str | None
    ) -> SharedAnswer | None:
        """Store a finished miss's answer (complete answers only: finish_reason 'stop');
        what identical waiting requests may be given (None: an incomplete answer)."""
        if not probe.cacheable_miss:
            return None
        if finish_reason != "stop" or not answer.strip():
            return None
        entry_id = None
        try:
            result = await run_in_threadpool(
                self.cache.store_answer,
                probe.tenant,
                probe.model,
                probe.template,
                probe.query,
                probe.vector,
                answer,
                probe.category,
                None,
                probe.sources,
            )
            entry_id = result.entry_id
        except Exception:  # a full quota or similar must not fail an answered request
            log.exception("semantic cache store-back failed")
        return SharedAnswer(answer, entry_id)


def source_collection(tenant: str, name: str) -> str:
    """The key under which the semantic cache records answers built from a collection."""
    return json.dumps([tenant, name])


def rag_sources(request: ChatRequest, retrieved: tuple[str, ...]) -> Sources | None:
    """What a RAG answer is built from (None without a collection): replacing or deleting
    one of these chunks, or the collection, drops the answer (see `Retriever` listeners)."""
    if request.rag is None:
        return None
    return Sources(source_collection(request.tenant, request.rag.collection), retrieved)


def keyed_by_context(request: ChatRequest, retrieved: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Messages as the semantic cache keys them: a RAG answer is only reused for the same
    context: the same inline documents, or the same collection, top_k and retrieved chunk
    ids (content hashes, in order), so an answer dies with a replaced or deleted source.
    Tools, tool choice and response format are part of the key too (tool calls and results
    of earlier turns are, as the messages they are)."""
    markers = []
    if request.has_context:
        digest = hashlib.sha256()
        for document in request.documents:
            digest.update(f"{document.id}\x00{document.text}\x00".encode())
        if request.rag is not None:
            digest.update(f"rag\x00{request.rag.collection}\x00{request.rag.top_k}".encode())
            digest.update("\x00".join(retrieved).encode())
        markers.append({"role": "system", "content": f"ragkv-context:{digest.hexdigest()[:32]}"})
    if request.tools.shapes_output:
        digest = hashlib.sha256(repr(request.tools).encode()).hexdigest()[:32]
        markers.append({"role": "system", "content": f"ragkv-tools:{digest}"})
    return [*markers, *request.messages]


def replay_pieces(text: str, words_per_piece: int = 4) -> Iterator[str]:
    """Split a cached answer into stream deltas of a few words; joined they equal `text`."""
    if words_per_piece < 1:
        raise ValueError("words_per_piece must be >= 1")
    pieces = _PIECES.findall(text)
    for start in range(0, len(pieces), words_per_piece):
        yield "".join(pieces[start : start + words_per_piece])
