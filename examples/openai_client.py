"""The official OpenAI client against ragkv: a chat answer, the same streamed, inline
documents in `extra_body`, and what the caches did (`ragkv` in the response).

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/openai_client.py
"""

from __future__ import annotations

import os

from openai import OpenAI


def main(base_url: str, api_key: str | None) -> dict:
    """Three calls; their answers and `ragkv` objects."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key or "not-needed-when-auth-is-off")
    messages = [{"role": "user", "content": "Name the three primary colours."}]
    reply = client.chat.completions.create(
        model="default", messages=messages, max_tokens=32, temperature=0
    )
    stream = client.chat.completions.create(
        model="default", messages=messages, max_tokens=32, temperature=0, stream=True,
        extra_body={"ragkv": {"semantic_cache": False}},
    )  # fmt: skip
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    grounded = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "What colour is the sky on Mars at noon?"}],
        max_tokens=32,
        temperature=0,
        extra_body={
            "documents": [
                {
                    "id": "mars-sky",
                    "text": "On Mars the daytime sky is a butterscotch colour; sunsets are blue.",
                }
            ]
        },  # fmt: skip
    )
    for label, text, ragkv in (
        ("reply", reply.choices[0].message.content, reply.model_extra["ragkv"]),
        ("stream", streamed, chunks[-1].model_extra["ragkv"]),
        ("documents", grounded.choices[0].message.content, grounded.model_extra["ragkv"]),
    ):
        reused, ttft = ragkv["prefix_tokens_reused"], ragkv["ttft_ms"]
        print(f"[{label}] {text!r}\n  ragkv: {ragkv['semantic_cache']}, "
              f"prefix reused {reused}, ttft {ttft} ms")  # fmt: skip
    return {"reply": reply, "streamed": streamed, "chunks": chunks, "grounded": grounded}


if __name__ == "__main__":
    main(os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"), os.environ.get("RAGKV_API_KEY"))
