"""RAG over real HTTP: inline documents and server-side retrieval with chunk KV blending,
`/v1/rag/chat` with sources, chunk stats and flush, metrics, and bad input."""

from __future__ import annotations

import json
import random
import time
import uuid

import httpx
import openai
import pytest

from ragkv.cache.kv.chunk_store import chunk_key, context_variant
from ragkv.retrieval.loaders import wikipedia_sample
from tests.conftest import LiveServer

A = {"Authorization": "Bearer sk-tenant-a"}
ADMIN = {"Authorization": "Bearer sk-admin"}


@pytest.fixture(scope="module")
def leads() -> list[tuple[str, str]]:
    """Four Wikipedia leads long enough to make real chunks: (title, text)."""
    documents = [d for d in wikipedia_sample() if 700 < len(d.text) < 1400]
    picked = random.Random(3).sample(documents, 4)
    return [(d.id, d.text) for d in picked]


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-tenant-a", max_retries=0)


def chat(live_server: LiveServer, body: dict, headers=A) -> httpx.Response:
    return httpx.post(
        f"{live_server.url}/v1/chat/completions", json=body, headers=headers, timeout=300
    )


def rag_body(leads, order, **ragkv) -> dict:
    return {
        "messages": [{"role": "user", "content": f"What is {leads[order[0]][0]}?"}],
        "documents": [{"id": leads[i][0], "text": leads[i][1]} for i in order],
        "max_tokens": 6,
        "temperature": 0,
        "ragkv": {"semantic_cache": False, **ragkv},
    }


def test_inline_documents_are_blended_then_stored_back(live_server, leads):
    first = chat(live_server, rag_body(leads, [0, 1, 2]))
    assert first.status_code == 200, first.text
    info = first.json()["ragkv"]
    assert info["selector"] == "cacheblend" and info["kv_reuse"] == "auto"
    assert info["chunk_tokens_reused"] > 100
    assert 0 < info["tokens_recomputed"] < first.json()["usage"]["prompt_tokens"] // 2
    assert first.headers["x-ragkv-cache"] == "kv-hit"
    assert [s["document_id"] for s in info["sources"]][:1] == [leads[0][0]]
    again = chat(live_server, rag_body(leads, [0, 1, 2]))
    usage = again.json()["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] - 16
    assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]


def test_full_reuses_nothing_and_naive_reuses_everything(live_server, leads):
    full = chat(live_server, rag_body(leads, [3, 2, 1], kv_reuse="full")).json()
    assert full["ragkv"]["chunk_tokens_reused"] == 0
    assert full["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    naive = chat(live_server, rag_body(leads, [2, 3, 1], kv_reuse="naive")).json()
    assert naive["ragkv"]["selector"] == "naive"
    chunk_tokens = naive["ragkv"]["chunk_tokens_reused"]
    assert chunk_tokens + naive["ragkv"]["tokens_recomputed"] <= naive["usage"]["prompt_tokens"]
    ratio = chat(
        live_server, rag_body(leads, [1, 3, 2], kv_reuse="cacheblend", recompute_ratio=0.5)
    )
    blended = ratio.json()["ragkv"]
    assert blended["chunk_tokens_reused"] == pytest.approx(chunk_tokens / 2, abs=3)


def test_openai_client_passes_documents_in_extra_body(client, leads):
    response = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Summarize the documents."}],
        max_tokens=5,
        temperature=0,
        extra_body={"documents": [{"text": leads[1][1]}, {"text": leads[0][1]}]},
    )
    assert response.model_extra["ragkv"]["chunk_tokens_reused"] > 0
    assert len(response.model_extra["ragkv"]["sources"]) >= 2


@pytest.fixture(scope="module")
def wiki_collection(live_server, leads) -> str:
    name = f"wiki-{uuid.uuid4().hex[:8]}"
    created = httpx.post(f"{live_server.url}/v1/collections", json={"name": name}, headers=A)
    assert created.status_code == 201, created.text
    documents = [{"id": title, "text": text, "metadata": {"title": title}} for title, text in leads]
    added = httpx.post(
        f"{live_server.url}/v1/collections/{name}/documents",
        json={"documents": documents},
        headers=A,
        timeout=300,
    )
    assert added.status_code in (200, 201), added.text
    return name


def test_rag_chat_answers_with_sources(live_server, leads, wiki_collection):
    question = f"Tell me about {leads[2][0]}."
    body = {"question": question, "collection": wiki_collection, "top_k": 3, "max_tokens": 8}
    response = httpx.post(f"{live_server.url}/v1/rag/chat", json=body, headers=A, timeout=300)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "rag.answer" and answer["answer"]
    sources = answer["sources"]
    assert len(sources) == 3 and sources[0]["title"] == leads[2][0]
    assert sources == sorted(sources, key=lambda s: -s["score"])
    assert answer["ragkv"]["chunk_tokens_reused"] > 0


def test_rag_chat_streams_sources_in_the_last_event(live_server, leads, wiki_collection):
    body = {
        "question": f"Where is {leads[1][0]}?",
        "collection": wiki_collection,
        "top_k": 2,
        "max_tokens": 6,
        "stream": True,
    }
    events = []
    with httpx.stream(
        "POST", f"{live_server.url}/v1/rag/chat", json=body, headers=A, timeout=300
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    assert events[-1]["choices"] == [] and len(events[-1]["ragkv"]["sources"]) == 2
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/rag/chat", {"question": "x", "collection": "no-such-collection"}, 404),
        ("/v1/rag/chat", {"question": "", "collection": "c"}, 422),
        ("/v1/rag/chat", {"question": "x", "collection": "c", "top_k": 0}, 422),
        ("/v1/rag/chat", {"question": "x", "collection": "c", "surprise": 1}, 422),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "q"}], "documents": [{"text": "  "}]},
            422,
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "q"}], "rag": {"collection": "nope"}},
            404,
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": "q"}],
                "ragkv": {"kv_reuse": "cacheblend", "recompute_ratio": 1.5},
            },
            422,
        ),
    ],
)
def test_bad_rag_input_gets_an_envelope(live_server, path, body, status):
    response = httpx.post(f"{live_server.url}{path}", json=body, headers=A, timeout=60)
    assert response.status_code == status, response.text
    assert set(response.json()["error"]) >= {"message", "type", "param", "code"}


def test_chunk_level_stats_metrics_and_flush(live_server, leads):
    chat(live_server, rag_body(leads, [1, 0]))
    stats = httpx.get(f"{live_server.url}/admin/cache/stats", headers=ADMIN).json()["chunk"]
    assert stats["requests"] >= 1 and stats["chunk_tokens_reused"] > 0
    assert stats["tiers"]["cpu"]["entries"] >= 2 and stats["tiers"]["disk"]["entries"] >= 2
    assert stats["counters"]["lookups"] >= 2
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert 'ragkv_ttft_seconds_count{kv_reuse="auto"}' in metrics
    assert 'ragkv_chunk_kv_entries{tier="disk"}' in metrics
    flushed = httpx.post(
        f"{live_server.url}/admin/cache/flush",
        json={"level": "chunk", "tenant": "tenant-a"},
        headers=ADMIN,
    ).json()["flushed"]
    assert flushed["chunk_entries"] >= 4  # memory and disk copies
    after = httpx.get(f"{live_server.url}/admin/cache/stats", headers=ADMIN).json()["chunk"]
    assert after["tiers"]["cpu"]["entries"] < stats["tiers"]["cpu"]["entries"]
    store = live_server.app.state.components.llm.blender.store
    held = [key.tenant for tier in store.memory for key in tier.entries]
    assert "tenant-a" not in held  # other tenants' chunks (other tests) stay


def test_ingest_with_prewarm_fills_the_chunk_cache(live_server, leads):
    name = f"warm-{uuid.uuid4().hex[:8]}"
    httpx.post(f"{live_server.url}/v1/collections", json={"name": name}, headers=A)
    text = leads[3][1] + " Extra sentence so the chunk is new to the cache."
    added = httpx.post(
        f"{live_server.url}/v1/collections/{name}/documents?prewarm=true",
        json={"documents": [{"id": "warm", "text": text}]},
        headers=A,
        timeout=300,
    )
    assert added.status_code == 200 and added.json()["prewarm"] == "scheduled"
    engine = live_server.app.state.components.llm
    document = httpx.get(
        f"{live_server.url}/v1/collections/{name}/documents/warm", headers=A
    ).json()
    variant = context_variant(live_server.app.state.components.pipeline.chunk_context)
    keys = [chunk_key("tenant-a", c["token_ids"], variant) for c in document["chunks"]]
    deadline = time.monotonic() + 120
    while not all(engine.blender.store.contains(k) for k in keys):
        assert time.monotonic() < deadline, "prewarm did not finish"
        time.sleep(0.5)
    computed = engine.blender.stats.chunks_computed
    body = {"question": "What is this about?", "collection": name, "top_k": 1, "max_tokens": 4}
    response = httpx.post(f"{live_server.url}/v1/rag/chat", json=body, headers=A, timeout=300)
    assert response.status_code == 200, response.text
    assert response.json()["ragkv"]["chunk_tokens_reused"] > 0
    assert engine.blender.stats.chunks_computed == computed  # prewarmed KV was used
