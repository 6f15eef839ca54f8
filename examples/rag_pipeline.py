"""A RAG pipeline in Python: a batch of questions over a collection, the same batch again,
then paraphrased; a table of what the caches did on each pass.

    RAGKV_BASE_URL=http://127.0.0.1:8000 RAGKV_API_KEY=sk-... python examples/rag_pipeline.py

Pass 1 computes (each chunk's KV is reused across questions that retrieve it), pass 2 is
answered from the semantic cache, pass 3 (other words, same meaning) hits where the
similarity clears the category's threshold.
"""

from __future__ import annotations

import contextlib
import os
import statistics

import ragkv

DOCUMENTS = [
    {"id": "everest", "text": "Mount Everest, 8,849 metres high, is the highest mountain above "
     "sea level. It lies in the Himalayas on the border of Nepal and China."},
    {"id": "nile", "text": "The Nile flows north through eleven countries into the "
     "Mediterranean Sea. Its two main branches are the White Nile and the Blue Nile."},
    {"id": "sahara", "text": "The Sahara is the largest hot desert in the world, covering "
     "much of North Africa. Its dunes can reach 180 metres in height."},
]  # fmt: skip
QUESTIONS = [
    "How high is Mount Everest?",
    "Into which sea does the Nile flow?",
    "How tall can the dunes of the Sahara get?",
]
PARAPHRASES = [
    "What is the height of Mount Everest?",
    "Which sea does the Nile flow into?",
    "How high can the Sahara's dunes be?",
]


def run_pass(client: ragkv.Client, collection: str, questions: list[str]) -> list:
    """Answers of one pass, in order."""
    return [
        client.rag(q, collection=collection, top_k=2, max_tokens=48, temperature=0)
        for q in questions
    ]


def main(base_url: str, api_key: str | None, collection: str = "pipeline-demo") -> dict:
    """Three passes; per pass the answers and a summary row."""
    with ragkv.Client(base_url, api_key=api_key, timeout=300) as client:
        with contextlib.suppress(ragkv.ConflictError):
            client.collections.create(collection)
        client.documents.add(collection, DOCUMENTS, prewarm=True)
        passes = {
            "first": run_pass(client, collection, QUESTIONS),
            "again": run_pass(client, collection, QUESTIONS),
            "paraphrased": run_pass(client, collection, PARAPHRASES),
        }
    print(f"{'pass':<12} {'semantic hits':>13} {'chunk tokens reused':>20} {'median TTFT ms':>15}")
    summary = {}
    for name, answers in passes.items():
        hits = sum(a.cache_status == "semantic-hit" for a in answers)
        reused = sum(a.cache.chunk_tokens_reused for a in answers)
        ttfts = [a.cache.ttft_ms for a in answers if a.cache.ttft_ms is not None]
        ttft = statistics.median(ttfts) if ttfts else None
        summary[name] = {"semantic_hits": hits, "chunk_tokens_reused": reused, "ttft_ms": ttft}
        shown = f"{ttft:.0f}" if ttft is not None else "-"
        print(f"{name:<12} {hits:>10}/{len(answers)} {reused:>20} {shown:>15}")
    return {"passes": passes, "summary": summary}


if __name__ == "__main__":
    main(os.environ.get("RAGKV_BASE_URL", "http://127.0.0.1:8000"), os.environ.get("RAGKV_API_KEY"))
