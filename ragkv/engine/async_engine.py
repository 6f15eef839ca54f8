"""Async front of `LLMEngine`: one loop task steps the engine in a worker thread and fans
outputs out to per-request queues, so the event loop stays free while the model runs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from ragkv.engine.engine import LLMEngine
from ragkv.engine.sequence import Request, RequestOutput
from ragkv.errors import ModelError, Overloaded

log = logging.getLogger("ragkv.engine")

DISCONNECT_POLL_S = 0.25


class AsyncEngine:
    """Start with `start()` inside a running loop; `stream(request)` yields its outputs."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._queues: dict[str, asyncio.Queue[RequestOutput | BaseException]] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Create the engine loop task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="ragkv-engine-loop")

    async def stop(self) -> None:
        """Cancel the loop task and fail every open stream."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for queue in self._queues.values():
            queue.put_nowait(Overloaded("the server is shutting down", retry_after_s=5))

    @property
    def load(self) -> float:
        """0..1: how busy the engine is (running sequences over their maximum)."""
        scheduler = self.engine.scheduler
        busy = len(scheduler.running) + len(scheduler.waiting)
        return min(1.0, busy / self.engine.settings.max_num_seqs)

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            if not self.engine.has_work():
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                outputs = await asyncio.to_thread(self.engine.step)
            except Exception as exc:  # keep serving: fail the open requests, not the loop
                log.exception("engine step failed")
                self._fail_all(ModelError(f"the model failed: {exc}"))
                continue
            for output in outputs:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)

    def _fail_all(self, error: BaseException) -> None:
        for request_id, queue in list(self._queues.items()):
            self.engine.abort(request_id)
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
            self.engine.add_request(request)
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
                    raise item
                finished = item.finished
                yield item
        finally:
            self._queues.pop(request.request_id, None)
            if not finished:
                self.engine.abort(request.request_id)
                self._wakeup.set()
