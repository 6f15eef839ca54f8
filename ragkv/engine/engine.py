"""`LLMEngine`: add requests, `step()` the model, collect outputs. One thread runs `step`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ragkv.cache.kv.chunk_store import ChunkKVStore, open_chunk_store
from ragkv.cache.kv.radix import RadixCache
from ragkv.engine.blend.blender import ChunkBlender
from ragkv.engine.blending import BlendSteps
from ragkv.engine.cache_report import cache_report
from ragkv.engine.calibrate import calibrated_products, native_batches_for
from ragkv.engine.config import ModelConfig
from ragkv.engine.forward_batch import build_forward_batch
from ragkv.engine.grammar import GrammarEngine
from ragkv.engine.kv_pool import KVPool
from ragkv.engine.load import DrainRate
from ragkv.engine.model import LlamaModel
from ragkv.engine.output import OutputProcessor
from ragkv.engine.postprocess import Postprocessor
from ragkv.engine.runtime import Runtime, resolve_runtime
from ragkv.engine.sampling import make_generator
from ragkv.engine.scheduler import ScheduledBatch, Scheduler, prefill_while_decoding
from ragkv.engine.sequence import Request, RequestOutput, Sequence, spans_valid
from ragkv.engine.tokenizer import Tokenizer
from ragkv.engine.weights import fingerprint, load_weights
from ragkv.errors import InvalidRequest, Overloaded
from ragkv.settings import ChunkCacheSettings, EngineSettings, ModelSettings

log = logging.getLogger("ragkv.engine")


class LLMEngine:
    """Owns the model, KV pool, radix prefix cache and scheduler.

    `add_request` and `abort` may be called from any thread; `step` from one thread only.
    """

    def __init__(
        self,
        model: LlamaModel,
        tokenizer: Tokenizer,
        settings: EngineSettings,
        model_fingerprint: str,
        clock=time.monotonic,
        chunk_store: ChunkKVStore | None = None,
        chunk_settings: ChunkCacheSettings | None = None,
    ) -> None:
        self.model = model
        self.config: ModelConfig = model.config
        self.tokenizer = tokenizer
        self.settings = settings
        self.fingerprint = model_fingerprint
        decode = "native" if model.native_decode_off is None else "torch"
        self.runtime = Runtime(
            model.ops.name, model.device, model.dtype, decode, model.decode_dtype
        )
        self.grammar = GrammarEngine(tokenizer, self.config.vocab_size)
        self.pool = KVPool.of_size(
            self.config, settings.kv_cache_mb, settings.page_size, model.dtype, model.device
        )
        self.radix = RadixCache(settings.page_size, clock=clock)
        self.scheduler = Scheduler(
            settings, self.pool, self.radix, prefill_while_decoding(settings, model.device.type)
        )
        self.post = Postprocessor(
            OutputProcessor(tokenizer), self.grammar, self.scheduler, DrainRate(clock=clock)
        )
        self.stats = self.post.stats
        self.blender: ChunkBlender | None = None
        self.blends: BlendSteps | None = None
        if chunk_store is not None:
            self.blender = ChunkBlender(model, chunk_store, chunk_settings or ChunkCacheSettings())
            self.blends = BlendSteps(
                self.blender, self.scheduler, self.pool, settings.max_concurrent_blends
            )
        self._lock = threading.Lock()
        self._step_lock = threading.Lock()  # held by step(); admin reads and flushes wait on it
        self._incoming: list[Sequence] = []
        self._aborted: list[str] = []

    @classmethod
    def from_path(
        cls,
        path: Path,
        model_settings: ModelSettings,
        engine_settings: EngineSettings,
        chunk_settings: ChunkCacheSettings | None = None,
        data_dir: Path | None = None,
    ) -> LLMEngine:
        """Load weights and tokenizer from a GGUF file or HF folder and build the engine.

        With `chunk_settings` enabled the chunk KV cache is on (its disk tier under
        `data_dir/chunk_kv` when `data_dir` is given and the disk tier is enabled)."""
        ms = model_settings
        runtime = resolve_runtime(ms.device, ms.backend, ms.dtype)
        dtype, device = runtime.dtype, runtime.device
        if ms.num_threads:
            torch.set_num_threads(ms.num_threads)
        started = time.perf_counter()
        config, weights = load_weights(path)
        tokenizer = Tokenizer(path)
        gemm, decode_dtype, batch_dtype = calibrated_products(ms, config, dtype, device)
        model = LlamaModel(
            config,
            weights,
            dtype=dtype,
            device=device,
            decode_dtype=decode_dtype,
            backend=runtime.backend,
            gemm=gemm,
            batch_dtype=batch_dtype,
            native_decode=ms.native_decode == "auto",
            native_batches=native_batches_for(ms, config, dtype, device, gemm, batch_dtype),
        )
        if model.native_decode_off is not None and model_settings.native_decode == "auto":
            log.info("native decode off: %s", model.native_decode_off)
        del weights
        model_fingerprint = fingerprint(path, tokenizer.serialization())
        store = None
        if chunk_settings is not None and chunk_settings.enabled:
            store = open_chunk_store(chunk_settings, model_fingerprint, model.device, data_dir)
        engine = cls(
            model,
            tokenizer,
            engine_settings,
            model_fingerprint,
            chunk_store=store,
            chunk_settings=chunk_settings,
        )
        log.info(
            "loaded %s (%d layers; %s backend, %s, %s) in %.1f s; KV pool %d pages of %d tokens",
            path.name,
            config.num_layers,
            runtime.backend,
            runtime.device,
            model_settings.dtype,
            time.perf_counter() - started,
            engine.pool.num_pages,
            engine.pool.page_size,
        )
        return engine

    # -- requests -------------------------------------------------------------------------

    def namespace(self, tenant: str) -> str:
        """Prefix-cache namespace: tenants never share KV."""
        return f"{tenant}/{self.fingerprint}"

    def validate(self, request: Request) -> None:
        """Raise `InvalidRequest` (400, with the numbers) if the request cannot fit."""
        num_prompt = len(request.prompt_ids)
        limit = self.config.context_length
        if num_prompt == 0:
            raise InvalidRequest("the prompt is empty", param="messages")
        if num_prompt + request.params.max_tokens > limit:
            raise InvalidRequest(
                f"this model's context is {limit} tokens; the prompt has {num_prompt} and "
                f"max_tokens asks for {request.params.max_tokens} more "
                f"({num_prompt + request.params.max_tokens} > {limit}); shorten the prompt "
                "or lower max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        pages = self.pool.pages_for(num_prompt + request.params.max_tokens)
        if pages > self.pool.num_pages:
            raise InvalidRequest(
                f"the request needs {pages} KV pages but the pool has {self.pool.num_pages}; "
                "raise engine.kv_cache_mb or lower max_tokens",
                param="max_tokens",
                code="context_length_exceeded",
            )
        bad = [t for t in request.prompt_ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary", param="prompt")
        if not spans_valid(request.chunk_spans, num_prompt):
            raise InvalidRequest("chunk spans must be ordered, disjoint and before the question")

    def add_request(self, request: Request) -> None:
        """Queue a request. Raises `InvalidRequest` (also for an invalid constraint) or
        `Overloaded` (queue full)."""
        self.validate(request)
        matcher = self.grammar.matcher(request.constraint)
        seq = Sequence(
            request=request,
            namespace=self.namespace(request.tenant),
            token_ids=list(request.prompt_ids),
            generator=make_generator(request.params.seed),
            blend_pending=self.blender is not None and self.blender.accepts(request),
            matcher=matcher,
        )
        with self._lock:
            queued = len(self.scheduler.waiting) + len(self._incoming)
            if queued >= self.settings.max_waiting:
                raise Overloaded(
                    f"the engine queue is full ({self.settings.max_waiting} waiting); retry later",
                    retry_after_s=self.post.drain.retry_after_s(
                        queued, self.settings.retry_after_s
                    ),
                )
            self._incoming.append(seq)
        if seq.blend_pending:  # chunk KV read from disk while the request waits its turn
            self.blender.prefetch(request)

    def abort(self, request_id: str) -> None:
        """Cancel a request (client gone); its pages are freed at the next step."""
        with self._lock:
            self._aborted.append(request_id)

    def has_work(self) -> bool:
        """Anything queued, running, or waiting to be added/aborted."""
        with self._lock:
            pending = bool(self._incoming or self._aborted)
        return pending or self.scheduler.has_work()

    # -- the step -------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedule, run the model once, advance the blends in flight with the token budget
        the batch left (see `blending.py`), sample, and report what each request produced."""
        with self._step_lock:
            self._take_commands()
            if self.blends is not None:
                self.blends.admit()
            batch = self.scheduler.schedule()
            outputs = self._run_batch(batch) if batch else []
            if self.blends is not None and self.blends.jobs:
                for seq, logits in self.blends.advance(self.scheduler.blend_budget):
                    outputs.append(self.post.first_token(seq, logits))
            return outputs

    def _run_batch(self, batch: ScheduledBatch) -> list[RequestOutput]:
        """Forward and sample `batch`. If the shared forward raises, its sequences run again
        one by one, so that one poisoned input fails its own request only."""
        self.stats.steps += 1
        self.stats.step_tokens += sum(num_tokens for _, num_tokens in batch)
        try:
            for seq, _ in batch:
                self.post.hook(seq, "forward")
            logits = self.model.forward(build_forward_batch(batch, self.pool), self.pool)
        except Exception as exc:
            if len(batch) == 1:
                return [self.post.fail(batch[0][0], exc)]
            log.warning("a step of %d sequences failed (%r); retrying one by one", len(batch), exc)
            return [output for item in batch for output in self._run_batch([item])]
        return self.post.batch(batch, logits)

    # -- admin ----------------------------------------------------------------------------

    def load_info(self) -> dict[str, float]:
        """Queue, batch, blends, pool and failure figures for `/metrics`, read without waiting
        for the step in progress (so a scrape never stalls; figures may be one step old)."""
        stats, blends = self.stats, self.blends
        with self._lock:
            incoming = len(self._incoming)
        return {
            "waiting": len(self.scheduler.waiting) + incoming,
            "running": len(self.scheduler.running),
            "blends_in_flight": len(blends.jobs) if blends is not None else 0,
            "blend_steps": blends.steps if blends is not None else 0,
            "steps": stats.steps,
            "step_tokens": stats.step_tokens,
            "failed_requests": stats.failed_requests,
            "pool_pages": self.pool.num_pages,
            "free_pages": self.pool.num_free,
            "drain_per_s": self.post.drain.per_s() or 0.0,
        }

    def prefix_stats(self) -> dict[str, object]:
        """Prefix-level statistics: reuse since start and the pool and tree as they are now."""
        with self._step_lock:
            size = self.radix.size_info()
            stats = self.stats
            return {
                "requests": stats.requests,
                "prompt_tokens": stats.prompt_tokens,
                "cached_tokens": stats.cached_tokens,
                "token_hit_rate": stats.cached_tokens / stats.prompt_tokens
                if stats.prompt_tokens
                else 0.0,
                "generated_tokens": stats.generated_tokens,
                "preemptions": self.scheduler.num_preemptions,
                "pool_pages": self.pool.num_pages,
                "free_pages": self.pool.num_free,
                "page_size": self.pool.page_size,
                "bytes_per_page": self.pool.bytes_per_page,
                "cached_pages": size.total_pages,
                "evictable_pages": size.evictable_pages,
                "locked_pages": size.locked_pages,
                "pinned_pages": size.pinned_pages,
                "approx_pages": size.approx_pages,
                "cached_bytes": size.total_pages * self.pool.bytes_per_page,
                "running": len(self.scheduler.running),
                "waiting": len(self.scheduler.waiting),
                "tool_pins": self.scheduler.tool_pins.stats(),
            }

    def cache_report(self, max_pages: int, max_chunks: int) -> dict[str, object]:
        """What this engine holds, for a cache-affinity router (`engine/cache_report.py`)."""
        store = self.blender.store if self.blender is not None else None
        with self._step_lock:
            report = cache_report(self.radix, self.fingerprint, store, max_pages, max_chunks)
        return {**report, "load": self.load_info()}

    def pin_tool_turn(
        self, tenant: str, token_ids: list[int], ttl_s: float, due_s: float | None = None
    ) -> int:
        """Pin a conversation waiting on its tool calls' results (see `ToolPins.pin`); tokens
        pinned."""
        with self._step_lock:
            return self.scheduler.tool_pins.pin(self.namespace(tenant), token_ids, ttl_s, due_s)

    def flush_prefix(self, tenant: str | None = None) -> int:
        """Drop the prefix cache of one tenant (or all); returns pages released.

        Pages still used by running requests stay until those finish.
        """
        with self._step_lock:
            namespace = None if tenant is None else self.namespace(tenant)
            if namespace is not None and namespace not in self.radix.namespaces():
                return 0
            freed = self.radix.flush(namespace)
            self.pool.decref(freed)
            self.scheduler.session_pins.clear()
            self.scheduler.tool_pins.clear()
            return len(freed)

    def chunk_stats(self) -> dict[str, object] | None:
        """Chunk-level statistics (None when the chunk cache is off)."""
        if self.blender is None:
            return None
        with self._step_lock:
            return self.blender.snapshot()

    def flush_chunks(self, tenant: str | None = None) -> int:
        """Drop cached chunk KV of one tenant (or all) from every tier; returns entries."""
        if self.blender is None:
            return 0
        with self._step_lock:
            return self.blender.store.flush(tenant)

    def close(self) -> None:
        """Close the chunk KV store's disk tier (everything on it is already written)."""
        if self.blender is not None:
            with self._step_lock:
                self.blender.store.close()

    def prewarm(self, tenant: str, chunks: list[list[int]], context: tuple[int, ...] = ()) -> int:
        """Compute and store the KV of chunks not cached yet (after `context`, the variant
        requests name in `chunk_context`); returns how many were computed.

        Takes the step lock one chunk at a time, so serving goes on in between."""
        if self.blender is None:
            return 0
        computed = 0
        for token_ids in chunks:
            with self._step_lock:
                computed += self.blender.prewarm(tenant, token_ids, context)
        return computed

    def _take_commands(self) -> None:
        with self._lock:
            incoming, self._incoming = self._incoming, []
            aborted, self._aborted = self._aborted, []
        for seq in incoming:
            self.scheduler.add(seq)
        for request_id in aborted:
            seq = self.scheduler.abort(request_id)
            if seq is not None:
                if self.blends is not None:
                    self.blends.drop(seq)
                seq.matcher = None
                log.info("aborted request %s", request_id)

    # -- synchronous helpers (CLI, tests, benchmarks) -------------------------------------

    def generate(self, requests: list[Request]) -> dict[str, list[RequestOutput]]:
        """Run `requests` to completion on this thread; all outputs per request id."""
        for request in requests:
            self.add_request(request)
        results: dict[str, list[RequestOutput]] = {r.request_id: [] for r in requests}
        while self.has_work():
            for output in self.step():
                results[output.request_id].append(output)
        return results

    def stream_sync(self, request: Request) -> Iterator[RequestOutput]:
        """Run one request on this thread, yielding each output as it is produced."""
        self.add_request(request)
        while self.has_work():
            for output in self.step():
                if output.request_id == request.request_id:
                    yield output
