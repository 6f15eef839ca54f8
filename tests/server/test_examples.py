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
