"""The SDK against a full queue: 503 raised as OverloadedError with Retry-After, and retried
until the queue drains. The queue is held full by a long stream that is only released once
the SDK has seen its first 503, so the order of events does not depend on timing."""

from __future__ import annotations

import asyncio
import threading

import httpx

import ragkv
from tests.conftest import LiveServer
from tests.server.test_overload import engine, long_prompt, until, wait_idle  # noqa: F401

AUTH = {"Authorization": "Bearer sk-tenant-a"}


def hold_queue_full(url: str, engine, release: threading.Event) -> None:  # noqa: F811
    """Run a long greedy stream (the one running slot) and a long prompt (the one waiting
    slot); close the stream once `release` is set, so the queue drains."""

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=300) as client:
            story = {"messages": [{"role": "user", "content": "Tell a very long story."}],
                     "max_tokens": 2000, "temperature": 0, "stream": True}  # fmt: skip
            async with client.stream("POST", "/v1/chat/completions", json=story) as stream:
                await until(lambda: engine.scheduler.running, "the stream to run")
                body = {"prompt": long_prompt("retry"), "max_tokens": 1,
                        "ragkv": {"kv_reuse": "full"}}  # fmt: skip
                waiting = asyncio.create_task(client.post("/v1/completions", json=body))
                await asyncio.to_thread(release.wait, 300)
                await stream.aclose()  # the client goes away: the engine aborts the stream
            await waiting

    asyncio.run(scenario())


def test_overloaded_then_retried_until_served(live_server: LiveServer, engine) -> None:  # noqa: F811
    engine.settings = engine.scheduler.settings = engine.settings.model_copy(
        update={"retry_after_s": 1}
    )
    release = threading.Event()
    statuses: list[int] = []

    def on_response(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 503:
            release.set()

    holder = threading.Thread(target=hold_queue_full, args=(live_server.url, engine, release))
    holder.start()
    try:
        full = lambda: engine.scheduler.waiting or engine._incoming  # noqa: E731
        asyncio.run(until(full, "a full queue"))
        with ragkv.Client(live_server.url, api_key="sk-tenant-a", max_retries=0) as impatient:
            try:
                impatient.chat("Hi", max_tokens=2, temperature=0, semantic_cache=False)
                raise AssertionError("a full queue must answer 503")
            except ragkv.OverloadedError as error:
                assert error.status == 503 and error.retry_after == 1
        patient = ragkv.Client(live_server.url, api_key="sk-tenant-a", max_retries=100)
        patient._http.event_hooks["response"].append(on_response)
        with patient:
            result = patient.chat("Hi", max_tokens=2, temperature=0, semantic_cache=False)
    finally:
        release.set()
        holder.join(timeout=300)
    assert result.usage.completion_tokens >= 1
    assert statuses[0] == 503 and statuses[-1] == 200  # refused, retried, then served
    wait_idle(engine)
