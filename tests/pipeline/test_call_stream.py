"""`required` tool calls stream as OpenAI streams them: `CallReader` announces each call once
its name is complete and hands out its arguments' characters as they are written, however
the text is split into deltas; the pipeline wraps them as pieces and returns a cut answer as
text."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from ragkv.engine.sampling import TokenLogprob
from ragkv.pipeline.answer import (
    Answer,
    CacheReport,
    CallPiece,
    Delta,
    ToolCall,
    Usage,
    joined_calls,
)
from ragkv.pipeline.call_stream import CallReader
from ragkv.pipeline.tools import ToolSpec, ToolUse, with_tool_calls
from tests.pipeline.test_tools import _deltas, written

TWO_CALLS = (
    '[{"name": "get_weather", "arguments": {"city": "Par\\"is {x}", "days": [1, {"a": "]}"}]}},'
    ' {"name": "get_time", "arguments": {}}]'
)
PRETTY = '[\n  {\n    "name": "get_time",\n    "arguments": {\n      "zone": "UTC"\n    }\n  }\n]'
WEATHER = ToolSpec("get_weather", "", {"type": "object"})
TIME = ToolSpec("get_time", "", {"type": "object"})


def read(pieces: list[str]) -> list[CallPiece]:
    reader = CallReader()
    return [piece for text in pieces for piece in reader.feed(text)]


def calls_of(pieces: list[CallPiece]) -> list[tuple[str, object]]:
    return [(call.name, json.loads(call.arguments)) for call in joined_calls(pieces)]


def test_every_split_of_the_text_gives_the_same_calls() -> None:
    expected = [("get_weather", {"city": 'Par"is {x}', "days": [1, {"a": "]}"}]}),
                ("get_time", {})]  # fmt: skip
    assert calls_of(read(list(TWO_CALLS))) == expected  # a character a delta
    for cut in range(len(TWO_CALLS) + 1):
        pieces = read([TWO_CALLS[:cut], TWO_CALLS[cut:]])
        assert calls_of(pieces) == expected, cut
        announced = [piece for piece in pieces if piece.call is not None]
        assert [(p.index, p.call.name) for p in announced] == [(0, "get_weather"), (1, "get_time")]
        assert len({p.call.id for p in announced}) == 2


def test_arguments_pass_through_as_they_are_written() -> None:
    reader = CallReader()
    assert reader.feed('[{"na') == []  # nothing to announce yet
    first = reader.feed('me": "get_time", "arg')  # the name is whole: the call is announced
    assert len(first) == 1 and first[0].call is not None and first[0].arguments == ""
    assert reader.feed('uments": {"zone"') == [CallPiece(0, '{"zone"')]
    assert reader.feed(': "UT') == [CallPiece(0, ': "UT')]
    assert reader.feed('C"}}]') == [CallPiece(0, 'C"}')]
    assert reader.whole_calls() == [ToolCall(first[0].call.id, "get_time", '{"zone": "UTC"}')]


def test_pretty_printed_calls_and_keys_in_either_order() -> None:
    assert calls_of(read([PRETTY])) == [("get_time", {"zone": "UTC"})]
    reversed_keys = '[{"arguments": {"zone": "CET"}, "name": "get_time"}]'
    for cut in range(len(reversed_keys) + 1):
        pieces = read([reversed_keys[:cut], reversed_keys[cut:]])
        assert calls_of(pieces) == [("get_time", {"zone": "CET"})]


def test_a_required_answer_streams_pieces_and_ends_with_tool_calls() -> None:
    use = ToolUse((WEATHER, TIME), "required")
    pinned: list[list[ToolCall]] = []

    async def pin(calls: list[ToolCall]) -> None:
        pinned.append(calls)

    text = [TWO_CALLS[i : i + 7] for i in range(0, len(TWO_CALLS), 7)]
    deltas = asyncio.run(_deltas(with_tool_calls(written(text, "stop"), use, pin)))
    pieces = [piece for delta in deltas for piece in delta.call_pieces]
    assert len([d for d in deltas if d.call_pieces]) > 4  # streamed, not one delta at the end
    assert all(delta.text == "" for delta in deltas)
    assert deltas[-1].finish_reason == "tool_calls"
    assert pinned == [joined_calls(pieces)]
    whole = asyncio.run(with_tool_calls(written(text, "stop"), use).collect())
    assert [c.name for c in whole.tool_calls] == ["get_weather", "get_time"]
    assert whole.text == "" and whole.finish_reason == "tool_calls"


def test_a_required_answer_cut_short_is_its_text_when_whole() -> None:
    use = ToolUse((WEATHER, TIME), "required")
    cut = ['[{"name": "get_weather", ', '"arguments": {"city": "Pa']
    deltas = asyncio.run(_deltas(with_tool_calls(written(cut, "length"), use)))
    assert deltas[-1].finish_reason == "length"
    whole = asyncio.run(with_tool_calls(written(cut, "length"), use).collect())
    assert whole.tool_calls == () and whole.text == "".join(cut)
    assert whole.finish_reason == "length"


def test_calls_streamed_whole_before_a_cut_still_pin_the_turn() -> None:
    use = ToolUse((WEATHER, TIME), "required")
    pinned: list[list[ToolCall]] = []

    async def pin(calls: list[ToolCall]) -> None:
        pinned.append(calls)

    cut = TWO_CALLS.index("get_time") + 3  # max_tokens ends the answer in the second call
    text = [TWO_CALLS[i : min(cut, i + 5)] for i in range(0, cut, 5)]
    deltas = asyncio.run(_deltas(with_tool_calls(written(text, "length"), use, pin)))
    assert deltas[-1].finish_reason == "length"
    (calls,) = pinned  # the whole first call: the client runs it and comes back
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": 'Par"is {x}', "days": [1, {"a": "]}"}]})
    ]
    inside = TWO_CALLS.index('"days"')  # cut inside the first call: nothing whole to run
    asyncio.run(_deltas(with_tool_calls(written([TWO_CALLS[:inside]], "length"), use, pin)))
    assert len(pinned) == 1
    # a non-stream answer cut short is text: no call reached the client, nothing to pin
    whole = asyncio.run(with_tool_calls(written(text, "length"), use, pin).collect())
    assert whole.tool_calls == () and len(pinned) == 1


def test_every_tokens_logprob_goes_out_even_before_the_call_is_announced() -> None:
    use = ToolUse((WEATHER, TIME), "required")
    text = ['[{"na', 'me": "get_ti', 'me", "arguments": {', "}}", "]"]
    marks = [TokenLogprob(index, -0.5) for index in range(len(text))]

    async def deltas(outer: Answer) -> AsyncGenerator[Delta, None]:
        for piece, mark in zip(text, marks, strict=True):
            yield Delta(piece, [mark], None)
        outer.finish(Usage(5, len(text)), CacheReport("auto", None), "stop")

    out = asyncio.run(_deltas(with_tool_calls(Answer("miss", deltas), use)))
    assert [mark for delta in out for mark in delta.logprobs] == marks
    assert out[-1].finish_reason == "tool_calls"
