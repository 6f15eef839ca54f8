"""Tool calling and structured output through a live server with the real `openai` client:
named and required tool calls that always validate (stream and not), an agent loop whose
second turn reuses the first turn's KV through a tool pin, response_format that always
parses, and unsupported fields refused by name."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import ADMIN_KEY, LiveServer

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

SCHEMAS = {
    "nested": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
            },
        },
        "required": ["city", "where"],
    },
    "enum": {
        "type": "object",
        "properties": {"unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["unit"],
    },
    "array": {
        "type": "object",
        "properties": {
            "tags": {
                "type": "array",
                "items": {"type": "string", "maxLength": 12},
                "minItems": 1,
                "maxItems": 3,
            }
        },
        "required": ["tags"],
    },
    "numbers": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 1, "maximum": 9},
            "ratio": {"type": "number"},
        },
        "required": ["count", "ratio"],
    },
    "flags": {
        "type": "object",
        "properties": {"urgent": {"type": "boolean"}, "note": {"type": ["string", "null"]}},
        "required": ["urgent"],
    },
}


def tool(name: str, schema: dict) -> dict:
    return {
        "type": "function",
        "function": {"name": name, "description": name, "parameters": schema},
    }


@pytest.fixture(scope="module")
def client(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-tenant-a", max_retries=0)


def ask(client: openai.OpenAI, content: str, **fields):
    return client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": content}],
        temperature=0,
        **{"max_tokens": 96, **fields},
    )


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_a_named_tool_call_validates_against_its_schema(client, name) -> None:
    schema = SCHEMAS[name]
    response = ask(
        client,
        f"Call the {name} tool for Paris.",
        tools=[tool(name, schema), tool("other", {"type": "object"})],
        tool_choice={"type": "function", "function": {"name": name}},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == name and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), schema)


def streamed_call(client, content: str, **fields) -> tuple[list, list]:
    """The tool-call deltas and finish reasons of a streamed chat completion."""
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": content}],
        temperature=0,
        stream=True,
        **fields,
    )
    deltas, reasons = [], []
    for chunk in stream:
        if chunk.choices:
            reasons.append(chunk.choices[0].finish_reason)
            deltas.extend(chunk.choices[0].delta.tool_calls or [])
    return deltas, reasons


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_a_named_call_streams_its_arguments_as_the_model_writes_them(client, name) -> None:
    schema = SCHEMAS[name]
    fields = {"tools": [tool(name, schema)], "max_tokens": 96,
              "tool_choice": {"type": "function", "function": {"name": name}}}  # fmt: skip
    whole = ask(client, f"Call the {name} tool for Paris.", **fields).choices[0]
    deltas, reasons = streamed_call(client, f"Call the {name} tool for Paris.", **fields)
    assert reasons[-1] == "tool_calls"
    first, rest = deltas[0], deltas[1:]
    assert first.id.startswith("call_") and first.function.name == name and first.type == "function"
    assert all(d.index == 0 and d.id is None and d.function.name is None for d in rest)
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert arguments == whole.message.tool_calls[0].function.arguments  # greedy: the same call
    jsonschema.validate(json.loads(arguments), schema)


def test_a_named_call_cut_by_max_tokens_ends_with_length(client) -> None:
    # Not from the semantic cache: the same call, finished, may be there (max_tokens is not
    # part of its key).
    fields = {"tools": [tool("nested", SCHEMAS["nested"])], "max_tokens": 3,
              "tool_choice": {"type": "function", "function": {"name": "nested"}},
              "extra_body": {"ragkv": {"semantic_cache": False}}}  # fmt: skip
    whole = ask(client, "Call the nested tool for Paris.", **fields).choices[0]
    assert whole.finish_reason == "length" and not whole.message.tool_calls
    assert whole.message.content  # the unfinished arguments come back as text, never as a call
    deltas, reasons = streamed_call(client, "Call the nested tool for Paris.", **fields)
    assert reasons[-1] == "length"
    assert "".join(d.function.arguments or "" for d in deltas) == whole.message.content


def test_a_required_call_streams_its_arguments_as_the_model_writes_them(client) -> None:
    schema = SCHEMAS["nested"]
    fields = {"tools": [tool("pick_unit", SCHEMAS["enum"]), tool("nested", schema)],
              "tool_choice": "required", "max_tokens": 96}  # fmt: skip
    question = "Call the nested tool for Paris."
    whole = ask(client, question, **fields).choices[0]
    deltas, reasons = streamed_call(client, question, **fields)
    assert reasons[-1] == "tool_calls"
    first = deltas[0]
    assert first.index == 0 and first.id.startswith("call_") and first.type == "function"
    assert len(deltas) >= 2  # the arguments came in pieces, not as one delta at the end
    rest = [d for d in deltas if d.index == 0][1:]
    assert all(d.id is None and d.function.name is None for d in rest)
    calls = {}
    for delta in deltas:
        entry = calls.setdefault(delta.index, {"name": "", "arguments": ""})
        entry["name"] += delta.function.name or ""
        entry["arguments"] += delta.function.arguments or ""
    expected = [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert [(c["name"], c["arguments"]) for c in calls.values()] == expected  # greedy: same
    for call in calls.values():
        arguments = json.loads(call["arguments"])
        jsonschema.validate(arguments, schema if call["name"] == "nested" else SCHEMAS["enum"])


def test_response_format_json_schema_always_parses_and_validates(client) -> None:
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "maxLength": 40},
            "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["answer", "confidence"],
        "additionalProperties": False,
    }
    topics = ["the sky", "water", "Mars", "a violin", "bread", "the moon", "snow", "a volcano",
              "copper", "an owl", "tea", "glass", "a river", "salt", "a comet", "wool",
              "a bridge", "honey", "thunder", "a maple tree"]  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "fact", "schema": schema}}

    def one(topic: str) -> Any:
        return ask(client, f"One fact about {topic}, as JSON.", response_format=fmt)

    with ThreadPoolExecutor(len(topics)) as pool:  # at once: the engine batches them
        responses = list(pool.map(one, topics))
    for response in responses:
        assert response.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_response_format_json_object_always_parses(client) -> None:
    for city in ("Paris", "Tokyo", "Cairo"):
        response = ask(
            client,
            f"Return a JSON object with the keys city and country for {city}.",
            response_format={"type": "json_object"},
        )
        assert response.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_agent_loop_reuses_the_first_turn_through_a_tool_pin(client, live_server) -> None:
    weather = tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}},
                                   "required": ["city"]})  # fmt: skip
    messages = [{"role": "user", "content": "What is the weather in Lisbon right now?"}]
    # Earlier tests' agents never came back: their pins may hold the whole share, due back
    # sooner or later than this one depending on how long those tests took. Start empty.
    flushed = httpx.post(
        f"{live_server.url}/admin/cache/flush", json={"level": "prefix"}, headers=ADMIN
    )
    assert flushed.status_code == 200 and pins(live_server)["active"] == 0
    before = pins(live_server)
    first = client.chat.completions.create(
        model="default", messages=messages, tools=[weather], tool_choice="required",
        parallel_tool_calls=False, temperature=0, max_tokens=48,
    )  # fmt: skip
    (call,) = first.choices[0].message.tool_calls
    assert pins(live_server)["made"] == before["made"] + 1
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "21 C, sunny"})
    second = client.chat.completions.create(
        model="default", messages=messages, tools=[weather], temperature=0, max_tokens=24
    )
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens // 16 * 16
    assert pins(live_server)["hit"] == before["hit"] + 1


def pins(live_server: LiveServer) -> dict:
    stats = httpx.get(f"{live_server.url}/admin/cache/stats", headers=ADMIN).json()
    return stats["prefix"]["tool_pins"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("audio", {"voice": "alloy"}), ("modalities", ["audio"]), ("functions", []), ("foo", 1)],
)
def test_unsupported_fields_are_refused_by_name(live_server, field, value) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], field: value}
    response = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-tenant-a"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and field in error["message"]


def test_n_above_one_and_bad_tool_choices_are_400(live_server) -> None:
    def post(**fields):
        body = {"messages": [{"role": "user", "content": "hi"}], **fields}
        return httpx.post(
            f"{live_server.url}/v1/chat/completions",
            json=body,
            headers={"Authorization": "Bearer sk-tenant-a"},
        )

    response = post(n=2)
    assert response.status_code == 422 and response.json()["error"]["param"] == "n"
    named = {"type": "function", "function": {"name": "missing"}}
    response = post(tools=[tool("real", {"type": "object"})], tool_choice=named)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"
    assert post(tool_choice="required").status_code == 400
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    response = post(response_format=bad)
    assert response.status_code == 400 and response.json()["error"]["param"] == "response_format"


def test_langchain_bind_tools_gets_tool_calls(live_server: LiveServer) -> None:
    pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool as lc_tool
    from langchain_openai import ChatOpenAI

    @lc_tool
    def get_weather(city: str) -> str:
        """The current weather of a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(
        base_url=f"{live_server.url}/v1",
        api_key="sk-tenant-a",
        model="default",
        temperature=0,
        max_tokens=48,
        max_retries=0,
    )
    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Oslo?"
    )
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)
    assert get_weather.invoke(call["args"]).startswith("sunny in")


def test_auto_text_answers_stream_through(client) -> None:
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Say hello to Ana in one short sentence."}],
        tools=[tool("get_weather", {"type": "object"})],
        temperature=0,
        max_tokens=16,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text and not any(c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert sum(1 for c in chunks if c.choices[0].delta.content) > 1  # streamed, not held


def test_the_semantic_cache_keys_tools_and_response_format(client) -> None:
    question = [{"role": "user", "content": "What is the capital city of Peru?"}]

    def status(**fields) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=question, temperature=0, max_tokens=12, **fields
        )
        return raw.headers["x-ragkv-cache"]

    assert status() != "semantic-hit"
    assert status() == "semantic-hit"  # stored without tools, served without tools
    assert status(response_format={"type": "json_object"}) != "semantic-hit"
    weather = tool("get_weather", {"type": "object"})
    assert status(tools=[weather], tool_choice="none") != "semantic-hit"
