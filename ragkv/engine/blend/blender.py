"""The engine's chunk level: fetch or compute each chunk's KV, blend, write into the pool.

`ChunkBlender.prefill` turns one admitted sequence (pages reserved, exact prefix attached)
into first-token logits with its whole prompt's KV in the paged pool, ready to decode and to
be stored back into the radix tree. It knows nothing of the scheduler: when a blend fails it
says so, and the engine decides what happens to the sequence.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field, replace

import torch

from ragkv.cache.kv.chunk_store import ChunkKey, ChunkKVStore, chunk_key, context_variant
from ragkv.engine.blend.prefill import (
    BlendResult,
    blended_prefill,
    place_chunks,
    rerotate,
)
from ragkv.engine.blend.selectors import NaiveSelector, Selector, make_selector
from ragkv.engine.kv_pool import KVPool
from ragkv.engine.model import LlamaModel
from ragkv.engine.sequence import KVReuse, Request, Sequence
from ragkv.settings import ChunkCacheSettings

log = logging.getLogger("ragkv.engine")


@dataclass
class ChunkStats:
    """Counters of the chunk level since start."""

    requests: int = 0
    chunks: int = 0
    chunk_tokens: int = 0
    chunk_tokens_reused: int = 0
    tokens_recomputed: int = 0
    chunks_computed: int = 0
    fallbacks: int = 0
    variant_fallbacks: int = 0
    by_selector: Counter[str] = field(default_factory=Counter)


class ChunkBlender:
    """Owns the chunk KV store and runs blended prefills for the engine (engine thread)."""

    def __init__(
        self, model: LlamaModel, store: ChunkKVStore, settings: ChunkCacheSettings
    ) -> None:
        self.model = model
        self.store = store
        self.settings = settings
        self.stats = ChunkStats()

    def selector_for(self, kv_reuse: KVReuse, ratio: float | None) -> Selector:
        """The selector of a request's `kv_reuse` (`auto` = the configured default)."""
        if kv_reuse is KVReuse.AUTO:
            kv_reuse = KVReuse(self.settings.default_selector)
        return make_selector(
            kv_reuse,
            ratio,
            default_ratio=self.settings.recompute_ratio,
            check_layer=min(self.settings.check_layer, self.model.config.num_layers - 1),
            lego_tokens=self.settings.lego_tokens,
            sink_tokens=self.settings.sink_tokens,
            adaptive=self.settings.adaptive_ratio and ratio is None,
            refine_layers=self.settings.refine_layers,
            refine_start=self.settings.refine_start,
        )

    def accepts(self, request: Request) -> bool:
        """A chunk-reuse mode and at least one chunk long enough to cache."""
        shortest = self.settings.min_chunk_tokens
        return request.wants_blend and any(s.length >= shortest for s in request.chunk_spans)

    def chunk_kv(
        self, tenant: str, token_ids: list[int], context: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, str]:
        """The chunk's KV `[layers, 2, L, KH, D]` as if at positions 0.., computed after the
        `context` tokens (the cache variant; none = alone), from the store or freshly computed
        (and stored); with the tier it came from or 'computed'.

        A variant missing from the store falls back to the chunk computed alone when that is
        stored (Cache-Craft: the closest variant held beats recomputing the chunk)."""
        kv, source, _ = self.fetch(tenant, token_ids, context)
        return kv, source

    def fetch(
        self, tenant: str, token_ids: list[int], context: tuple[int, ...] = ()
    ) -> tuple[torch.Tensor, str, int]:
        """`chunk_kv`, plus how many `context` tokens the KV returned was computed after
        (`len(context)`, or 0 when it fell back to the chunk alone)."""
        key = chunk_key(tenant, token_ids, context_variant(context))
        hit = self.store.get(key, len(token_ids))
        if hit is not None:
            return hit.kv, hit.tier, len(context)
        if context:
            hit = self.store.get(chunk_key(tenant, token_ids), len(token_ids))
            if hit is not None:
                self.stats.variant_fallbacks += 1
                return hit.kv, hit.tier, 0
        return self._compute(key, token_ids, context), "computed", len(context)

    def _compute(self, key: ChunkKey, token_ids: list[int], context: tuple[int, ...]):
        """Prefill `context + token_ids`, store the chunk's part under `key`, return it."""
        started = time.perf_counter()
        ids = [*context, *token_ids]
        kv = place_chunks(self.model, len(ids), [], [])
        result = blended_prefill(self.model, torch.tensor(ids), kv, [], NaiveSelector())
        chunk = result.kv[:, :, len(context) :]
        if context:  # keys as if computed at 0.., like every stored chunk
            chunk = chunk.clone()
            chunk[:, 0] = rerotate(chunk[:, 0], -len(context), self.model)
        elapsed = time.perf_counter() - started
        self.store.cost.observe_prefill(len(ids), elapsed)
        self.store.put(key, chunk, elapsed)
        self.stats.chunks_computed += 1
        return chunk

    def prewarm(self, tenant: str, token_ids: list[int], context: tuple[int, ...] = ()) -> bool:
        """Compute and store a chunk's KV (after `context`) unless cached; True if computed."""
        if len(token_ids) < self.settings.min_chunk_tokens:
            return False
        key = chunk_key(tenant, token_ids, context_variant(context))
        if self.store.contains(key):
            return False
        self._compute(key, token_ids, context)
        return True

    def prefill(self, seq: Sequence, pool: KVPool) -> torch.Tensor | None:
        """Blend an admitted sequence and mark its prompt computed; its first-token logits.

        None when blending failed (counted in `fallbacks` and logged, never silent): the
        sequence is as admitted, and the caller gives it a plain prefill instead."""
        seq.blend_pending = False
        num_exact = seq.num_computed
        try:
            result = self.run(seq, pool)
        except Exception:
            log.exception("blended prefill of %s failed; recomputing it in full", seq.request_id)
            self.stats.fallbacks += 1
            return None
        seq.num_computed = len(seq.token_ids)
        seq.num_cached_prompt = num_exact
        seq.chunk_tokens_reused = result.num_chunk_reused
        seq.tokens_recomputed = len(result.recomputed)
        seq.selector = result.selector
        return result.logits

    def run(self, seq: Sequence, pool: KVPool) -> BlendResult:
        """Blended prefill of `seq` (admitted: pages reserved, `num_computed` = exact prefix
        tokens); writes the prompt's KV into its pages and returns the first-token logits."""
        request = seq.request
        prompt = request.prompt_ids
        num_exact = seq.num_computed
        spans = [
            span
            for span in request.chunk_spans
            if span.end > num_exact and span.length >= self.settings.min_chunk_tokens
        ]
        context = request.chunk_context
        shared = len(context) if tuple(prompt[: len(context)]) == context else 0
        chunk_kvs = []
        for index, span in enumerate(spans):
            kv, _, seen = self.fetch(request.tenant, prompt[span.start : span.end], context)
            chunk_kvs.append(kv)
            # Cache-Craft's prefix overlap: the prompt tokens this chunk's KV already saw.
            spans[index] = replace(span, seen=min(seen, shared))
        prefix_kv = pool.read_all(pool.slots(seq.pages, 0, num_exact)) if num_exact else None
        kv = place_chunks(self.model, len(prompt), chunk_kvs, spans, prefix_kv)
        selector = self.selector_for(request.kv_reuse, request.recompute_ratio)
        result = blended_prefill(
            self.model, torch.tensor(prompt, device=kv.device), kv, spans, selector, num_exact
        )
        pool.write_all(pool.slots(seq.pages, num_exact, len(prompt)), result.kv[:, :, num_exact:])
        self._count(result, len(spans))
        return result

    def _count(self, result: BlendResult, num_chunks: int) -> None:
        stats = self.stats
        stats.requests += 1
        stats.chunks += num_chunks
        stats.chunk_tokens += result.num_chunk_tokens
        stats.chunk_tokens_reused += result.num_chunk_reused
        stats.tokens_recomputed += len(result.recomputed)
        stats.by_selector[result.selector] += 1

    def snapshot(self) -> dict[str, object]:
        """Chunk-level statistics: reuse counters plus the store's tiers and decisions."""
        stats = self.stats
        return {
            "requests": stats.requests,
            "chunks": stats.chunks,
            "chunk_tokens": stats.chunk_tokens,
            "chunk_tokens_reused": stats.chunk_tokens_reused,
            "tokens_recomputed": stats.tokens_recomputed,
            "chunks_computed": stats.chunks_computed,
            "fallbacks": stats.fallbacks,
            "variant_fallbacks": stats.variant_fallbacks,
            "requests_by_selector": dict(stats.by_selector),
            **self.store.stats(),
        }
