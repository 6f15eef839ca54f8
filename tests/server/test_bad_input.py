"""Input a client can send that is not text, or a parameter the server does not honour:
a clear 4xx in the OpenAI envelope, never a 500, and the server stays up."""

from __future__ import annotations

import httpx
import pytest

from ragkv.server.middleware import lone_surrogate
from tests.conftest import LiveServer

AUTH = {"Authorization": "Bearer sk-tenant-a", "content-type": "application/json"}
LONE = "\\ud800"  # a JSON escape of half a UTF-16 pair
CASES = [
    ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi %s"}]}',
     "messages.0.content"),
    ("/v1/completions", '{"prompt": "hi %s", "max_tokens": 2}', "prompt"),
    ("/v1/embeddings", '{"input": ["ok", "%s"], "model": "all-MiniLM-L6-v2"}', "input.1"),
    ("/v1/collections/bad-input/documents", '{"documents": [{"id": "x", "text": "t %s"}]}',
     "documents.0.text"),
    ("/v1/collections/bad-input/search", '{"query": "%s"}', "query"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "template", "param"), CASES)
def test_lone_surrogates_are_a_400(live_server: LiveServer, path: str, template: str, param: str):
    httpx.post(f"{live_server.url}/v1/collections", json={"name": "bad-input"}, headers=AUTH)
    response = httpx.post(f"{live_server.url}{path}", content=template % LONE, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and "surrogate" in error["message"]
    assert httpx.get(f"{live_server.url}/health").status_code == 200


def test_surrogate_pairs_and_plain_text_pass() -> None:
    assert lone_surrogate(b'{"text": "emoji \\ud83d\\ude00 ok"}') is None  # a valid pair
    assert lone_surrogate(b'{"a": [{"b": "\\udfff"}]}') == "a.0.b"
    assert lone_surrogate(b'{"\\ud800": 1}') == ""  # in a key
    assert lone_surrogate(b"not json \\ud800") is None  # left to the route's validation


def test_logit_bias_is_refused_not_ignored(live_server: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "logit_bias": {"50": 100}}  # fmt: skip
    response = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logit_bias"
