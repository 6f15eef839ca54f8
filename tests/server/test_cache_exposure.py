"""`server.expose_cache_status = false`: responses say nothing of what the caches did (no
x-ragkv-cache header, no cached_tokens, no ragkv cache fields; a RAG answer keeps its
sources), while the admin stats still count the hits."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import ADMIN_KEY, LiveServer

AUTH = {"Authorization": "Bearer sk-tenant-b"}
CHAT = {"messages": [{"role": "user", "content": "Name a large ocean, please."}],
        "max_tokens": 4, "temperature": 0, "ragkv": {"semantic_cache": False}}  # fmt: skip


@pytest.fixture
def hidden(live_server: LiveServer) -> Iterator[LiveServer]:
    parts = live_server.app.state.components
    saved = parts.settings
    server = saved.server.model_copy(update={"expose_cache_status": False})
    parts.settings = saved.model_copy(update={"server": server})
    yield live_server
    parts.settings = saved


def prefix_reused(live_server: LiveServer) -> int:
    stats = httpx.get(
        f"{live_server.url}/admin/cache/stats",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=60,
    ).json()
    return stats["prefix"]["cached_tokens"]


def test_hidden_cache_status_in_json_and_stream(hidden: LiveServer) -> None:
    url = f"{hidden.url}/v1/chat/completions"
    httpx.post(url, json=CHAT, headers=AUTH, timeout=120).raise_for_status()  # warm the prefix
    before = prefix_reused(hidden)
    again = httpx.post(url, json=CHAT, headers=AUTH, timeout=120)
    assert again.status_code == 200 and "x-ragkv-cache" not in again.headers
    body = again.json()
    assert "prompt_tokens_details" not in body["usage"] and "ragkv" not in body
    assert prefix_reused(hidden) > before  # the hit happened and the admin counts it
    with httpx.stream("POST", url, json={**CHAT, "stream": True}, headers=AUTH) as response:
        assert "x-ragkv-cache" not in response.headers
        events = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]  # fmt: skip
    final = events[-1]
    assert final["usage"]["completion_tokens"] == 4
    assert "prompt_tokens_details" not in final["usage"] and "ragkv" not in final


def test_hidden_cache_status_keeps_rag_sources(hidden: LiveServer) -> None:
    documents = [{"text": "The Pacific is the largest and deepest ocean on Earth. " * 8}]
    body = {**CHAT, "documents": documents}
    response = httpx.post(f"{hidden.url}/v1/chat/completions", json=body, headers=AUTH,
                          timeout=120)  # fmt: skip
    assert response.status_code == 200 and "x-ragkv-cache" not in response.headers
    ragkv = response.json()["ragkv"]
    assert set(ragkv) == {"sources"} and ragkv["sources"]
