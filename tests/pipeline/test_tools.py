"""Tool calling without the model: the output constraint per tool_choice, parsing what a model
wrote into calls (or text), and rendering tools and tool turns into the prompt."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import jsonschema
import pytest

from ragkv.engine.sequence import Constraint
from ragkv.pipeline.agents import ToolLatency
from ragkv.pipeline.answer import Answer, CacheReport, Delta, ToolCall, Usage
from ragkv.pipeline.tools import (
    ToolSpec,
    ToolUse,
    chat_inputs,
    fallback_messages,
    may_start_a_call,
    template_takes_tools,
    with_tool_calls,
)

WEATHER = ToolSpec(
    "get_weather",
    "Weather of a city",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
        "required": ["city"],
    },
)
TIME = ToolSpec(
    "get_time", "Local time", {"type": "object", "properties": {"tz": {"type": "string"}}}
)


def test_a_named_function_is_constrained_to_its_arguments_schema() -> None:
    use = ToolUse((WEATHER, TIME), "function", "get_weather")
    assert use.constraint() == Constraint("json_schema", json.dumps(WEATHER.schema))
    (call,) = use.parse(' {"city": "Oslo"}')
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Oslo"})
    assert call.id.startswith("call_")
    assert use.parse('{"city": "Os') is None  # cut off by max_tokens: comes back as text


def test_required_is_an_array_of_calls_each_valid_for_its_tool() -> None:
    use = ToolUse((WEATHER, TIME), "required", parallel=False)
    schema = json.loads(use.constraint().value)
    assert schema["maxItems"] == 1
    good = [{"name": "get_time", "arguments": {"tz": "UTC"}}]
    jsonschema.validate(good, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_time", "arguments": {"tz": 3}}], schema)
    (call,) = use.parse(json.dumps(good))
    assert call.name == "get_time"
    assert ToolUse((WEATHER,), "required").parse("[]") is None


def test_auto_parses_hermes_blocks_and_bare_objects_and_leaves_the_rest_as_text() -> None:
    use = ToolUse((WEATHER, TIME))
    assert use.constraint() is None
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>\n'
    text += '<tool_call>{"name": "get_time", "arguments": "{\\"tz\\": \\"CET\\"}"}</tool_call>'
    calls = use.parse(text)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[1].arguments) == {"tz": "CET"}
    assert use.parse('{"name": "get_time", "arguments": {}}')[0].name == "get_time"
    assert use.parse("It is sunny in Rome.") is None
    assert use.parse('{"name": "launch_rocket", "arguments": {}}') is None  # not offered
    assert use.parse('Sure! <tool_call>{"name": "get_time", "arguments": {}}</tool_call>') is None
    assert use.parse('<tool_call>{"name": "get_time", "arguments": [1]}</tool_call>') is None
    single = ToolUse((WEATHER, TIME), parallel=False)
    assert single.parse(text) is None  # two calls where one is allowed
    assert ToolUse((WEATHER,), "none").parse('{"name": "get_weather", "arguments": {}}') is None


def test_response_format_applies_when_no_call_is_forced() -> None:
    json_object = Constraint("json_object")
    assert ToolUse(response_format=json_object).constraint() == json_object
    assert ToolUse((WEATHER,), "auto", response_format=json_object).constraint() == json_object
    forced = ToolUse((WEATHER,), "function", "get_weather", response_format=json_object)
    assert forced.constraint().kind == "json_schema"


def test_streamed_text_is_held_only_while_it_could_be_a_call() -> None:
    assert may_start_a_call("")
    assert may_start_a_call("  <tool")
    assert may_start_a_call('<tool_call>{"na')
    assert may_start_a_call('{"name"')
    assert not may_start_a_call("The weather")
    assert not may_start_a_call("<b>")


def test_fallback_renders_tools_calls_and_results_as_hermes_text() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4 C, rain"},
    ]
    out = fallback_messages(messages, (WEATHER,))
    assert out[0]["role"] == "system" and out[0]["content"].startswith("Be brief.")
    assert '"name": "get_weather"' in out[0]["content"] and "<tools>" in out[0]["content"]
    call = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
    assert out[2] == {"role": "assistant", "content": f"<tool_call>\n{call}\n</tool_call>"}
    assert out[3] == {"role": "user", "content": "<tool_response>\n4 C, rain\n</tool_response>"}


def test_templates_that_render_tools_get_them_natively() -> None:
    native = (
        "{% if tools %}{{ tools | tojson }}{% endif %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert template_takes_tools(native)
    assert not template_takes_tools("{% for m in messages %}{{ m.content }}{% endfor %}")
    messages = [{"role": "user", "content": "hi"}]
    assert chat_inputs(messages, ToolUse(), native) == (messages, None)
    rendered, tools = chat_inputs(messages, ToolUse((WEATHER,)), native)
    assert rendered == messages and tools == [WEATHER.to_json()]
    call = {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    turn = [*messages, {"role": "assistant", "content": "", "tool_calls": [call]}]
    rendered, _ = chat_inputs(turn, ToolUse((WEATHER,)), native)
    assert (
        rendered[1]["tool_calls"][0]["function"]["arguments"] == {}
    )  # objects, as templates expect
    plain, tools = chat_inputs(turn, ToolUse(), "{{ messages }}")
    assert tools is None and plain[1]["content"].startswith("<tool_call>")


def test_a_text_only_last_turn_keeps_the_conversation_as_its_prefix() -> None:
    """`tool_choice: none` still renders the tools, so an agent's last turn (text only)
    starts with the tokens of its tool-calling turns and their cached KV serves it."""
    plain = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Oslo?"}]
    call = {"id": "c", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}  # fmt: skip
    back = [*messages, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": "4 C"}]  # fmt: skip
    first, _ = chat_inputs(messages, ToolUse((WEATHER,), "required"), plain)
    last, _ = chat_inputs(back, ToolUse((WEATHER,), "none"), plain)
    assert last[: len(first)] == first and "<tools>" in last[0]["content"]
    assert not ToolUse((WEATHER,), "none").calls_possible


def test_tool_round_trips_predict_the_pin_ttl() -> None:
    now = [0.0]
    latency = ToolLatency(default_s=30.0, min_s=2.0, max_s=100.0, clock=lambda: now[0])
    assert latency.ttl("t", ["search"]) == 30.0  # nothing seen yet
    for seconds in (4.0, 6.0, 5.0, 8.0):
        call = ToolCall.new("search", {})
        latency.issued("t", [call])
        now[0] += seconds
        latency.returned("t", [{"role": "tool", "tool_call_id": call.id, "content": "ok"}])
    assert latency.ttl("t", ["search"]) == 8.0 * 1.5  # the 90th percentile, with a margin
    assert latency.ttl("other-tenant", ["search"]) == 30.0  # per tenant
    fast = ToolCall.new("calc", {})
    for _ in range(3):
        latency.issued("t", [fast])
        now[0] += 0.1
        latency.returned("t", [{"role": "tool", "tool_call_id": fast.id}])
    assert latency.ttl("t", ["calc"]) == 2.0  # clamped to the minimum
    assert latency.ttl("t", ["calc", "search"]) == 12.0  # the slowest tool of the turn
    assert latency.stats()["t/search"]["round_trips"] == 4
    # due back by the 90th percentile itself; a tool not seen enough: the tenant's, any tool
    # (4, 5, 6, 8 s and three 0.1 s trips: the 90th percentile of the seven is 8 s)
    assert latency.due("t", ["search"]) == 8.0
    assert latency.due("t", ["calc", "search"]) == 8.0
    assert latency.due("t", ["calc"]) == 2.0  # clamped to the minimum
    assert latency.due("t", ["search", "new_tool"]) == 8.0
    assert latency.due("t", ["new_tool"]) == 8.0
    assert latency.ttl("t", ["new_tool"]) == 30.0  # the TTL still waits for its own trips
    assert latency.due("other-tenant", ["search"]) is None  # nothing seen of that tenant


def test_a_first_call_of_a_tool_is_due_by_the_tenants_round_trips() -> None:
    now = [0.0]
    latency = ToolLatency(default_s=60.0, min_s=1.0, max_s=100.0, clock=lambda: now[0])
    for index, seconds in enumerate((20.0, 30.0)):
        call = ToolCall.new(f"tool{index}", {})
        latency.issued("t", [call])
        now[0] += seconds
        latency.returned("t", [{"role": "tool", "tool_call_id": call.id}])
    assert latency.due("t", ["tool0"]) is None  # two round trips: not enough of anything
    call = ToolCall.new("tool2", {})
    latency.issued("t", [call])
    now[0] += 10.0
    latency.returned("t", [{"role": "tool", "tool_call_id": call.id}])
    assert latency.due("t", ["tool0"]) == 30.0  # three of the tenant's: 10, 20, 30 s


def test_only_tools_or_a_response_format_key_the_semantic_cache() -> None:
    from ragkv.engine.sampling import SamplingParams
    from ragkv.pipeline.request import ChatRequest
    from ragkv.pipeline.semantic import keyed_by_context

    messages = [{"role": "user", "content": "hi"}]

    def key(use: ToolUse) -> list:
        return keyed_by_context(ChatRequest("t", messages, SamplingParams(), tools=use))

    assert key(ToolUse()) == key(ToolUse(choice="none")) == messages
    with_tools, with_format = (
        key(ToolUse((WEATHER,))),
        key(ToolUse(response_format=Constraint("json_object"))),
    )
    assert with_tools[-1] == with_format[-1] == messages[0]
    assert with_tools[0]["content"].startswith("ragkv-tools:") and with_tools[0] != with_format[0]


def written(pieces: list[str], finish_reason: str) -> Answer:
    """An answer that writes `pieces` (as the engine's deltas would come) and ends."""

    async def deltas(outer: Answer) -> AsyncGenerator[Delta, None]:
        for piece in pieces:
            yield Delta(piece, [], None)
        outer.finish(Usage(5, len(pieces)), CacheReport("auto", None), finish_reason)
        yield Delta("", [], finish_reason)

    return Answer("miss", deltas)


async def _deltas(answer: Answer) -> list[Delta]:
    return [delta async for delta in answer]


def test_a_named_call_streams_one_piece_per_delta_the_model_writes() -> None:
    use = ToolUse((WEATHER,), "function", "get_weather")
    pinned: list[list[ToolCall]] = []

    async def pin(calls: list[ToolCall]) -> None:
        pinned.append(calls)

    pieces = ['{"city": ', '"Paris"', ', "unit": "c"}']
    deltas = asyncio.run(_deltas(with_tool_calls(written(pieces, "stop"), use, pin)))
    streamed = [piece for delta in deltas for piece in delta.call_pieces]
    assert [piece.arguments for piece in streamed] == pieces
    first = streamed[0].call
    assert first is not None and first.name == "get_weather"
    assert all(piece.call is None and piece.index == 0 for piece in streamed[1:])
    assert deltas[-1].finish_reason == "tool_calls"
    assert pinned == [[ToolCall(first.id, "get_weather", "".join(pieces))]]
    whole = asyncio.run(with_tool_calls(written(pieces, "stop"), use).collect())
    (call,) = whole.tool_calls
    assert (call.name, json.loads(call.arguments)) == (
        "get_weather",
        {"city": "Paris", "unit": "c"},
    )
    assert whole.text == "" and whole.finish_reason == "tool_calls"


def test_a_named_call_cut_short_is_text_when_whole_and_ends_with_length() -> None:
    use = ToolUse((WEATHER,), "function", "get_weather")
    deltas = asyncio.run(_deltas(with_tool_calls(written(['{"city": '], "length"), use)))
    assert deltas[-1].finish_reason == "length"
    whole = asyncio.run(with_tool_calls(written(['{"city": '], "length"), use).collect())
    assert whole.tool_calls == () and whole.text == '{"city": ' and whole.finish_reason == "length"


def test_strict_follows_the_tools_and_is_the_default() -> None:
    loose = ToolSpec("loose", "", {"type": "object"}, strict=False)
    assert ToolUse((WEATHER,), "function", "get_weather").constraint().strict is True
    assert ToolUse((loose,), "function", "loose").constraint().strict is False
    assert ToolUse((loose, WEATHER), "required").constraint().strict is True  # one grammar
    assert ToolUse((loose,), "required").constraint().strict is False
