"""Single-flight: concurrent identical cache misses run the model once and share the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    """The leader's handle on one running call; `resolve` ends it (idempotent)."""

    def __init__(self, owner: SingleFlight, key: Hashable, future: asyncio.Future[Any]) -> None:
        self._owner = owner
        self._key = key
        self.future = future

    def resolve(self, result: T | None) -> None:
        """Hand `result` to every caller waiting on this key (None: nothing to share, they
        run on their own). Later calls are ignored."""
        if self.future.done():
            return
        self.future.set_result(result)
        self._owner._finished(self._key, self.future, keep=result is not None)


class SingleFlight:
    """Coalesce concurrent calls with the same key onto one running call (one event loop).

    Two ways in. `run(key, fn)`: the first caller runs `fn`, callers that arrive meanwhile
    await its result (or exception). `lead(key)` / `wait(key)`: for a leader whose work is
    consumed piece by piece (a streamed answer); followers `wait` for what it `resolve`s.
    A shared result stays joinable for `grace_s` after it is resolved, so a caller whose cache
    lookup ran just before the leader stored its answer still joins instead of running again.
    """

    def __init__(self, grace_s: float = 5.0) -> None:
        self.grace_s = grace_s
        self._running: dict[Hashable, asyncio.Future[Any]] = {}

    def in_flight(self, key: Hashable) -> bool:
        """True while a call for `key` is running."""
        future = self._running.get(key)
        return future is not None and not future.done()

    def lead(self, key: Hashable) -> Flight[Any]:
        """Register the caller as the one computing `key`; resolve the returned flight when
        done (always: in a `finally`)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        return Flight(self, key, future)

    async def wait(self, key: Hashable, timeout_s: float) -> Any | None:
        """The result of the flight for `key` (running, or resolved within `grace_s`), or
        None when there is none, it shared nothing, or it took longer than `timeout_s`."""
        future = self._running.get(key)
        if future is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return None

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run `fn` once per key at a time; returns (result, True if this caller ran it)."""
        running = self._running.get(key)
        if running is not None and not running.done():
            return await asyncio.shield(running), False
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            result = await fn()
        except BaseException as exc:
            future.set_exception(exc)
            # Mark retrieved so an exception nobody else awaited is not logged as lost.
            future.exception()
            raise
        else:
            future.set_result(result)
            return result, True
        finally:
            self._finished(key, future, keep=False)

    def _finished(self, key: Hashable, future: asyncio.Future[Any], keep: bool) -> None:
        if self._running.get(key) is not future:
            return
        if not keep or self.grace_s <= 0:
            del self._running[key]
            return
        asyncio.get_running_loop().call_later(self.grace_s, self._expire, key, future)

    def _expire(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        if self._running.get(key) is future:
            del self._running[key]
