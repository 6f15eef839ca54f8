"""The retriever on a real PostgreSQL server: a throwaway cluster or $RAGKV_TEST_POSTGRES_URL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from ragkv.errors import Conflict
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import DocumentInput, Retriever
from ragkv.retrieval.tokenizer import HFTokenizer
from ragkv.settings import RetrievalSettings

DOCS = [
    DocumentInput("Rust guarantees memory safety without a garbage collector.", "rust"),
    DocumentInput("The Nile is a major north-flowing river in Africa.", "nile"),
    DocumentInput("Bach composed the Brandenburg Concertos.", "bach", {"era": "baroque"}),
]


def test_postgres_store(
    postgres_url: str, tmp_path: Path, minilm: Embedder, serving_tokenizer: HFTokenizer
) -> None:
    settings = RetrievalSettings(database_url=postgres_url, chunk_tokens=32)
    tenant = f"t-{uuid.uuid4().hex[:8]}"  # the server may be shared: keep to our own tenant
    retriever = Retriever(settings, tmp_path, minilm, serving_tokenizer)
    retriever.open()
    assert retriever.store.engine.dialect.name == "postgresql"
    retriever.create_collection(tenant, "kb")
    with pytest.raises(Conflict):
        retriever.create_collection(tenant, "kb")
    retriever.add_documents(tenant, "kb", DOCS)
    hit = retriever.search(tenant, "kb", "classical composer", 1)[0]
    assert (hit.document_id, hit.metadata) == ("bach", {"era": "baroque"})

    def fail(_: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        retriever.add_documents(tenant, "kb", [DocumentInput("Replaced.", "nile")], progress=fail)
    assert retriever.check_integrity(tenant, "kb") == 3
    retriever.add_documents(tenant, "kb", [DocumentInput("The Amazon river is huge.", "nile")])
    assert retriever.get_document(tenant, "kb", "nile").text == "The Amazon river is huge."
    retriever.delete_document(tenant, "kb", "rust")
    assert retriever.check_integrity(tenant, "kb") == 2
    retriever.store.close()  # no index save: the next start rebuilds from PostgreSQL

    again = Retriever(settings, tmp_path, minilm, serving_tokenizer)
    again.open()
    assert again.check_integrity(tenant, "kb") == 2
    assert again.search(tenant, "kb", "South American river", 1)[0].document_id == "nile"
    again.delete_collection(tenant, "kb")
    again.close()
