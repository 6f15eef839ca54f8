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
    BlendRun,
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
    chunk_tokens_computed: int = 0  # chunk tokens prefilled because no tier held them
    fallbacks: int = 0
    variant_fallbacks: int = 0
    by_selector: Counter[str] = field(default_factory=Counter)


def chunk_keys(tenant: str, token_ids: list[int], context: tuple[int, ...]) -> list[ChunkKey]:
    """The keys a chunk's KV may be held under, in the order `fetch` tries them: computed
    after `context` (its variant), then alone (Cache-Craft's fallback; only with a context)."""
    variant = chunk_key(tenant, token_ids, context_variant(context))
    return [variant, chunk_key(tenant, token_ids)] if context else [variant]


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
        keys = chunk_keys(tenant, token_ids, context)
        for index, key in enumerate(keys):
            hit = self.store.get(key, len(token_ids))
            if hit is not None:
                if index:  # the variant is not held: the chunk computed alone
                    self.stats.variant_fallbacks += 1
                return hit.kv, hit.tier, 0 if index else len(context)
        return self._compute(keys[0], token_ids, context), "computed", len(context)

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
        self.stats.chunk_tokens_computed += len(token_ids)
        return chunk

    def held(self, token_ids: list[int], request: Request) -> bool:
        """Whether a tier holds the chunk's KV (its variant, or alone) for `request`: a fetch
        then costs a read, not a prefill (the cost model may still decide to recompute)."""
        keys = chunk_keys(request.tenant, token_ids, request.chunk_context)
        return any(self.store.contains(key) for key in keys)

    def prewarm(self, tenant: str, token_ids: list[int], context: tuple[int, ...] = ()) -> bool:
        """Compute and store a chunk's KV (after `context`) unless cached; True if computed."""
        if len(token_ids) < self.settings.min_chunk_tokens:
            return False
        key = chunk_key(tenant, token_ids, context_variant(context))
        if self.store.contains(key):
            return False
        self._compute(key, token_ids, context)
        return True

    def prefetch(self, request: Request) -> int:
        """Start reading the disk-held KV of the request's chunks into memory (worker thread;
        see `ChunkKVStore.prefetch`); reads queued."""
        wanted = []
        for span in request.chunk_spans:
            if span.length < self.settings.min_chunk_tokens:
                continue
            token_ids = request.prompt_ids[span.start : span.end]
            variant, *fallback = chunk_keys(request.tenant, token_ids, request.chunk_context)
            wanted.append((variant, span.length))
            if fallback and not self.store.contains(variant):  # what `fetch` falls back to
                wanted.append((fallback[0], span.length))
        return self.store.prefetch(wanted)

    def start(self, seq: Sequence, pool: KVPool) -> BlendJob:
        """The blended prefill of an admitted sequence (pages reserved, `num_computed` = exact
        prefix tokens), to be advanced step by step (see `BlendJob`)."""
        seq.blend_pending = False
        return BlendJob(self, seq, pool)

    def count(self, result: BlendResult, num_chunks: int) -> None:
        """Add a finished blend to the counters."""
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
            "chunk_tokens_computed": stats.chunk_tokens_computed,
            "fallbacks": stats.fallbacks,
            "variant_fallbacks": stats.variant_fallbacks,
            "requests_by_selector": dict(stats.by_selector),
            **self.store.stats(),
        }


class BlendJob:
    """One sequence's blended prefill in progress (engine thread). `advance` does a bounded
    share of it: first each chunk's KV (fetched, or computed when no tier holds it), then the
    model's layers; `finish` writes the prompt's KV into the sequence's pages.

    A job holds no pool state until `finish`: dropping it (abort, failure) leaves the
    sequence's pages as they were admitted."""

    def __init__(self, blender: ChunkBlender, seq: Sequence, pool: KVPool) -> None:
        self.blender, self.seq, self.pool = blender, seq, pool
        request = seq.request
        self.num_exact = seq.num_computed
        self.spans = [
            span
            for span in request.chunk_spans
            if span.end > self.num_exact and span.length >= blender.settings.min_chunk_tokens
        ]
        self.context = request.chunk_context
        prompt = request.prompt_ids
        self.shared = len(self.context) if tuple(prompt[: len(self.context)]) == self.context else 0
        # Chunks no tier holds are computed first: meanwhile the prefetch worker (started when
        # the request arrived) reads the disk-held ones into memory, so that reading overlaps
        # computing instead of following it.
        held = [blender.held(prompt[span.start : span.end], request) for span in self.spans]
        self.order = sorted(range(len(self.spans)), key=lambda index: held[index])
        self.chunk_kvs: dict[int, torch.Tensor] = {}  # span index -> its KV, fetched so far
        self.run: BlendRun | None = None

    @property
    def _fetching(self) -> bool:
        return self.run is None and len(self.chunk_kvs) < len(self.spans)

    @property
    def done(self) -> bool:
        """Every chunk placed and every layer run: `finish` is next."""
        return self.run is not None and self.run.done

    def advance(self, budget: int) -> int:
        """Work while `budget` token-layers last (a computed chunk costs its tokens times the
        layers, a fetched one nothing, a layer its active tokens), at least one unit; returns
        the token-layers spent."""
        spent = 0
        num_layers = self.blender.model.config.num_layers
        request = self.seq.request
        while self._fetching:
            index = self.order[len(self.chunk_kvs)]
            span = self.spans[index]
            token_ids = request.prompt_ids[span.start : span.end]
            cost = (len(self.context) + span.length) * num_layers
            if spent and spent + cost > budget and not self.blender.held(token_ids, request):
                break  # computing this chunk would overrun the step: next step
            kv, source, seen = self.blender.fetch(request.tenant, token_ids, self.context)
            if source == "computed":
                spent += cost
            self.chunk_kvs[index] = kv
            # Cache-Craft's prefix overlap: the prompt tokens this chunk's KV already saw.
            self.spans[index] = replace(span, seen=min(seen, self.shared))
        if self._fetching or (spent and spent >= budget):
            return spent
        if self.run is None:
            self.run = self._start_run()
        return spent + self.run.advance(max(budget - spent, 1))

    def _start_run(self) -> BlendRun:
        model, seq, pool = self.blender.model, self.seq, self.pool
        prompt = seq.request.prompt_ids
        exact = self.num_exact
        prefix_kv = pool.read_all(pool.slots(seq.pages, 0, exact)) if exact else None
        chunk_kvs = [self.chunk_kvs[index] for index in range(len(self.spans))]
        kv = place_chunks(model, len(prompt), chunk_kvs, self.spans, prefix_kv)
        self.chunk_kvs = {}  # placed into `kv`: the fetched copies can go
        request = seq.request
        selector = self.blender.selector_for(request.kv_reuse, request.recompute_ratio)
        return BlendRun(
            model, torch.tensor(prompt, device=kv.device), kv, self.spans, selector, exact
        )

    def finish(self) -> torch.Tensor:
        """Write the prompt's KV into the sequence's pages, mark it computed and record what
        was reused; the first-token logits `[vocab]`."""
        if self.run is None or not self.run.done:
            raise RuntimeError("the blend has work left")
        result = self.run.result()
        seq, pool, exact = self.seq, self.pool, self.num_exact
        num_prompt = len(seq.request.prompt_ids)
        pool.write_all(pool.slots(seq.pages, exact, num_prompt), result.kv[:, :, exact:])
        self.blender.count(result, len(self.spans))
        seq.num_computed = len(seq.token_ids)
        seq.num_cached_prompt = exact
        seq.chunk_tokens_reused = result.num_chunk_reused
        seq.tokens_recomputed = len(result.recomputed)
        seq.selector = result.selector
        if result.num_chunk_reused and self.spans:  # reused chunk KV: approximate from there
            first = min(span.start for span in self.spans)
            seq.approx_from = first if seq.approx_from is None else min(seq.approx_from, first)
        return result.logits
