"""Single-flight: concurrent identical cache misses run the model once and share the answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    """Coalesce concurrent calls with the same key onto one running call (one event loop).

    The first caller for a key runs `fn`; callers that arrive while it runs await the same
    result (or exception). Once it finishes the key is free again, so a later call runs anew
    (by then the answer is usually in the cache).
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[Any]] = {}

    def in_flight(self, key: Hashable) -> bool:
        """True while a call for `key` is running."""
        return key in self._running

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run `fn` once per key at a time; returns (result, True if this caller ran it)."""
        running = self._running.get(key)
        if running is not None:
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
            self._running.pop(key, None)
