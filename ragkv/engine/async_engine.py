"""Async front of `LLMEngine`: one loop task has the compute thread step the engine, steps
back to back, and fans outputs out to per-request queues, so the event loop stays free while
the model runs.

Everything above the engine talks to this class only: generation (`stream`), what the
pipeline needs to know (`tokenizer`, `context_length`, `load`) and the admin calls (stats,
flush, prewarm), which run in a worker thread and wait for the current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from ragkv.compute import ComputeThread
from ragkv.engine.engine import LLMEngine
from ragkv.engine.sequence import Request, RequestOutput
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import ModelError, Overloaded

log = logging.getLogger("ragkv.engine")

DISCONNECT_POLL_S = 0.25
BURST_S = 0.5  # at most this long on the compute thread before the loop is asked again


class AsyncEngine:
    """Start with `start()` inside a running loop; `stream(request)` yields its outputs.

    Steps and prewarm run on `compute` (the process's torch thread, see `ragkv/compute.py`);
    without one the engine gets a thread of its own, ended by `close()`."""

    def __init__(self, engine: LLMEngine, compute: ComputeThread | None = None) -> None:
        self._engine = engine
        self._owns_compute = compute is None
        self._compute = compute if compute is not None else ComputeThread("ragkv-engine")
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        """Create the engine loop task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="ragkv-engine-loop")

    @property
    def alive(self) -> bool:
        """False once the engine loop task has ended (it only ends on stop or a crash)."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Cancel the loop task and fail every open stream."""
        self._stopping = True  # a burst on the compute thread ends after its current step
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in self._queues.values():
            queue.put_nowait(Overloaded("the server is shutting down", retry_after_s=5))

    @property
    def tokenizer(self) -> Tokenizer:
        """The serving model's tokenizer (chunk token ids must come from it)."""
        return self._engine.tokenizer

    @property
    def context_length(self) -> int:
        """The model's context window in tokens."""
        return self._engine.config.context_length

    @property
    def chunk_cache_enabled(self) -> bool:
        """Whether the chunk KV cache (blending, prewarm) is on."""
        return self._engine.blender is not None

    async def prefix_stats(self) -> dict[str, object]:
        """Prefix-level statistics (see `LLMEngine.prefix_stats`)."""
        return await asyncio.to_thread(self._engine.prefix_stats)

    async def chunk_stats(self) -> dict[str, object] | None:
        """Chunk-level statistics; None when the chunk cache is off."""
        return await asyncio.to_thread(self._engine.chunk_stats)

    async def pin_tool_turn(
        self, tenant: str, token_ids: list[int], ttl_s: float, due_s: float | None = None
    ) -> int:
        """Pin a conversation waiting on tool results (see `engine/tool_pins.py`); tokens
        pinned."""
        pin = self._engine.pin_tool_turn
        return await asyncio.to_thread(pin, tenant, token_ids, ttl_s, due_s)

    async def flush_prefix(self, tenant: str | None = None) -> int:
        """Drop the prefix cache of one tenant (or all); pages released."""
        return await asyncio.to_thread(self._engine.flush_prefix, tenant)

    async def flush_chunks(self, tenant: str | None = None) -> int:
        """Drop cached chunk KV of one tenant (or all); entries dropped."""
        return await asyncio.to_thread(self._engine.flush_chunks, tenant)

    async def cache_report(self, max_pages: int, max_chunks: int) -> dict[str, object]:
        """What this engine holds, for a cache-affinity router (`engine/cache_report.py`)."""
        return await asyncio.to_thread(self._engine.cache_report, max_pages, max_chunks)

    def load_info(self) -> dict[str, float]:
        """Queue, batch, blend and pool figures (see `LLMEngine.load_info`); never waits."""
        return self._engine.load_info()

    def figures(self) -> dict[str, float | None]:
        """`load_info` plus the cumulative request, token and chunk counters (never waits;
        chunk counters None when the chunk cache is off)."""
        stats, blender = self._engine.stats, self._engine.blender
        chunks = blender.stats if blender is not None else None
        return {
            **self._engine.load_info(),
            "engine_requests": stats.requests,
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "generated_tokens": stats.generated_tokens,
            "chunk_requests": chunks.requests if chunks is not None else None,
            "chunk_tokens": chunks.chunk_tokens if chunks is not None else None,
            "chunk_tokens_reused": chunks.chunk_tokens_reused if chunks is not None else None,
        }

    def prewarm(self, tenant: str, chunks: list[list[int]], context: tuple[int, ...]) -> int:
        """Blocking: compute the KV of `chunks` not cached yet (call from a worker thread;
        serving goes on between chunks); how many were computed."""
        return sum(
            self._compute.call(self._engine.prewarm, tenant, [chunk], context) for chunk in chunks
        )

    async def close(self) -> None:
        """Stop the loop, then close the engine's disk tier (and its own compute thread)."""
        await self.stop()
        await asyncio.to_thread(self._engine.close)
        if self._owns_compute:
            await asyncio.to_thread(self._compute.close)

    @property
    def load(self) -> float:
        """0..1: how busy the engine is (running sequences over their maximum)."""
        scheduler = self._engine.scheduler
        busy = len(scheduler.running) + len(scheduler.waiting)
        return min(1.0, busy / self._engine.settings.max_num_seqs)

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self._engine.has_work():
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                await self._compute.run(self._burst, asyncio.get_running_loop())
            except Exception as exc:  # keep serving: fail the open requests, not the loop
                log.exception("engine step failed")
                self._fail_all(ModelError(f"the model failed: {exc}"))

    def _burst(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the compute thread: engine steps back to back, each step's outputs handed to
        the event loop as it ends, so the next step never waits for the loop to schedule it
        (that wait cost a fast decode step ~15% over HTTP). Returns when the engine is idle,
        when another computation (an embedding, a prewarm) is queued, or after `BURST_S`."""
        deadline = time.monotonic() + BURST_S
        while True:
            outputs = self._engine.step()
            loop.call_soon_threadsafe(self._deliver, outputs)
            if not self._engine.has_work() or self._compute.others_waiting:
                return
            if self._stopping or time.monotonic() > deadline:
                return

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            queue = self._queues.get(output.request_id)
            if queue is not None:  # a request that failed alone fails alone
                queue.put_nowait(ModelError(output.error) if output.error else output)

    def _fail_all(self, error: BaseException) -> None:
        for request_id, queue in list(self._queues.items()):
            self._engine.abort(request_id)
            queue.put_nowait(error)

    async def stream(
        self,
        request: Request,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs until it finishes. Raises `Overloaded` at once when the
        queue is full. If the consumer stops early, or `is_disconnected()` turns true, the
        request is aborted and its pages freed."""
        if self._wakeup is None:
            raise ModelError("the engine loop is not running")
        queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._queues[request.request_id] = queue
        finished = False
        try:
            if request.constraint is not None:  # compiling a grammar may take a while
                await asyncio.to_thread(self._engine.add_request, request)
            else:
                self._engine.add_request(request)
            self._wakeup.set()
            while not finished:
                try:
                    item = await asyncio.wait_for(queue.get(), DISCONNECT_POLL_S)
                except TimeoutError:
                    if is_disconnected is not None and await is_disconnected():
                        log.info("client of %s disconnected", request.request_id)
                        return
                    continue
                if isinstance(item, BaseException):
                    finished = True  # the engine already ended it (failed alone or all)
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request.request_id, None)
            if not finished:
                self._engine.abort(request.request_id)
                self._wakeup.set()
