"""An agent loop over the SDK: the model calls a tool, the tool runs, the result goes back.

While the tool runs, ragkv pins the conversation's KV on its own (no session id needed: the
conversation is the key), with a TTL learned from how long that tool takes; the next turn is
a prefix hit over the whole first turn. Each turn prints its prompt and cached tokens.

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/agent_loop.py
"""

from __future__ import annotations

import json
import os
import time

from ragkv import Client

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def get_weather(city: str) -> str:
    """The tool: slow, like a real API call."""
    time.sleep(0.5)
    return json.dumps({"city": city, "sky": "rain", "celsius": 14})


def main(base_url: str, api_key: str | None, max_turns: int = 3) -> list[dict]:
    """Run the loop; one row per turn (tokens, cached tokens, calls or the answer)."""
    messages = [{"role": "user", "content": "Do I need an umbrella in Lisbon today?"}]
    turns = []
    with Client(base_url, api_key=api_key) as client:
        for number in range(max_turns):
            result = client.chat(
                messages,
                tools=TOOLS,
                tool_choice="required" if number == 0 else "auto",
                parallel_tool_calls=False,
                max_tokens=48,
                temperature=0,
            )
            turns.append({
                "turn": number,
                "prompt_tokens": result.usage.prompt_tokens,
                "cached_tokens": result.usage.cached_tokens,
                "tool_calls": [c["function"]["name"] for c in result.tool_calls],
                "answer": result.text,
            })  # fmt: skip
            if not result.tool_calls:
                break
            messages.append({"role": "assistant", "content": None, "tool_calls": result.tool_calls})
            for call in result.tool_calls:
                arguments = json.loads(call["function"]["arguments"])
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call["id"],
                        "content": get_weather(**arguments),
                    }
                )
    return turns


if __name__ == "__main__":
    rows = main(
        os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"), os.environ.get("RAGKV_API_KEY")
    )
    for row in rows:
        print(row)
