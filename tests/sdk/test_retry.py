"""The SDK against a full queue: 503 raised as OverloadedError with Retry-After, and retried
until the queue drains. The engine is held between steps (its step lock) while the queue is
full and released only once the SDK has seen its first 503, so the order of events does not
depend on timing."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

import ragkv
from ragkv.engine.load import DrainRate
from tests.conftest import LiveServer
from tests.server.test_overload import engine, long_prompt, until, wait_idle  # noqa: F401

AUTH = {"Authorization": "Bearer sk-tenant-a"}


def fill_queue(url: str, engine) -> None:  # noqa: F811
    """One long prefill running (the one slot) and one waiting (the one queue place)."""

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=300) as client:

            def send(tag: str):
                body = {"prompt": long_prompt(tag), "max_tokens": 1,
                        "ragkv": {"kv_reuse": "full"}}  # fmt: skip
                return asyncio.create_task(client.post("/v1/completions", json=body))

            running = send("retry-a")
            await until(lambda: engine.scheduler.running, "request a to run")
            waiting = send("retry-b")
            await asyncio.gather(running, waiting)

    asyncio.run(scenario())


@pytest.mark.slow  # ~40 s (two 1,500-token prefills); the 503 itself: tests/server/test_overload.py
def test_overloaded_then_retried_until_served(live_server: LiveServer, engine) -> None:  # noqa: F811
    engine.settings = engine.scheduler.settings = engine.settings.model_copy(
        update={"retry_after_s": 1}
    )
    # No drain rate measured yet: Retry-After is the floor, 1 s (earlier tests' finishes
    # would otherwise turn the queue into a longer wait).
    engine.post.drain = DrainRate()
    statuses: list[int] = []
    filler = threading.Thread(target=fill_queue, args=(live_server.url, engine))
    filler.start()
    paused = False
    try:
        full = lambda: engine.scheduler.waiting or engine._incoming  # noqa: E731
        asyncio.run(until(full, "a full queue"))
        engine._step_lock.acquire()  # the engine stops between steps: the queue stays full
        paused = True

        def on_response(response: httpx.Response) -> None:
            nonlocal paused
            statuses.append(response.status_code)
            if response.status_code == 503 and paused:
                paused = False
                engine._step_lock.release()  # let the queue drain

        with ragkv.Client(live_server.url, api_key="sk-tenant-a", max_retries=0) as impatient:
            try:
                impatient.chat("Hi", max_tokens=2, temperature=0, semantic_cache=False)
                raise AssertionError("a full queue must answer 503")
            except ragkv.OverloadedError as error:
                assert error.status == 503 and error.retry_after == 1
        patient = ragkv.Client(live_server.url, api_key="sk-tenant-a", max_retries=100, timeout=600)
        patient._http.event_hooks["response"].append(on_response)
        with patient:
            result = patient.chat("Hi", max_tokens=2, temperature=0, semantic_cache=False)
    finally:
        if paused:
            engine._step_lock.release()
        filler.join(timeout=300)
    assert result.usage.completion_tokens >= 1
    assert statuses[0] == 503 and statuses[-1] == 200  # refused, retried, then served
    wait_idle(engine)
