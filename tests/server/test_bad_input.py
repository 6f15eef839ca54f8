"""Input a client can send that is not text, or a parameter the server does not honour:
a clear 4xx in the OpenAI envelope, never a 500, and the server stays up."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

import httpx
import pytest

from ragkv.server.middleware import lone_surrogate
from tests.conftest import LiveServer

AUTH = {"Authorization": "Bearer sk-tenant-a", "content-type": "application/json"}
TENANT = {"Authorization": "Bearer sk-tenant-a"}
ADMIN = {"Authorization": "Bearer sk-admin", "content-type": "application/json"}
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


@pytest.fixture(scope="module")
def collection(live_server: LiveServer) -> str:
    """Tenant a's collection "bad-input", which the routes under test name."""
    httpx.post(f"{live_server.url}/v1/collections", json={"name": "bad-input"}, headers=AUTH)
    return "bad-input"


def post(live: LiveServer, path: str, body: str | bytes, headers: dict | None = None):
    return httpx.post(f"{live.url}{path}", content=body, headers=headers or AUTH, timeout=120)


def assert_refused(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert error["message"] and error["type"].endswith("_error")
    if param is not None:
        assert error["param"] == param, error


CHAT = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, %s}'
NON_FINITE = [
    ("/v1/chat/completions", CHAT % '"temperature": %s', "temperature"),
    ("/v1/chat/completions", CHAT % '"top_p": %s', "top_p"),
    ("/v1/chat/completions", CHAT % '"frequency_penalty": %s', "frequency_penalty"),
    ("/v1/chat/completions", CHAT % '"ragkv": {"recompute_ratio": %s}', "ragkv.recompute_ratio"),
    ("/v1/chat/completions", CHAT % '"ragkv": {"session_id": "s", "pin_ttl_s": %s}',
     "ragkv.pin_ttl_s"),
    ("/v1/completions", '{"prompt": "hi", "max_tokens": %s}', "max_tokens"),
    ("/v1/collections/bad-input/search", '{"query": "q", "top_k": %s}', "top_k"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "template", "param"), NON_FINITE)
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_a_4xx(
    live_server: LiveServer, collection: str, path: str, template: str, param: str, value: str
) -> None:
    assert_refused(post(live_server, path, template % value), 422, param)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "2"])
def test_feedback_similarity_out_of_range_is_a_422(live_server: LiveServer, value: str) -> None:
    body = f'{{"entry_id": 1, "similarity": {value}}}'
    assert_refused(post(live_server, "/admin/cache/feedback", body, ADMIN), 422, "similarity")


@pytest.mark.parametrize("entry_id", [2**64, 2**70])
def test_feedback_on_an_entry_id_beyond_u64_is_a_404(live_server: LiveServer, entry_id: int):
    response = httpx.post(
        f"{live_server.url}/admin/cache/feedback", json={"entry_id": entry_id}, headers=ADMIN
    )
    assert_refused(response, 404)
    assert str(entry_id) in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("max_tokens", [0, -1, 10**9, 2**70])
def test_max_tokens_out_of_range_is_a_422(live_server: LiveServer, path: str, max_tokens: int):
    body = {"messages": [{"role": "user", "content": "hi"}]}
    body = {"prompt": "hi"} if path == "/v1/completions" else body
    response = httpx.post(
        f"{live_server.url}{path}", json={**body, "max_tokens": max_tokens}, headers=AUTH
    )
    assert_refused(response, 422, "max_tokens")


EMPTY = [
    ("/v1/chat/completions", {"messages": [], "max_tokens": 2}, 422, "messages"),
    ("/v1/completions", {"prompt": "", "max_tokens": 2}, 400, None),
    ("/v1/collections/bad-input/documents", {"documents": [{"text": ""}]}, 422,
     "documents[0].text"),
    ("/v1/collections/bad-input/documents", {"documents": []}, 422, "documents"),
    ("/v1/collections/bad-input/search", {"query": ""}, 422, "query"),
    ("/v1/embeddings", {"input": "", "model": "all-MiniLM-L6-v2"}, 422, "input"),
    ("/v1/embeddings", {"input": [], "model": "all-MiniLM-L6-v2"}, 422, "input"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "param"), EMPTY)
def test_empty_inputs_are_a_4xx(
    live_server: LiveServer, collection: str, path: str, body: dict, status: int, param: str | None
) -> None:
    response = httpx.post(f"{live_server.url}{path}", json=body, headers=AUTH, timeout=60)
    assert_refused(response, status, param)


def test_inputs_over_their_limits_are_a_4xx(live_server: LiveServer, collection: str) -> None:
    limit = live_server.settings.retrieval.max_document_bytes
    document = {"documents": [{"id": "big", "text": "x" * (limit + 1)}]}
    response = httpx.post(
        f"{live_server.url}/v1/collections/bad-input/documents", json=document, headers=AUTH
    )
    assert_refused(response, 413, "documents[0].text")
    prompt = {"prompt": "word " * 10_000, "max_tokens": 2}
    response = httpx.post(f"{live_server.url}/v1/completions", json=prompt, headers=AUTH)
    assert_refused(response, 400)
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_a_ten_thousand_message_conversation_is_a_400(live_server: LiveServer) -> None:
    messages = [
        {"role": ("user", "assistant")[i % 2], "content": f"turn {i}"} for i in range(10_000)
    ]
    response = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        json={"messages": messages, "max_tokens": 2},
        headers=AUTH,
        timeout=120,
    )
    assert_refused(response, 400, "max_tokens")
    assert response.json()["error"]["code"] == "context_length_exceeded"


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [65, 5_000, 100_000])
@pytest.mark.parametrize(
    "template",
    ['{"documents": [{"id": "n", "text": "t", "metadata": {"a": %s}}]}',
     '{"messages": [{"role": "user", "content": "hi", "x": %s}], "max_tokens": 2}',
     '{"messages": [{"role": "user", "content": "hi \\ud800", "x": %s}]}'],
)  # fmt: skip
def test_deeply_nested_json_is_a_400(
    live_server: LiveServer, collection: str, template: str, depth: int
) -> None:
    path = (
        "/v1/chat/completions" if "messages" in template else "/v1/collections/bad-input/documents"
    )
    response = post(live_server, path, template % nested(depth))
    assert_refused(response, 400)
    assert response.json()["error"]["code"] == "json_too_deep"
    assert httpx.get(f"{live_server.url}/health").status_code == 200


def test_nesting_within_the_limit_is_kept(live_server: LiveServer, collection: str) -> None:
    metadata = {"a": json.loads(nested(60))}
    document = {"documents": [{"id": "deep-ok", "text": "A deep note.", "metadata": metadata}]}
    url = f"{live_server.url}/v1/collections/bad-input"
    assert httpx.post(f"{url}/documents", json=document, headers=AUTH).status_code == 200
    stored = httpx.get(f"{url}/documents/deep-ok", headers=AUTH)
    assert stored.status_code == 200 and stored.json()["metadata"] == metadata


NOT_UTF8 = [
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi \xff"}]}'),
    ("/v1/collections/bad-input/documents", b'{"documents": [{"text": "t \xfe\xff"}]}'),
    ("/v1/collections/bad-input/search", b'{"query": "q \xc3"}'),
]


@pytest.mark.parametrize(("path", "body"), NOT_UTF8)
def test_json_that_is_not_utf8_is_a_400(
    live_server: LiveServer, collection: str, path: str, body: bytes
) -> None:
    assert_refused(post(live_server, path, body), 400)


UPLOADS = [
    ("notes.txt", b"caf\xe9 au lait"),  # Latin-1, not UTF-8
    ("docs.jsonl", b'{"text": "half a pair \\ud800"}\n'),
    ("docs.jsonl", b'{"text": "t", "metadata": {"a": ' + nested(100).encode() + b"}}\n"),
    ("docs.jsonl", b'{"text": 5}\n'),
]


@pytest.mark.parametrize(("name", "data"), UPLOADS)
def test_uploads_that_are_not_text_are_a_422(
    live_server: LiveServer, collection: str, name: str, data: bytes
) -> None:
    response = httpx.post(
        f"{live_server.url}/v1/collections/bad-input/documents",
        files=[("files", (name, data))],
        headers=TENANT,
    )
    assert_refused(response, 422, "files")


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_a_large_upload_in_many_files_is_a_413_and_memory_returns(
    live_server: LiveServer, collection: str
) -> None:
    """Over the body limit in 100 KB files: refused whether the size is declared or streamed;
    the server (this process) keeps no copy of what it refused."""
    url = f"{live_server.url}/v1/collections/bad-input/documents"
    part = b"word " * 20_000
    count = live_server.settings.server.max_body_bytes // len(part) + 8
    files = [("files", (f"part-{i}.txt", part)) for i in range(count)]
    streamed = {**TENANT, "content-type": "multipart/form-data; boundary=x"}

    def refuse_both() -> None:
        assert_refused(httpx.post(url, files=files, headers=TENANT, timeout=60), 413)
        body = (part for _ in range(count))  # a generator: sent chunked, no content-length
        assert_refused(httpx.post(url, content=body, headers=streamed, timeout=60), 413)

    refuse_both()  # first use: buffers and arenas grow once
    gc.collect()
    before = rss_mb()
    for _ in range(4):
        refuse_both()
    gc.collect()
    assert rss_mb() - before < 32, "refused uploads left memory behind"
    small = httpx.post(url, files=[("files", ("ok.txt", b"A small file."))], headers=TENANT)
    assert small.status_code == 200, small.text


@pytest.mark.parametrize("name", ["trailing-newline\n", "", "-starts-with-dash", "x" * 65])
def test_collection_names_outside_the_pattern_are_a_422(live_server: LiveServer, name: str):
    response = httpx.post(f"{live_server.url}/v1/collections", json={"name": name}, headers=AUTH)
    assert_refused(response, 422, "name")
