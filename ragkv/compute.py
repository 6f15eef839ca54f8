"""The one thread that runs torch in a serving process.

The CPU torch wheel parallelises through libgomp, which keeps a thread team for every thread
that ever ran a parallel region. Once the teams together hold more threads than there are
CPUs, libgomp stops spinning between regions and parks its workers on a futex, and a decode
step, hundreds of small parallel regions, gets slow. Measured on a 2-core AMD EPYC: one
decode stream ran at 24.6 tok/s, and at 15.6 tok/s while a second, idle thread that had once
multiplied two matrices was alive. Serving used to step the engine in the default executor
(several threads) and embed queries in AnyIO's pool, which is why an HTTP stream decoded ~30%
slower than the engine on its own. So every torch computation of a serving process (model
load, engine steps, chunk prewarm, embeddings) runs on this one thread, in the order it was
submitted: an embedding waits at most for the engine step in progress.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ComputeThread:
    """A single worker thread; `call` blocks the calling thread, `run` is awaitable. A call
    made on the compute thread itself runs inline (no self-deadlock)."""

    def __init__(self, name: str = "ragkv-compute") -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._thread_ident: int | None = None
        self._queued = 0  # calls submitted and not started yet
        self._lock = threading.Lock()
        self._executor.submit(self._remember_thread).result()

    @property
    def others_waiting(self) -> bool:
        """Whether calls are queued behind the one running (a long call should yield)."""
        return self._queued > 0

    def _submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            self._queued += 1

        def started() -> T:
            with self._lock:
                self._queued -= 1
            return fn(*args, **kwargs)

        return self._executor.submit(started)

    def _remember_thread(self) -> None:
        self._thread_ident = threading.get_ident()

    @property
    def on_compute_thread(self) -> bool:
        """Whether the caller is the compute thread."""
        return threading.get_ident() == self._thread_ident

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the compute thread and return its result (or raise
        its exception) in the calling thread."""
        if self.on_compute_thread:
            return fn(*args, **kwargs)
        return self._submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await `fn(*args, **kwargs)` run on the compute thread; the event loop stays free."""
        return await asyncio.wrap_future(self._submit(fn, *args, **kwargs))

    def close(self) -> None:
        """Finish what was submitted, then end the thread (its OpenMP team goes with it)."""
        self._executor.shutdown(wait=True)
