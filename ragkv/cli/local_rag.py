"""`ragkv ask --collection` without a server: the same pipeline, opened in this process over
the local data directory (the collection ingested with `ragkv ingest`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ragkv.settings import Settings


@dataclass(frozen=True)
class LocalAnswer:
    """The answer text and its sources (title or document id, score) and cache report."""

    text: str
    sources: list[tuple[str, float | None]]
    report: dict


def ask_locally(
    settings: Settings,
    question: str,
    collection: str,
    top_k: int,
    max_tokens: int,
    temperature: float,
    tenant: str = "default",
) -> LocalAnswer:
    """Open the components (model, embedder, retrieval; no demo seeding, no semantic cache),
    answer one RAG question, close them."""
    return asyncio.run(_ask(settings, question, collection, top_k, max_tokens, temperature, tenant))


async def _ask(settings, question, collection, top_k, max_tokens, temperature, tenant):
    from prometheus_client import CollectorRegistry

    from ragkv.engine.sampling import SamplingParams
    from ragkv.pipeline.request import CacheOptions, ChatRequest, RagQuery
    from ragkv.server.components import Components

    local = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"demo_documents": 0}),
            "semantic_cache": settings.semantic_cache.model_copy(update={"enabled": False}),
        }
    )
    parts = await Components.open(local, CollectorRegistry())
    try:
        request = ChatRequest(
            tenant=tenant,
            messages=[{"role": "user", "content": question}],
            params=SamplingParams(max_tokens=max_tokens, temperature=temperature),
            max_tokens_set=True,
            rag=RagQuery(collection, top_k),
            cache=CacheOptions(semantic_cache=False),
        )
        answer = await parts.pipeline.chat(request)
        whole = await answer.collect()
        report = answer.report.to_json() if answer.report is not None else {}
        sources = [
            (s.get("title") or s.get("document_id") or "?", s.get("score"))
            for s in report.get("sources") or []
        ]
        return LocalAnswer(whole.text, sources, report)
    finally:
        await parts.close()
