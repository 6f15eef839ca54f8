"""Chat and text completions through a live uvicorn server, with the real `openai` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, LiveServer

QUESTION = [{"role": "user", "content": "Name a large city in France."}]


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-tenant-a", max_retries=0)


def post(live_server: LiveServer, path: str, body: object, key: str = "sk-tenant-a"):
    return httpx.post(
        f"{live_server.url}{path}",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def test_chat_non_stream(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=QUESTION, max_tokens=12, temperature=0
    )
    response = raw.parse()
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 20
    assert raw.headers["x-ragkv-cache"] in ("miss", "kv-hit")
    extra = response.model_extra["ragkv"]
    assert extra["prefix_tokens_reused"] == response.usage.prompt_tokens_details.cached_tokens


def test_repeat_is_a_prefix_hit_with_the_same_answer(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Describe a quiet harbor town at dawn in detail."}]
    first = client.chat.completions.create(
        model="default", messages=messages, max_tokens=10, temperature=0
    )
    raw = client.chat.completions.with_raw_response.create(
        model="default", messages=messages, max_tokens=10, temperature=0
    )
    second = raw.parse()
    assert raw.headers["x-ragkv-cache"] == "kv-hit"
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == (second.usage.prompt_tokens - 1) // 16 * 16
    assert second.choices[0].message.content == first.choices[0].message.content


def test_chat_stream_ends_with_usage_and_ragkv(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default", messages=QUESTION, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(
        model="default", messages=QUESTION, max_tokens=12, temperature=0
    )
    assert text == whole.choices[0].message.content
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert "ttft_ms" in last.model_extra["ragkv"]
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_chat_logprobs(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="default",
        messages=QUESTION,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob, abs=1e-5)


def test_seeded_sampling_is_reproducible(client: openai.OpenAI) -> None:
    def sample() -> str:
        response = client.chat.completions.create(
            model="default", messages=QUESTION, max_tokens=12, temperature=0.9, seed=42
        )
        return response.choices[0].message.content

    assert sample() == sample()


def test_stop_string_truncates(client: openai.OpenAI) -> None:
    whole = client.completions.create(
        model="default", prompt="One, two, three, four, five,", max_tokens=12, temperature=0
    ).choices[0]
    assert "," in whole.text
    stop = client.completions.create(
        model="default",
        prompt="One, two, three, four, five,",
        max_tokens=12,
        temperature=0,
        stop=[","],
    ).choices[0]
    assert stop.text == whole.text.split(",")[0]
    assert stop.finish_reason == "stop"


def test_text_completion_with_logprobs(client: openai.OpenAI) -> None:
    response = client.completions.create(
        model="default", prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2
    )
    choice = response.choices[0]
    assert response.object == "text_completion"
    assert "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.top_logprobs[0]) == 2


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-9", messages=QUESTION, max_tokens=2)
    assert info.value.body["code"] == "model_not_found"


def test_context_overflow_is_400_with_numbers(live_server: LiveServer) -> None:
    response = post(
        live_server,
        "/v1/completions",
        {"prompt": list(range(100, 8100)), "max_tokens": 500},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "8192" in error["message"] and "8000" in error["message"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"messages": []}, 422),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422),
        ({"messages": QUESTION, "temperature": -1}, 422),
        ({"messages": QUESTION, "n": 3}, 422),
        ({"messages": QUESTION, "max_tokens": 0}, 422),
        ({"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}, 422),
        ({"messages": QUESTION, "top_logprobs": 2}, 400),
        ({"messages": QUESTION, "presence_penalty": 1.0}, 400),
        ({"messages": QUESTION, "ragkv": {"kv_reuse": "magic"}}, 422),
        ({"prompt": []}, 422),
    ],
)
def test_bad_input_gets_the_envelope(live_server: LiveServer, body: dict, status: int) -> None:
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    response = post(live_server, path, body)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_malformed_json_is_400(live_server: LiveServer) -> None:
    response = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=b'{"messages": [',
        headers={"Authorization": "Bearer sk-tenant-a", "content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_oversized_chunked_body_is_413(live_server: LiveServer) -> None:
    limit = live_server.settings.server.max_body_bytes

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536
        yield b'"}]}'

    response = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=chunks(),
        headers={"Authorization": "Bearer sk-tenant-a", "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_tenants_do_not_share_prefix_kv(live_server: LiveServer) -> None:
    body = {
        "messages": [{"role": "user", "content": "Tenant isolation check: list four metals."}],
        "max_tokens": 2,
        "temperature": 0,
    }
    # Tenant b starts with an empty prefix cache whatever tests ran before on this server.
    flushed = post(live_server, "/admin/cache/flush", {"tenant": "tenant-b", "level": "prefix"},
                   key=ADMIN_KEY)  # fmt: skip
    assert flushed.status_code == 200, flushed.text
    post(live_server, "/v1/chat/completions", body, key="sk-tenant-a")
    other = post(live_server, "/v1/chat/completions", body, key="sk-tenant-b").json()
    same = post(live_server, "/v1/chat/completions", body, key="sk-tenant-a").json()
    # the default system prompt is a shared-looking prefix, yet tenant b never gets a's KV
    assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert same["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_stream_error_before_first_token_is_plain_http(live_server: LiveServer) -> None:
    response = post(
        live_server,
        "/v1/completions",
        {"prompt": list(range(100, 8100)), "max_tokens": 500, "stream": True},
    )
    assert response.status_code == 400
    assert json.loads(response.text)["error"]["code"] == "context_length_exceeded"


def test_prefix_level_stats_and_flush(live_server: LiveServer) -> None:
    admin = {"Authorization": "Bearer sk-admin"}
    body = {
        "messages": [{"role": "user", "content": "Prefix stats check: describe a lighthouse."}],
        "max_tokens": 2,
        "temperature": 0,
        "ragkv": {"semantic_cache": False},
    }
    post(live_server, "/v1/chat/completions", body)
    before = httpx.get(f"{live_server.url}/admin/cache/stats", headers=admin).json()["prefix"]
    repeat = post(live_server, "/v1/chat/completions", body).json()
    cached = repeat["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    after = httpx.get(f"{live_server.url}/admin/cache/stats", headers=admin).json()["prefix"]
    assert after["cached_tokens"] - before["cached_tokens"] == cached
    assert after["requests"] == before["requests"] + 1
    assert after["cached_pages"] > 0 and after["cached_bytes"] > 0

    flushed = httpx.post(
        f"{live_server.url}/admin/cache/flush",
        json={"tenant": "tenant-a", "level": "prefix"},
        headers=admin,
    ).json()["flushed"]
    assert flushed["prefix_pages"] > 0 and "semantic" not in flushed
    cold = post(live_server, "/v1/chat/completions", body).json()
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
