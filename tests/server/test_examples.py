"""The scripts in examples/ run against a live gateway and do what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from tests.conftest import LiveServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rag_collection_example(live_server: LiveServer) -> None:
    result = load("rag_collection").main(live_server.url, "sk-tenant-b", "examples-test")
    assert result["chat"]["choices"][0]["message"]["content"]
    assert result["chat"]["ragkv"]["chunk_tokens_reused"] > 0
    sources = result["rag"]["sources"]
    assert sources and sources[0]["document_id"] == "deserts"


def test_inline_documents_example(live_server: LiveServer) -> None:
    first, reordered, full = load("inline_documents").main(live_server.url, "sk-tenant-b")
    assert reordered["chunk_tokens_reused"] > 0 and reordered["selector"]
    assert full["chunk_tokens_reused"] == 0 and full["prefix_tokens_reused"] == 0
    assert full["tokens_recomputed"] > reordered["tokens_recomputed"]  # the whole prompt
    assert first["ttft_ms"] > 0


def test_quickstart_example(live_server: LiveServer) -> None:
    result = load("quickstart").main(live_server.url, "sk-tenant-b", "quickstart-test")
    first, again = result["first"], result["again"]
    assert first.answer and first.sources[0].document_id == "bees"
    if first.finish_reason == "stop":  # only complete answers are cached
        assert again.cache_status == "semantic-hit" and again.answer == first.answer


def test_langchain_example(live_server: LiveServer) -> None:
    result = load("langchain_rag").main(live_server.url, "sk-tenant-b", "langchain-test")
    assert [d.metadata["document_id"] for d in result["documents"]] == ["mars"]
    assert result["documents"][0].metadata["score"] > 0
    assert isinstance(result["reply"].content, str) and result["reply"].content


def test_llamaindex_example(live_server: LiveServer) -> None:
    replies = load("llamaindex_rag").main(live_server.url, "sk-tenant-b", "llamaindex-test")
    first, again = replies["first"], replies["again"]
    info = first.raw.model_extra["ragkv"]
    assert first.message.content and info["semantic_cache"] == "miss"
    assert [s["document_id"] for s in info["sources"]] == ["venus"]
    assert info["chunk_tokens_reused"] > 0  # prewarmed at ingest
    if first.raw.choices[0].finish_reason == "stop":  # only complete answers are cached
        assert again.raw.model_extra["ragkv"]["semantic_cache"] == "hit"
        assert again.message.content == first.message.content


def test_rag_pipeline_example(live_server: LiveServer) -> None:
    result = load("rag_pipeline").main(live_server.url, "sk-tenant-b", "pipeline-test")
    first, again = result["passes"]["first"], result["passes"]["again"]
    assert [a.sources[0].document_id for a in first] == ["everest", "nile", "sahara"]
    assert result["summary"]["first"]["chunk_tokens_reused"] > 0
    stored = sum(a.finish_reason == "stop" for a in first)  # only complete answers are cached
    assert result["summary"]["again"]["semantic_hits"] == stored
    assert [a.answer for a, b in zip(again, first, strict=True) if b.finish_reason == "stop"] == [
        b.answer for b in first if b.finish_reason == "stop"
    ]


def test_openai_client_example(live_server: LiveServer) -> None:
    result = load("openai_client").main(live_server.url, "sk-tenant-b")
    assert result["reply"].choices[0].message.content
    assert result["streamed"] == result["reply"].choices[0].message.content
    assert result["chunks"][-1].usage.completion_tokens > 0
    assert result["grounded"].model_extra["ragkv"]["sources"][0]["document_id"] == "mars-sky"


def test_agent_loop_example(live_server: LiveServer) -> None:
    turns = load("agent_loop").main(live_server.url, "sk-tenant-b")
    first, second = turns[0], turns[1]
    assert first["tool_calls"] == ["get_weather"]
    assert second["cached_tokens"] >= first["prompt_tokens"] // 16 * 16  # the first turn, pinned
