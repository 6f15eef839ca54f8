"""The first-run demo collection: seeded in the background on a first start with auth off,
answerable by RAG, complete after a restart and not seeded twice."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import ragkv
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import Retriever
from ragkv.server.app import build_app
from ragkv.server.demo import DEMO_COLLECTION, DemoSeeder, demo_documents
from ragkv.settings import Settings
from tests.conftest import start_server

COUNT = 24


def test_demo_documents_span_every_topic() -> None:
    documents = demo_documents(COUNT)
    assert len(documents) == COUNT and len({d.id for d in documents}) == COUNT
    topics = {d.metadata["topic"] for d in documents}
    assert len(topics) == 12  # the sample's 12 topics, two leads each
    assert [d.id for d in demo_documents(COUNT)] == [d.id for d in documents]


@pytest.mark.slow  # ~30 s: ingests 300 leads on a fresh server
def test_first_start_seeds_the_demo_collection(tmp_path: Path) -> None:
    settings = Settings.load(
        data_dir=str(tmp_path), server={"demo_documents": COUNT}, engine={"kv_cache_mb": 64}
    )
    live = start_server(build_app(settings), settings)
    try:
        with ragkv.Client(live.url, timeout=300) as client:
            deadline = time.monotonic() + 300
            while client.collections.get(DEMO_COLLECTION).num_documents < COUNT:
                assert time.monotonic() < deadline, "the demo collection was not seeded"
                time.sleep(0.5)
            question = demo_documents(COUNT)[0].text.split(".")[0]  # a lead's first sentence
            answer = client.rag(question, collection=DEMO_COLLECTION, top_k=2, max_tokens=8)
        assert answer.sources[0].document_id == demo_documents(COUNT)[0].id
    finally:
        live.stop()
    retriever = Retriever(settings.retrieval, settings.data_dir, Embedder(settings.embedding),
                          tokenizer=lambda text: list(text.encode()))  # fmt: skip
    retriever.open()
    try:
        assert DemoSeeder(retriever, COUNT).start() is False  # complete: not seeded again
    finally:
        retriever.close()
