"""The SDK against a live uvicorn server with the real model: every method, sync and async,
streaming, and each error class from a real server answer."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ragkv
from tests.conftest import ADMIN_KEY, LiveServer, free_port

TENANT_KEY = "sk-tenant-a"
DOCS = [
    {"id": "otters", "text": "Sea otters use rocks as tools to open shellfish on their bellies."},
    {"id": "comets", "text": "A comet is an icy body that releases gas when it nears the Sun."},
]


@pytest.fixture(scope="module")
def client(live_server: LiveServer):
    with ragkv.Client(live_server.url, api_key=TENANT_KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def admin(live_server: LiveServer):
    with ragkv.Client(live_server.url, api_key=ADMIN_KEY, max_retries=0) as client:
        yield client


def test_import_ragkv_loads_no_torch() -> None:
    code = (
        "import sys, ragkv; ragkv.Client; ragkv.AsyncClient; ragkv.NotFoundError; "
        "heavy = [m for m in ('torch', 'ragkv.engine', 'ragkv.server', 'transformers') "
        "if m in sys.modules]; print(json.dumps(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    assert issubclass(ragkv.NotFoundError, ragkv.RagkvError)


def test_collections_documents_search(client: ragkv.Client, tmp_path: Path) -> None:
    created = client.collections.create("sdk-docs")
    assert created.name == "sdk-docs" and created.num_documents == 0
    ingest = client.documents.add("sdk-docs", DOCS)
    assert ingest.document_ids == ["otters", "comets"] and ingest.num_chunks >= 2
    note = tmp_path / "volcano.md"
    note.write_text("# Volcanoes\n\nA volcano is an opening where molten rock reaches the surface.")
    uploaded = client.documents.add("sdk-docs", [note])
    assert len(uploaded.document_ids) == 1
    assert [c.name for c in client.collections.list()].count("sdk-docs") == 1
    assert client.collections.get("sdk-docs").num_documents == 3
    hits = client.search("sdk-docs", "animals using tools", top_k=2)
    assert hits[0].document_id == "otters" and hits[0].score > hits[1].score
    document = client.documents.get("sdk-docs", "comets")
    assert document["text"] == DOCS[1]["text"] and document["chunks"]
    assert client.documents.delete("sdk-docs", "comets")
    with pytest.raises(ragkv.NotFoundError) as info:
        client.documents.get("sdk-docs", "comets")
    assert info.value.status == 404
    vectors = client.embeddings(["one", "two"])
    assert len(vectors) == 2 and len(vectors[0]) == 384


def test_chat_rag_and_streams(client: ragkv.Client) -> None:
    if "sdk-docs" not in [c.name for c in client.collections.list()]:
        client.collections.create("sdk-docs")
        client.documents.add("sdk-docs", DOCS)
    result = client.chat("Say hello.", max_tokens=8, temperature=0, semantic_cache=False)
    assert result.text and result.usage.completion_tokens <= 8
    assert result.cache.semantic == "skipped" and result.cache_status in ("miss", "kv-hit")
    grounded = client.chat(
        "What do sea otters use rocks for?", documents=[DOCS[0]], max_tokens=16, temperature=0
    )
    assert [s.document_id for s in grounded.sources] == ["otters"]
    answer = client.rag("What is a comet?", collection="sdk-docs", top_k=1, max_tokens=16)
    assert answer.answer and len(answer.sources) == 1 and answer.usage.prompt_tokens > 0
    deltas = list(client.chat_stream("Count to three.", max_tokens=12, temperature=0))
    final = deltas[-1]
    assert final.final and final.usage.completion_tokens == 12 and final.cache is not None
    streamed = "".join(d.text for d in deltas)
    whole = client.chat("Count to three.", max_tokens=12, temperature=0, semantic_cache=False)
    assert streamed == whole.text


def test_cache_and_admin(client: ragkv.Client, admin: ragkv.Client) -> None:
    warmed = client.cache.warm([{"query": "What are your opening hours?", "response": "9 to 5."}])
    assert warmed[0]["stored"]
    lookup = client.cache.lookup("What are your opening hours?")
    assert lookup.hit and lookup.response == "9 to 5." and lookup.similarity > 0.99
    hit = client.chat("What are your opening hours?", temperature=0)
    assert hit.text == "9 to 5." and hit.cache.semantic_hit and hit.cache_status == "semantic-hit"
    stats = admin.admin.stats()
    assert {"semantic", "prefix", "chunk"} <= set(stats)
    policies = admin.admin.categories()
    assert policies["default_category"] in policies["categories"]
    assert admin.admin.feedback(hit.cache.entry_id)["dropped"]
    assert not client.cache.lookup("What are your opening hours?").hit
    assert "semantic" in admin.admin.flush(level="semantic", tenant="tenant-a")


def test_async_client(live_server: LiveServer) -> None:
    async def scenario():
        async with ragkv.AsyncClient(live_server.url, api_key=TENANT_KEY) as client:
            await client.collections.create("sdk-async")
            await client.documents.add("sdk-async", DOCS)
            hits = await client.search("sdk-async", "icy body near the Sun", top_k=1)
            result = await client.chat("Say yes.", max_tokens=4, temperature=0)
            deltas = [d async for d in client.chat_stream("Say no.", max_tokens=4)]
            answer = await client.rag("What is a comet?", collection="sdk-async", top_k=1,
                                      max_tokens=8)  # fmt: skip
            with pytest.raises(ragkv.NotFoundError):
                await client.collections.get("no-such-collection")
            assert await client.collections.delete("sdk-async")
            return hits, result, deltas, answer

    hits, result, deltas, answer = asyncio.run(scenario())
    assert hits[0].document_id == "comets"
    assert result.usage.completion_tokens <= 4 and deltas[-1].final
    assert answer.sources[0].document_id == "comets"


def test_errors_are_typed(live_server: LiveServer, client: ragkv.Client) -> None:
    with pytest.raises(ragkv.NotFoundError) as missing:
        client.search("no-such-collection", "anything")
    assert missing.value.status == 404 and "no-such-collection" in missing.value.message
    with pytest.raises(ragkv.BadRequestError) as bad:
        client.chat([{"role": "nobody", "content": "hi"}])
    assert bad.value.status in (400, 422)
    client.collections.create("sdk-twice")
    with pytest.raises(ragkv.ConflictError):
        client.collections.create("sdk-twice")
    stranger = ragkv.Client(live_server.url, api_key="sk-wrong")
    with stranger, pytest.raises(ragkv.AuthenticationError) as denied:
        stranger.collections.list()
    assert denied.value.status == 401
    with pytest.raises(ragkv.PermissionDeniedError):
        client.admin.stats()
    too_big = [{"id": "huge", "text": "x" * (9 * 1024 * 1024)}]  # over the 8 MiB body limit
    with pytest.raises(ragkv.PayloadTooLargeError) as large:
        client.documents.add("sdk-twice", too_big)
    assert large.value.status == 413
    nobody = ragkv.Client(f"http://127.0.0.1:{free_port()}", max_retries=1, timeout=5)
    with nobody, pytest.raises(ragkv.APIConnectionError):
        nobody.collections.list()


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}


def test_chat_stream_tool_calls(client: ragkv.Client) -> None:
    """A streamed answer that calls a tool: the pieces arrive as items, and the final item
    carries the whole call, equal to the one `chat` returns for the same request."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    named = {"type": "function", "function": {"name": "get_weather"}}
    params = {"tools": [WEATHER], "tool_choice": named, "max_tokens": 48, "temperature": 0}
    whole = client.chat(messages, semantic_cache=False, **params)
    deltas = list(client.chat_stream(messages, semantic_cache=False, **params))
    assert whole.finish_reason == "tool_calls" and len(whole.tool_calls) == 1
    assert any(d.tool_calls for d in deltas if not d.final)
    assert deltas[-2].finish_reason == "tool_calls"
    final = deltas[-1]
    assert final.final and len(final.tool_calls) == 1
    call, expected = final.tool_calls[0], whole.tool_calls[0]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = json.loads(call["function"]["arguments"])
    assert arguments == json.loads(expected["function"]["arguments"])
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")
    assert "".join(d.text for d in deltas) == ""


def test_chat_stream_reader_joins_pieces() -> None:
    """Two calls streamed interleaved in parts (as OpenAI may send them) come out whole, in
    index order, and a text-only stream ends with no calls."""
    from ragkv.sdk._http import StreamReader

    reader = StreamReader()
    first = {"index": 0, "id": "call_a", "type": "function",
             "function": {"name": "f", "arguments": '{"x": '}}  # fmt: skip
    second = {"index": 1, "id": "call_b", "type": "function",
              "function": {"name": "g", "arguments": "{}"}}  # fmt: skip
    rest = {"index": 0, "function": {"arguments": "1}"}}
    for pieces in ([first], [second], [rest]):
        item = reader.feed({"choices": [{"index": 0, "delta": {"tool_calls": pieces}}]})
        assert item is not None and item.tool_calls == pieces
    final = reader.feed({"choices": [], "usage": None})
    assert final.final
    assert [c["id"] for c in final.tool_calls] == ["call_a", "call_b"]
    assert [json.loads(c["function"]["arguments"]) for c in final.tool_calls] == [{"x": 1}, {}]
    text_only = StreamReader()
    assert text_only.feed({"choices": [{"index": 0, "delta": {"content": "hi"}}]}).text == "hi"
    assert text_only.feed({"choices": []}).tool_calls == []
