"""LlamaIndex over ragkv: `OpenAILike` pointed at the gateway, with ragkv's `rag` field in
`additional_kwargs`, so the gateway retrieves from a collection and reuses the chunks' KV.

Run against a live gateway (`make serve`) with `pip install ragkv[llamaindex]`:

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/llamaindex_rag.py

The same question is asked twice; each reply's `raw` is the OpenAI completion, whose `ragkv`
object names the sources and says what the caches did. No tokenizer is set on the LLM (it
would only infer `max_tokens`), so none is loaded, and LlamaIndex's nltk data ships in its
wheel: nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import os

from llama_index.core.llms import ChatMessage, ChatResponse
from llama_index.llms.openai_like import OpenAILike

import ragkv

DOCUMENTS = [
    {"id": "venus", "text": "Venus turns so slowly that one day on Venus, 243 Earth days, is "
     "longer than its year of 225 Earth days. It also turns the other way round."},
    {"id": "jupiter", "text": "Jupiter is the largest planet. Its Great Red Spot is a storm "
     "wider than the Earth that has lasted for at least 190 years."},
]  # fmt: skip


def main(base_url: str, api_key: str | None, collection: str = "llamaindex-demo") -> dict:
    """Ingest two documents (chunk KV prewarmed), ask twice through OpenAILike; the replies."""
    with ragkv.Client(base_url, api_key=api_key) as client:
        with contextlib.suppress(ragkv.ConflictError):
            client.collections.create(collection)
        client.documents.add(collection, DOCUMENTS, prewarm=True)
        model = client.models()[0]
    llm = OpenAILike(
        api_base=f"{base_url}/v1",
        api_key=api_key or "not-needed-when-auth-is-off",
        model=model["id"],
        is_chat_model=True,
        context_window=model["context_length"],
        max_tokens=32,
        temperature=0,
        additional_kwargs={"extra_body": {"rag": {"collection": collection, "top_k": 1}}},
    )
    question = "On which planet is a day longer than a year?"
    messages = [ChatMessage(role="user", content=question)]
    replies: dict[str, ChatResponse] = {}
    for label in ("first", "again"):
        reply = replies[label] = llm.chat(messages)
        info = reply.raw.model_extra["ragkv"]
        print(f"[{label}] {reply.message.content!r}")
        print(f"  sources: {[s['document_id'] for s in info['sources']]}")
        print(f"  cache: semantic {info['semantic_cache']}, chunk tokens reused "
              f"{info['chunk_tokens_reused']}, prefix reused {info['prefix_tokens_reused']}, "
              f"ttft {info['ttft_ms']} ms")  # fmt: skip
    return replies


if __name__ == "__main__":
    main(os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"), os.environ.get("RAGKV_API_KEY"))
