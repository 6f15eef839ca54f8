"""Over real HTTP, a request the engine fails (a fault injected into its sampler) gets the
OpenAI error envelope, in-band as an SSE event when streaming, and a request running next to
it finishes normally."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from ragkv.engine.engine import LLMEngine
from tests.conftest import LiveServer

AUTH = {"Authorization": "Bearer sk-tenant-a"}
MARK = [31337, 31338, 31339]  # poisoned prompts start with these token ids


@pytest.fixture
def poisoned_engine(live_server: LiveServer) -> Iterator[LLMEngine]:
    engine: LLMEngine = live_server.app.state.components.llm

    def hook(seq, stage: str) -> None:
        if stage == "sample" and list(seq.request.prompt_ids[:3]) == MARK and seq.output_ids:
            raise RuntimeError("injected sampler failure")

    engine.post.fault_hook = hook
    yield engine
    engine.post.fault_hook = None


def body(prompt: list[int], stream: bool) -> dict:
    return {"prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True,
            "stream": stream, "ragkv": {"semantic_cache": False}}  # fmt: skip


async def stream_events(client: httpx.AsyncClient, url: str, prompt: list[int]) -> list:
    events = []
    async with client.stream("POST", url, json=body(prompt, True), headers=AUTH) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def test_a_failed_stream_gets_an_error_event_and_its_neighbour_finishes(
    live_server: LiveServer, poisoned_engine: LLMEngine
) -> None:
    url = f"{live_server.url}/v1/completions"
    failed_before = poisoned_engine.stats.failed_requests

    async def both() -> tuple[list, list]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                stream_events(client, url, [*MARK, 400, 500, 600]),
                stream_events(client, url, [700, 800, 900, 1000]),
            )

    poisoned, healthy = asyncio.run(both())
    error = poisoned[-1]["error"]
    assert error["type"] == "server_error" and "injected sampler failure" in error["message"]
    assert "[DONE]" not in poisoned
    assert healthy[-1] == "[DONE]"
    assert healthy[-2]["usage"]["completion_tokens"] == 24
    assert poisoned_engine.stats.failed_requests == failed_before + 1


def test_a_failed_request_answers_500_with_the_envelope(
    live_server: LiveServer, poisoned_engine: LLMEngine
) -> None:
    response = httpx.post(
        f"{live_server.url}/v1/completions",
        json=body([*MARK, 1, 2, 3], stream=False),
        headers=AUTH,
        timeout=120,
    )
    assert response.status_code == 500
    assert "injected sampler failure" in response.json()["error"]["message"]
    assert not poisoned_engine.has_work()
