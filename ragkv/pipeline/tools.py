"""OpenAI tool calling and structured output: prompt rendering, the output constraint, and
parsing what the model wrote back into `tool_calls`.

Tools are rendered through the model's own chat template when it takes `tools` (its source
mentions them); otherwise through a Hermes-style system block (below), with assistant tool
calls written as `<tool_call>{json}</tool_call>` and tool results as `<tool_response>`
blocks in a user turn. The output constraint (grammar-constrained decoding in the engine):

- `tool_choice` a named function: the output is that function's arguments, constrained to its
  JSON schema, so the call always parses and validates;
- `required`: a JSON array of `{"name", "arguments"}` calls (one when `parallel_tool_calls` is
  false), each constrained to its tool's schema;
- `auto`: unconstrained; a Hermes `<tool_call>` block or a bare `{"name", "arguments"}`
  object naming a known tool becomes a call, anything else (a parse failure included) text;
- `none`: the tools still rendered (the prompt prefix stays the same), text only.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ragkv.engine.sequence import Constraint
from ragkv.pipeline.answer import Answer, Delta, ToolCall
from ragkv.pipeline.call_stream import streamed_calls

FALLBACK_SYSTEM = (
    "You are a function calling AI model. You may call one or more functions to assist with "
    "the user query. Here are the available tools: <tools>\n{tools}\n</tools>\n"
    "For each function call, return a json object with the function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolSpec:
    """One function tool: its name, description and JSON-schema parameters."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # OpenAI's `function.strict`; None: strict (see `constraint`)

    @property
    def schema(self) -> dict[str, Any]:
        """The arguments' JSON schema (any object when the tool declares none)."""
        return self.parameters or {"type": "object"}

    def to_json(self) -> dict[str, Any]:
        """The OpenAI tool object, as chat templates take it."""
        function = {"name": self.name, "description": self.description, "parameters": self.schema}
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolUse:
    """The tools of a chat request and how the model may use them.

    `choice`: `none`, `auto`, `required` or `function` (then `function` names it);
    `response_format`: the structured-output constraint for text answers, or None.
    """

    tools: tuple[ToolSpec, ...] = ()
    choice: str = "auto"
    function: str | None = None
    parallel: bool = True
    response_format: Constraint | None = None

    @property
    def shapes_output(self) -> bool:
        """Whether tools or a response format are in play (they key the semantic cache)."""
        return bool(self.tools) or self.response_format is not None

    @property
    def calls_possible(self) -> bool:
        """Whether the answer may be tool calls (tools given and not `none`)."""
        return bool(self.tools) and self.choice != "none"

    def tool(self, name: str) -> ToolSpec | None:
        """The tool called `name`, if offered."""
        return next((t for t in self.tools if t.name == name), None)

    def constraint(self) -> Constraint | None:
        """The grammar the output must follow (see the module docstring)."""
        if self.choice == "function":
            tool = self.tool(self.function or "")
            schema = json.dumps(tool.schema if tool else {})
            strict = tool is None or tool.strict is not False
            return Constraint("json_schema", schema, strict=strict)
        if self.choice == "required" and self.tools:
            calls = [_call_schema(tool) for tool in self.tools]
            one = calls[0] if len(calls) == 1 else {"anyOf": calls}
            schema = {"type": "array", "items": one, "minItems": 1}
            if not self.parallel:
                schema["maxItems"] = 1
            # One grammar for all calls: strict unless every tool opts out.
            strict = not all(tool.strict is False for tool in self.tools)
            return Constraint("json_schema", json.dumps(schema), strict=strict)
        return self.response_format

    def parse(self, text: str) -> list[ToolCall] | None:
        """The calls in `text`, or None when it is not (a well-formed) tool call."""
        if not self.calls_possible:
            return None
        if self.choice == "function":
            value = _json(text)
            return [ToolCall.new(self.function or "", text.strip())] if value is not None else None
        if self.choice == "required":
            value = _json(text)
            return self._calls(value if isinstance(value, list) else [value])
        blocks = _BLOCK.findall(text)
        if blocks:
            if text[: text.find("<tool_call>")].strip():
                return None  # prose before the call: the model answered in text
            return self._calls([_json(block) for block in blocks])
        return self._calls([_json(text)])

    def _calls(self, values: list[Any]) -> list[ToolCall] | None:
        """Calls of `{"name", "arguments"}` objects naming offered tools; None if any is not."""
        calls = []
        for value in values:
            if not isinstance(value, dict) or self.tool(str(value.get("name"))) is None:
                return None
            arguments = value.get("arguments", value.get("parameters", {}))
            if isinstance(arguments, str):
                arguments = _json(arguments)
            if not isinstance(arguments, dict):
                return None
            calls.append(ToolCall.new(str(value["name"]), arguments))
        if not calls or (len(calls) > 1 and not self.parallel):
            return None
        return calls


def may_start_a_call(text: str) -> bool:
    """Whether streamed text so far could still become a tool call (`auto`): it starts, after
    whitespace, with `{` or with (a prefix of) `<tool_call>`."""
    head = text.lstrip()
    return not head or head.startswith("{") or "<tool_call>".startswith(head[:11])


def template_takes_tools(chat_template: str | None) -> bool:
    """Whether a chat template renders `tools` itself (its source uses the variable)."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template or "") is not None


def chat_inputs(
    messages: list[dict[str, Any]], use: ToolUse, chat_template: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and `tools` to render: unchanged without tools or tool turns; the
    template's own tool rendering when it has one (arguments as objects, as templates
    expect); else the Hermes fallback (`fallback_messages`).

    Every tool offered is shown, under `tool_choice: none` too (as vLLM does by default): an
    agent's last, text-only turn then starts with the same tokens as its tool-calling turns,
    so their cached KV serves it; `none` only means the output is unconstrained and never
    parsed into calls."""
    tools = use.tools
    history = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if not tools and not history:
        return messages, None
    if not template_takes_tools(chat_template):
        return fallback_messages(messages, tools), None
    native = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            calls = [
                {**call, "function": {**call["function"], "arguments": _arguments(call)}}
                for call in calls
            ]
            message = {**message, "tool_calls": calls}
        native.append(message)
    return native, [tool.to_json() for tool in tools] or None


def _arguments(call: dict[str, Any]) -> Any:
    """A call's arguments as a JSON value (the string parsed; kept when it does not parse)."""
    arguments = call.get("function", {}).get("arguments", "{}")
    parsed = _json(arguments) if isinstance(arguments, str) else arguments
    return parsed if parsed is not None else arguments


def fallback_messages(
    messages: list[dict[str, Any]], tools: tuple[ToolSpec, ...]
) -> list[dict[str, Any]]:
    """Messages for a template that knows no tools: the tools in a system block (merged into
    the first system message), tool calls and tool results written as Hermes text."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            blocks = [_call_text(call) for call in message["tool_calls"]]
            out.append(
                {"role": "assistant", "content": "\n".join(filter(None, [content, *blocks]))}
            )
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            out.append({"role": role, "content": content})
    if tools:
        block = FALLBACK_SYSTEM.format(tools="\n".join(json.dumps(t.to_json()) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{block}"}
        else:
            out.insert(0, {"role": "system", "content": block})
    return out


def _call_text(call: dict[str, Any]) -> str:
    """An assistant's OpenAI tool call as the Hermes block a model would have written."""
    body = {"name": (call.get("function") or {}).get("name"), "arguments": _arguments(call)}
    return f"<tool_call>\n{json.dumps(body)}\n</tool_call>"


def _call_schema(tool: ToolSpec) -> dict[str, Any]:
    """JSON schema of one `{"name", "arguments"}` call of `tool`."""
    return {
        "type": "object",
        "properties": {"name": {"enum": [tool.name]}, "arguments": tool.schema},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _json(text: str) -> Any:
    """`text` parsed as JSON, or None."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None


def with_tool_calls(
    answer: Answer,
    use: ToolUse,
    on_calls: Callable[[list[ToolCall]], Awaitable[None]] | None = None,
) -> Answer:
    """`answer` with its tool calls parsed. A constrained call (a named function or
    `required`) streams in pieces (`call_stream.py`). Under `auto`, text that is (or may
    still become) a call is held back; at the end it comes out as one delta with `tool_calls`
    and finish reason `tool_calls`, or, when it does not parse, as the text it was.
    `on_calls` is awaited with the calls before the last delta (the pipeline pins the turn's
    KV there)."""

    if use.choice in ("function", "required") and use.calls_possible:
        function = use.function if use.choice == "function" else None

        def well_formed(text: str) -> bool:
            return use.parse(text) is not None

        return Answer(answer.cache_status, streamed_calls(answer, function, well_formed, on_calls))

    async def deltas(outer: Answer) -> AsyncGenerator[Delta, None]:
        held: list[str] = []
        logprobs: list[Any] = []
        passing = False  # the text can no longer be a call: stream it through
        try:
            async for delta in answer:
                if passing:
                    yield delta
                    continue
                held.append(delta.text)
                logprobs.extend(delta.logprobs)
                text = "".join(held)
                if use.choice == "auto" and not may_start_a_call(text):
                    passing = True
                    yield Delta(text, logprobs, delta.finish_reason)
            # The inner answer has ended (its usage and report are set once it is exhausted).
            if passing:
                if answer.usage is not None and answer.report is not None:
                    outer.finish(answer.usage, answer.report, answer.finish_reason)
                return
            text = "".join(held)
            calls = use.parse(text)
            reason = "tool_calls" if calls else answer.finish_reason
            if calls and on_calls is not None:
                await on_calls(calls)
            if answer.usage is not None and answer.report is not None:
                outer.finish(answer.usage, answer.report, reason)
            yield Delta("" if calls else text, logprobs, reason, tuple(calls or ()))
        finally:
            await answer.aclose()

    return Answer(answer.cache_status, deltas)
