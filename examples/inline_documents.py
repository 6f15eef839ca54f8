"""Documents inline in a chat request, and what the chunk KV cache saves.

Run against a live gateway (`make serve`):

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/inline_documents.py

The same two documents are sent three times through the OpenAI client: first in one order,
then reversed (their chunk KV is reused at the new positions and blended), then with
`kv_reuse: "full"`, the baseline that reuses no KV at all. Each reply's `ragkv` object says
how many chunk tokens were reused and how long the first token took.
"""

from __future__ import annotations

import os

from openai import OpenAI

NOTES = {
    "release-notes": "Version 2.4 adds offline mode and fixes the sync bug that duplicated "
    "calendar events. Offline mode keeps the last 30 days of data on the device.",
    "pricing": "The team plan costs 8 euros per user and month, billed yearly. The free plan "
    "allows three projects and one gigabyte of storage.",
}


def ask(client: OpenAI, order: list[str], kv_reuse: str) -> dict:
    reply = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What does version 2.4 add?"}],
        max_tokens=24,
        temperature=0,
        extra_body={
            "documents": [{"id": name, "text": NOTES[name]} for name in order],
            "ragkv": {"kv_reuse": kv_reuse, "semantic_cache": False},
        },
    )
    info = reply.model_extra["ragkv"]
    print(
        f"{kv_reuse:5} {' + '.join(order):24} ttft {info['ttft_ms']:7.1f} ms, chunk tokens "
        f"reused {info['chunk_tokens_reused']}: {reply.choices[0].message.content!r}"
    )
    return info


def main(base_url: str, api_key: str) -> list[dict]:
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
    names = list(NOTES)
    return [
        ask(client, names, "auto"),
        ask(client, names[::-1], "auto"),
        ask(client, names[::-1], "full"),
    ]


if __name__ == "__main__":
    main(
        os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"),
        os.environ.get("RAGKV_API_KEY", "sk-anything-when-auth-is-off"),
    )
