"""Single-flight over real HTTP: concurrent identical deterministic misses run the model once;
the others are answered with the leader's text as semantic hits."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import LiveServer

QUESTION = "Name the largest planet of the solar system."


async def ask_together(url: str, bodies: list[dict]) -> list[httpx.Response]:
    headers = {"Authorization": "Bearer sk-tenant-a"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=b) for b in bodies))


def body(question: str, stream: bool = False) -> dict:
    return {
        "model": "default",
        "messages": [
            {"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": question},
        ],
        "temperature": 0,
        "max_tokens": 200,  # room for the model to finish: only complete answers are shared
        "stream": stream,
        "ragkv": {"kv_reuse": "full"},  # no prefix reuse, so the leader takes a while
    }


def test_identical_concurrent_misses_run_the_model_once(live_server: LiveServer) -> None:
    engine = live_server.app.state.components.llm
    before = engine.stats.requests
    # The same question with other spacing and case: the flight key is normalised.
    questions = [QUESTION, QUESTION, f"  {QUESTION.lower()} ", QUESTION.upper()]
    responses = asyncio.run(ask_together(live_server.url, [body(q) for q in questions]))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    headers = [r.headers["x-ragkv-cache"] for r in responses]
    assert engine.stats.requests - before == 1, headers
    assert headers.count("semantic-hit") == 3
    answers = {r.json()["choices"][0]["message"]["content"] for r in responses}
    assert len(answers) == 1 and answers != {""}
    leader = next(r.json() for r in responses if r.headers["x-ragkv-cache"] != "semantic-hit")
    assert leader["choices"][0]["finish_reason"] == "stop"
    followers = [
        r.json()["ragkv"] for r in responses if r.headers["x-ragkv-cache"] == "semantic-hit"
    ]
    for info in followers:
        assert info["semantic_cache"] == "hit" and info["tokens_recomputed"] == 0
        assert info["semantic"]["entry_id"] is not None


def test_followers_of_a_streamed_leader_get_its_answer(live_server: LiveServer) -> None:
    engine = live_server.app.state.components.llm
    before = engine.stats.requests
    question = "Which gas do plants take in to make sugar?"
    bodies = [body(question, stream=True), body(question), body(question)]
    responses = asyncio.run(ask_together(live_server.url, bodies))
    assert all(r.status_code == 200 for r in responses)
    assert engine.stats.requests - before == 1
    streamed = "".join(
        chunk["choices"][0]["delta"].get("content", "")
        for chunk in _events(responses[0].text)
        if chunk.get("choices")
    )
    answers = [r.json()["choices"][0]["message"]["content"] for r in responses[1:]]
    assert answers == [streamed, streamed]


def _events(text: str) -> list[dict]:
    import json

    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
