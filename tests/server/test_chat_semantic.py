"""The semantic cache in front of the engine, over real HTTP with the openai client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import LiveServer


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-tenant-a", max_retries=0)


def ask(client: openai.OpenAI, question: str, **fields):
    raw = client.chat.completions.with_raw_response.create(
        model="default",
        messages=[{"role": "user", "content": question}],
        max_tokens=fields.pop("max_tokens", 48),
        temperature=fields.pop("temperature", 0),
        **fields,
    )
    return raw.headers["x-ragkv-cache"], raw.parse()


def test_repeat_question_is_served_from_the_semantic_cache(client: openai.OpenAI) -> None:
    question = "Which city is the capital of Japan?"
    header, first = ask(client, question)
    assert header != "semantic-hit"
    assert first.model_extra["ragkv"]["semantic_cache"] == "miss"
    if first.choices[0].finish_reason != "stop":
        pytest.skip("the model did not finish its answer, so nothing was stored")
    header, second = ask(client, question)
    assert header == "semantic-hit"
    info = second.model_extra["ragkv"]
    assert info["semantic_cache"] == "hit"
    assert info["semantic"]["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert info["tokens_recomputed"] == 0
    assert second.choices[0].message.content == first.choices[0].message.content


def test_warmed_answer_serves_a_paraphrase(live_server: LiveServer, client) -> None:
    answer = "Refunds are accepted within 30 days of purchase."
    warm = httpx.post(
        f"{live_server.url}/v1/cache/entries",
        json={"entries": [{"query": "What is your refund policy?", "response": answer}]},
        headers={"Authorization": "Bearer sk-tenant-a"},
    )
    assert warm.status_code == 200, warm.text
    header, response = ask(client, "What's your refund policy?")
    assert header == "semantic-hit"
    assert response.choices[0].message.content == answer
    assert response.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What's your refund policy?"}],
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert chunks[-1].model_extra["ragkv"]["semantic_cache"] == "hit"


def test_other_tenants_and_sampled_requests_do_not_hit(live_server, client) -> None:
    question = "What is your refund policy?"
    other = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-tenant-b", max_retries=0)
    header, _ = ask(other, question, max_tokens=2)
    assert header != "semantic-hit"
    header, sampled = ask(client, question, max_tokens=2, temperature=0.8)
    assert header != "semantic-hit"
    assert sampled.model_extra["ragkv"]["semantic_cache"] == "skipped"
    header, _ = ask(client, question, max_tokens=2, logprobs=True)
    assert header != "semantic-hit"
    header, _ = ask(client, question, max_tokens=2, extra_body={"ragkv": {"semantic_cache": False}})
    assert header != "semantic-hit"


def test_unknown_category_is_a_client_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, "hello there", extra_body={"ragkv": {"category": "no-such-category"}})
    assert 400 <= info.value.status_code < 500
