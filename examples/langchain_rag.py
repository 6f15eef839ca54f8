"""LangChain over ragkv: `RagkvRetriever` for the context, `ChatOpenAI` for the answer, with
the retrieved chunks sent as ragkv `documents` so their KV is reused across questions.

Run against a live gateway (`make serve`) with `pip install ragkv[langchain]`:

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/langchain_rag.py
"""

from __future__ import annotations

import contextlib
import os

from langchain_openai import ChatOpenAI

import ragkv
from ragkv.integrations.langchain import RagkvRetriever

DOCUMENTS = [
    {"id": "moon", "text": "The Moon is about 384,000 kilometres from Earth and takes 27.3 "
     "days to orbit it. Its gravity causes most of the ocean tides."},
    {"id": "mars", "text": "Mars has two small moons, Phobos and Deimos. A day on Mars lasts "
     "24 hours and 37 minutes."},
]  # fmt: skip


def main(base_url: str, api_key: str | None, collection: str = "langchain-demo") -> dict:
    """Ingest two documents, retrieve for a question, answer with ChatOpenAI."""
    with ragkv.Client(base_url, api_key=api_key) as client:
        with contextlib.suppress(ragkv.ConflictError):
            client.collections.create(collection)
        client.documents.add(collection, DOCUMENTS)
    retriever = RagkvRetriever(collection=collection, top_k=1, base_url=base_url, api_key=api_key)
    question = "How long is a day on Mars?"
    docs = retriever.invoke(question)
    llm = ChatOpenAI(
        base_url=f"{base_url}/v1",
        api_key=api_key or "not-needed-when-auth-is-off",
        model="default",
        temperature=0,
        max_tokens=32,
        extra_body={
            "documents": [{"id": d.metadata["document_id"], "text": d.page_content} for d in docs]
        },  # fmt: skip
    )
    reply = llm.invoke(question)
    print(f"context: {[d.metadata['document_id'] for d in docs]}")
    print(f"answer: {reply.content}")
    print(f"ragkv: {reply.response_metadata.get('ragkv') or reply.additional_kwargs}")
    return {"documents": docs, "reply": reply}


if __name__ == "__main__":
    main(os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"), os.environ.get("RAGKV_API_KEY"))
