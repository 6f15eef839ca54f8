"""RAG over a collection: ingest documents (their chunk KV prewarmed), then ask.

Run against a live gateway (`make serve`):

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/rag_collection.py

It creates the collection `examples-kb`, adds three short documents with `?prewarm=true`,
asks once through the OpenAI client (`rag` in `extra_body`) and once through
`POST /v1/rag/chat`, which also returns the sources it used.
"""

from __future__ import annotations

import os

import httpx
from openai import OpenAI

DOCUMENTS = [
    {
        "id": "rivers",
        "title": "Rivers",
        "text": "The Nile and the Amazon are the two longest rivers on Earth. The Amazon "
        "carries more water than any other river, about a fifth of all river discharge "
        "into the oceans.",
    },
    {
        "id": "deserts",
        "title": "Deserts",
        "text": "The Sahara is the largest hot desert. Antarctica, a cold desert, is larger "
        "still. Deserts receive less than 250 millimetres of precipitation a year.",
    },
    {
        "id": "volcanoes",
        "title": "Volcanoes",
        "text": "Mauna Loa in Hawaii is the largest active volcano on Earth by volume. "
        "Volcanic eruptions can cool the climate for a few years by spreading sulfate "
        "aerosols in the stratosphere.",
    },
]


def main(base_url: str, api_key: str, collection: str = "examples-kb") -> dict:
    """Ingest, ask twice, print and return what came back."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=300) as http:
        created = http.post("/v1/collections", json={"name": collection})
        if created.status_code not in (200, 201, 409):  # 409: it exists already
            created.raise_for_status()
        added = http.post(
            f"/v1/collections/{collection}/documents",
            params={"prewarm": "true"},
            json={"documents": DOCUMENTS},
        )
        added.raise_for_status()
        print(f"ingested {added.json()['num_chunks']} chunks, prewarm {added.json()['prewarm']}")

        client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key)
        reply = client.chat.completions.create(
            model="default",
            messages=[{"role": "user", "content": "Which river carries the most water?"}],
            max_tokens=32,
            temperature=0,
            # semantic_cache off: show the engine's chunk reuse even when run twice
            extra_body={
                "rag": {"collection": collection, "top_k": 2},
                "ragkv": {"semantic_cache": False},
            },
        )
        info = reply.model_extra["ragkv"]
        print("chat:", reply.choices[0].message.content)
        print(
            f"  chunk tokens reused {info['chunk_tokens_reused']}, "
            f"recomputed {info['tokens_recomputed']}, selector {info['selector']}"
        )

        answer = http.post(
            "/v1/rag/chat",
            json={
                "question": "What is the largest hot desert?",
                "collection": collection,
                "top_k": 2,
                "max_tokens": 32,
            },  # fmt: skip
        )
        answer.raise_for_status()
        body = answer.json()
        print("rag/chat:", body["answer"])
        for source in body["sources"]:
            print(f"  source {source['document_id']} ({source['title']}) score {source['score']}")
    return {"chat": reply.model_dump(), "rag": body}


if __name__ == "__main__":
    main(
        os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"),
        os.environ.get("RAGKV_API_KEY", "sk-anything-when-auth-is-off"),
    )
