"""Quickstart with the ragkv SDK: create a collection, add documents, ask, print the answer,
its sources and what the caches did.

Run against a live gateway (`make serve`):

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/quickstart.py
"""

from __future__ import annotations

import contextlib
import os

import ragkv

DOCUMENTS = [
    {
        "id": "bees",
        "text": "Honey bees tell each other where flowers are with a waggle dance. The angle "
        "of the dance shows the direction relative to the sun; its length shows the distance.",
        "metadata": {"title": "Honey bees"},
    },
    {
        "id": "tides",
        "text": "Tides are caused mostly by the Moon's gravity pulling on the oceans. The Sun "
        "adds a smaller pull: when both line up, spring tides are the highest.",
        "metadata": {"title": "Tides"},
    },
]


def main(base_url: str, api_key: str | None, collection: str = "quickstart") -> dict:
    """Ingest, ask twice (the second answer comes from the semantic cache); the results."""
    with ragkv.Client(base_url, api_key=api_key) as client:
        # Created by an earlier run? Then documents with the same ids are replaced.
        with contextlib.suppress(ragkv.ConflictError):
            client.collections.create(collection)
        client.documents.add(collection, DOCUMENTS, prewarm=True)
        question = "How do bees show where the flowers are?"
        first = client.rag(question, collection=collection, top_k=2, max_tokens=48)
        again = client.rag(question, collection=collection, top_k=2, max_tokens=48)
    for label, answer in (("first", first), ("again", again)):
        cache = answer.cache
        print(f"[{label}] {answer.answer.strip()}")
        print(f"  sources: {', '.join(s.title or s.document_id for s in answer.sources)}")
        print(
            f"  cache: {answer.cache_status}, chunk tokens reused {cache.chunk_tokens_reused}, "
            f"recomputed {cache.tokens_recomputed}, TTFT {cache.ttft_ms} ms"
        )
    return {"first": first, "again": again}


if __name__ == "__main__":
    main(os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"), os.environ.get("RAGKV_API_KEY"))
