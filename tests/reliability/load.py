"""A bounded write load over HTTP: one operation after another in a thread, each recorded
with whether the server acknowledged it, until the server dies under it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import httpx

from tests.reliability.serve import TENANT_KEY

MAX_OPS_PER_ROUND = 10_000
SYLLABLES = [consonant + vowel for consonant in "bdfgklmnprstvz" for vowel in "aeiou"]


def random_text(rng: Any, num_words: int) -> str:
    """Made-up words (2-3 syllables each) drawn from `rng`: text no other text is close to."""
    words = (
        "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(num_words)
    )
    return " ".join(words).capitalize() + "."


class Api:
    """An HTTP client of one server start, as the campaign's tenant."""

    def __init__(self, url: str) -> None:
        self.client = httpx.Client(
            base_url=url, headers={"authorization": f"Bearer {TENANT_KEY}"}, timeout=300
        )

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One request; transport errors propagate (the server is gone)."""
        return self.client.request(method, path, json=body)

    def json(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request that must answer 2xx; its JSON body."""
        response = self.call(method, path, body)
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()


@dataclass
class Op:
    """One write request of a load. `status` None after `started`: no answer came (in flight
    when the server died), so it may or may not have been applied."""

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    critical: bool = False  # the write a kill point is drawn in
    started: float = 0.0
    finished: float = 0.0
    status: int | None = None
    answer: Any = None
    killed_after_s: float = -1.0  # set on the write a kill point was drawn in

    @property
    def acked(self) -> bool:
        """The server answered 2xx: the write must survive any crash after this."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def in_flight(self) -> bool:
        """Started and never answered."""
        return self.status is None

    @property
    def duration_s(self) -> float:
        """Seconds from send to answer (0 while in flight)."""
        return self.finished - self.started if self.status is not None else 0.0


class LoadRun:
    """Sends `ops` one after another in a daemon thread until one gets no answer (the server
    died) or `MAX_OPS_PER_ROUND` were sent; `ops` lists every operation started."""

    def __init__(self, ops: Iterator[Op], api: Api) -> None:
        self.ops: list[Op] = []
        self.error: BaseException | None = None
        self._source = islice(ops, MAX_OPS_PER_ROUND)
        self._api = api
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="crash-load", daemon=True)

    def start(self) -> None:
        """Start sending."""
        self._thread.start()

    def join(self, timeout_s: float = 120.0) -> None:
        """Wait for the thread (it ends at the first request the dead server leaves unanswered)."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError("the load thread did not stop after the kill")

    def wait_critical(self, count: int, timeout_s: float = 600.0) -> Op | None:
        """The `count`-th critical op once it has started; None if the load ended first."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                critical = [op for op in self.ops if op.critical]
                if len(critical) >= count:
                    return critical[count - 1]
                left = deadline - time.monotonic()
                if not self._thread.is_alive() or left <= 0:
                    return None
                self._changed.wait(min(left, 1.0))

    def _run(self) -> None:
        try:
            for op in self._source:
                with self._changed:
                    op.started = time.perf_counter()
                    self.ops.append(op)
                    self._changed.notify_all()
                try:
                    response = self._api.call(op.method, op.path, op.body)
                except httpx.TransportError:
                    return  # the server died during `op`
                op.finished = time.perf_counter()
                op.answer = response.json() if response.content else None
                with self._changed:
                    op.status = response.status_code
                    self._changed.notify_all()
        except BaseException as exc:  # reported by the campaign, not lost in the thread
            self.error = exc
        finally:
            with self._changed:
                self._changed.notify_all()
