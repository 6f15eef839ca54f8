"""Streaming constrained tool calls as OpenAI does: id, type and name on a call's first
delta, then its JSON arguments in pieces as the model writes them.

Under `tool_choice` a named function, or `required`, the grammar shapes every token of the
answer, so it can stream before it is complete:
- a named function: the whole output is the arguments object;
- `required`: a JSON array of `{"name": ..., "arguments": {...}}` objects. `CallReader`
  reads it incrementally: a call is announced (id, name, empty arguments, as OpenAI's first
  delta) once its name is complete, and its arguments' characters pass through as they come
  (whitespace around the value left out; the pieces concatenated are the arguments' JSON).

The finish reason is `tool_calls` when the calls parse, else the engine's (`length` when
max_tokens cut them short); a whole (non-stream) answer then returns what was written as
text (`Answer.collect`), never a malformed call. A stream cut short has already handed out
the calls written before the cut: those whole ones still pin the turn's KV (`on_calls`).
`auto` is not streamed this way: the model may be writing prose, and a call that fails to
parse must come back as text, so it is held until it parses (`tools.with_tool_calls`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable

from ragkv.engine.sampling import TokenLogprob
from ragkv.pipeline.answer import Answer, CallPiece, Delta, ToolCall

OnCalls = Callable[[list[ToolCall]], Awaitable[None]] | None


class CallReader:
    """Incremental reader of a `required` answer `[{"name": ..., "arguments": ...}, ...]`:
    `feed(text)` returns the call pieces that text completes (see the module doc). Keys may
    come in either order: arguments written before the name wait for it."""

    def __init__(self) -> None:
        self.depth = 0  # of arrays and objects, outside the arguments value
        self.in_string = False
        self.escaped = False
        self.chars: list[str] = []  # the string being read (a key or the name)
        self.after_colon = False  # in a call object: reading a value, not a key
        self.key: str | None = None
        self.index = -1  # the call being read
        self.name: str | None = None
        self.calls: list[ToolCall] = []  # announced calls (arguments empty), in order
        self.pending: list[str] = []  # argument characters not handed out yet
        self.arguments: list[list[str]] = []  # every call's argument characters
        self.in_arguments = False
        self.value_depth = 0  # nesting inside the arguments value
        self.closed = 0  # calls whose object has closed (the first `closed` of `calls`)

    def feed(self, text: str) -> list[CallPiece]:
        """Read `text`; the pieces it completes, in order."""
        pieces: list[CallPiece] = []
        for char in text:
            if self.in_arguments:
                self._argument_char(char, pieces)
            else:
                self._structure_char(char)
        self._flush(pieces)
        return pieces

    def whole_calls(self) -> list[ToolCall]:
        """The announced calls with their arguments as read so far."""
        return [
            ToolCall(call.id, call.name, "".join(self.arguments[index]))
            for index, call in enumerate(self.calls)
        ]

    def closed_calls(self) -> list[ToolCall]:
        """The calls written whole so far (their object closed), with their arguments."""
        return self.whole_calls()[: self.closed]

    def _string_char(self, char: str) -> bool:
        """Advance through a JSON string; True when `char` is its closing quote."""
        if self.escaped:
            self.escaped = False
        elif char == "\\":
            self.escaped = True
        elif char == '"':
            self.in_string = False
            return True
        return False

    def _argument_char(self, char: str, pieces: list[CallPiece]) -> None:
        if self.in_string:
            self._string_char(char)
        elif char == '"':
            self.in_string = True
        elif char in "[{":
            self.value_depth += 1
        elif char in "]}" and self.value_depth > 0:
            self.value_depth -= 1
        elif char in ",}" and self.value_depth == 0:  # the value ended: back in the call
            self.in_arguments = False
            self._flush(pieces)
            self._structure_char(char)
            return
        elif char.isspace() and self.value_depth == 0:
            return  # around the value, not part of it
        self.pending.append(char)
        self.arguments[self.index].append(char)

    def _structure_char(self, char: str) -> None:
        if self.in_string:
            if not self._string_char(char):
                self.chars.append(char)
            elif self.depth == 2:  # a key or a value of the call object ended
                self._string_ended(json.loads('"' + "".join(self.chars) + '"'))
        elif char == '"':
            self.in_string, self.chars = True, []
        elif char in "[{":
            self.depth += 1
            if self.depth == 2:  # a call object begins
                self.index += 1
                self.name, self.key, self.after_colon = None, None, False
                self.arguments.append([])
        elif char in "]}":
            self.depth -= 1
            if self.depth == 1 and len(self.calls) > self.index >= 0:
                self.closed = self.index + 1
        elif char == ":" and self.depth == 2:
            self.after_colon = True
            if self.key == "arguments":
                self.in_arguments, self.value_depth = True, 0
        elif char == "," and self.depth == 2:
            self.after_colon = False

    def _string_ended(self, value: str) -> None:
        if not self.after_colon:
            self.key = value
        elif self.key == "name":
            self.name = value

    def _flush(self, pieces: list[CallPiece]) -> None:
        """Hand out pending argument characters once the call's name is known."""
        if self.name is None or self.index < 0:
            return
        if len(self.calls) <= self.index:  # announce the call with what it has so far
            call = ToolCall.new(self.name, "")
            self.calls.append(call)
            pieces.append(CallPiece(self.index, "".join(self.pending), call))
        elif self.pending:
            pieces.append(CallPiece(self.index, "".join(self.pending)))
        self.pending = []


def streamed_calls(
    answer: Answer, function: str | None, parse: Callable[[str], bool], on_calls: OnCalls
) -> Callable[[Answer], AsyncGenerator[Delta, None]]:
    """The deltas of a constrained call answer: `function` named (the output is its
    arguments) or None (`required`: read by `CallReader`). `parse(text)`: whether the whole
    output is well-formed calls."""

    async def deltas(outer: Answer) -> AsyncGenerator[Delta, None]:
        reader = None if function is not None else CallReader()
        named = ToolCall.new(function or "", "")
        written: list[str] = []
        logprobs: list[TokenLogprob] = []  # of tokens no piece went out with yet
        try:
            async for delta in answer:
                if reader is not None:
                    pieces = reader.feed(delta.text)
                else:
                    pieces = [CallPiece(0, delta.text, None if written else named)]
                written.append(delta.text)
                logprobs.extend(delta.logprobs)
                pieces = [p for p in pieces if p.arguments or p.call is not None]
                if pieces:
                    yield Delta("", logprobs, None, (), tuple(pieces))
                    logprobs = []
            text = "".join(written)
            calls = None
            if parse(text):
                whole = [ToolCall(named.id, named.name, text)]
                calls = reader.whole_calls() if reader is not None else whole
            # A stream hands out the calls written whole before max_tokens cut it (finish
            # reason `length`): the agent runs them and comes back. A whole answer returns
            # a cut one as text (`Answer.collect`): no call went out.
            streamed = reader is not None and not outer.collected
            sent = calls or (reader.closed_calls() if streamed else [])
            if sent and on_calls is not None:
                await on_calls(sent)
            reason = "tool_calls" if calls else answer.finish_reason
            outer.call_text = text
            if answer.usage is not None and answer.report is not None:
                outer.finish(answer.usage, answer.report, reason)
            yield Delta("", logprobs, reason)
        finally:
            await answer.aclose()

    return deltas
