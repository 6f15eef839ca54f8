"""Queue limits and disconnects over real HTTP: 503 with Retry-After, pages freed on cancel."""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest

from ragkv.engine.engine import LLMEngine
from tests.conftest import LiveServer

AUTH = {"Authorization": "Bearer sk-tenant-a"}


@pytest.fixture
def engine(live_server: LiveServer) -> Iterator[LLMEngine]:
    """The live server's engine, with tight limits for this test only."""
    engine: LLMEngine = live_server.app.state.components.llm
    saved = engine.settings
    engine.settings = saved.model_copy(
        update={"max_num_seqs": 1, "max_waiting": 1, "max_batch_tokens": 16}
    )
    engine.scheduler.settings = engine.settings
    yield engine
    engine.settings = engine.scheduler.settings = saved


def wait_idle(engine: LLMEngine, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while engine.has_work():
        assert time.monotonic() < deadline, "the engine kept working after the client left"
        time.sleep(0.05)


def long_prompt(tag: str) -> list[int]:
    """~1,500 token ids: 90+ prefill steps of 16 tokens keep the one slot busy for a while."""
    return [100 + (zlib.crc32(tag.encode()) + i) % 40000 for i in range(1500)]


async def until(condition, what: str, timeout_s: float = 120) -> None:
    """Poll `condition()` until it holds; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def test_full_queue_answers_503_with_retry_after(live_server: LiveServer, engine) -> None:
    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live_server.url, headers=AUTH, timeout=300) as http:

            def send(tag: str):
                body = {"prompt": long_prompt(tag), "max_tokens": 1, "ragkv": {"kv_reuse": "full"}}
                return http.post("/v1/completions", json=body)

            running = asyncio.create_task(send("a"))
            await until(lambda: engine.scheduler.running, "request a to run")
            waiting = asyncio.create_task(send("b"))
            # b queues behind a (one slot, ~90 prefill steps); it is seen as waiting in the
            # engine's inbox or its queue, whichever it is in when polled.
            await until(lambda: engine.scheduler.waiting or engine._incoming, "request b to queue")
            rejected = await send("c")
            return [await running, await waiting, rejected]

    first, second, third = asyncio.run(scenario())
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 503
    assert int(third.headers["retry-after"]) >= 1
    assert third.json()["error"]["type"] == "overloaded_error"
    wait_idle(engine)


def test_client_disconnect_frees_its_pages(live_server: LiveServer, engine) -> None:
    wait_idle(engine)
    free_before = engine.pool.num_free + engine.radix.size_info().total_pages
    finished_before = engine.stats.requests
    body = {
        "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 2000,
        "temperature": 0,  # greedy: the story never ends within the 6 events read
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{live_server.url}/v1/chat/completions", json=body, headers=AUTH, timeout=120
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)
    wait_idle(engine, timeout_s=20)
    assert engine.stats.requests == finished_before  # aborted, not run to 2,000 tokens
    assert engine.pool.num_free + engine.radix.size_info().total_pages == free_before
    engine.radix.check_integrity()
