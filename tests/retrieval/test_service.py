"""Retriever over real MiniLM, FAISS and SQLite: ingest, upsert, delete, failures, restarts."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragkv.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import DocumentInput, Retriever, SearchHit, document_id_of
from ragkv.retrieval.tokenizer import HFTokenizer
from ragkv.settings import RetrievalSettings

DOCS = [
    DocumentInput("The Eiffel Tower is a wrought-iron lattice tower in Paris, France.", "eiffel"),
    DocumentInput("Photosynthesis lets plants turn sunlight, water and CO2 into sugar.", "plants"),
    DocumentInput("The Python language was created by Guido van Rossum in 1991.", "python"),
    DocumentInput("Mount Everest is Earth's highest mountain above sea level.", "everest"),
]


def assert_same_hits(got: list[SearchHit], expected: list[SearchHit]) -> None:
    """The same chunks in the same order, scores equal up to float rounding: an index rebuilt
    from the store is another HNSW graph, which may compute a score along another path."""
    assert [hit._replace(score=0.0) for hit in got] == [hit._replace(score=0.0) for hit in expected]
    assert [hit.score for hit in got] == pytest.approx([hit.score for hit in expected], abs=1e-5)


def make(tmp_path: Path, minilm: Embedder, tokenizer: HFTokenizer, **settings: object) -> Retriever:
    retriever = Retriever(RetrievalSettings(**settings), tmp_path, minilm, tokenizer)
    retriever.open()
    return retriever


@pytest.fixture
def retriever(
    tmp_path: Path, minilm: Embedder, serving_tokenizer: HFTokenizer
) -> Iterator[Retriever]:
    retriever = make(tmp_path, minilm, serving_tokenizer, chunk_tokens=32)
    retriever.create_collection("acme", "kb")
    retriever.add_documents("acme", "kb", DOCS)
    yield retriever
    retriever.close()


def test_search_finds_by_meaning_best_first(retriever: Retriever) -> None:
    hits = retriever.search("acme", "kb", "Who invented Python?", top_k=3)
    assert [hit.document_id for hit in hits][0] == "python"
    assert len(hits) == 3
    assert hits[0].score > hits[1].score >= hits[2].score
    assert (
        retriever.search("acme", "kb", "tallest peak in the world", 1)[0].document_id == "everest"
    )


def test_upsert_replaces_chunks_and_vectors(retriever: Retriever) -> None:
    long_text = " ".join(f"Plants need light number {i} to grow." for i in range(12))
    retriever.add_documents("acme", "kb", [DocumentInput(long_text, "plants", {"v": 2})])
    assert retriever.check_integrity("acme", "kb") == 3 + len(retriever.chunker.chunk(long_text))
    doc = retriever.get_document("acme", "kb", "plants")
    assert doc.metadata == {"v": 2} and len(doc.chunks) > 1
    texts = {hit.text for hit in retriever.search("acme", "kb", "photosynthesis sugar", 10)}
    assert DOCS[1].text not in texts


def test_delete_removes_document_chunks_and_vectors(retriever: Retriever) -> None:
    retriever.delete_document("acme", "kb", "eiffel")
    assert retriever.check_integrity("acme", "kb") == 3
    assert all(h.document_id != "eiffel" for h in retriever.search("acme", "kb", "Paris", 10))
    with pytest.raises(NotFound):
        retriever.get_document("acme", "kb", "eiffel")
    with pytest.raises(NotFound):
        retriever.delete_document("acme", "kb", "eiffel")


def test_reingesting_same_text_gives_same_ids(retriever: Retriever) -> None:
    text = "A document without an id. " * 20
    first = retriever.add_documents("acme", "kb", [DocumentInput(text)])
    chunk_ids = [
        c.chunk_id for c in retriever.get_document("acme", "kb", first.document_ids[0]).chunks
    ]
    second = retriever.add_documents("acme", "kb", [DocumentInput(text)])
    assert first.document_ids == second.document_ids == [document_id_of(text)]
    again = [
        c.chunk_id for c in retriever.get_document("acme", "kb", second.document_ids[0]).chunks
    ]
    assert again == chunk_ids
    assert retriever.get_collection("acme", "kb").num_documents == len(DOCS) + 1


def test_failure_half_way_leaves_store_and_index_consistent(retriever: Retriever) -> None:
    before = retriever.check_integrity("acme", "kb")
    batch = [
        DocumentInput("New document about volcanoes and lava.", "volcano"),
        DocumentInput("Eiffel replaced: a text about bridges.", "eiffel"),  # replaces one
        DocumentInput("New document about oceans and tides.", "ocean"),
    ]
    written: list[int] = []

    def fail_on_third(num_chunks: int) -> None:
        written.append(num_chunks)
        if len(written) == 3:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        retriever.add_documents("acme", "kb", batch, progress=fail_on_third)
    assert len(written) == 3  # two documents were fully written before the failure
    assert retriever.check_integrity("acme", "kb") == before
    for missing in ("volcano", "ocean"):
        with pytest.raises(NotFound):
            retriever.get_document("acme", "kb", missing)
    assert retriever.get_document("acme", "kb", "eiffel").text == DOCS[0].text
    assert retriever.search("acme", "kb", "tower in Paris", 1)[0].document_id == "eiffel"
    # and the next ingest works normally
    retriever.add_documents("acme", "kb", batch)
    assert retriever.check_integrity("acme", "kb") == before + 2


def test_restart_loads_saved_index_without_rebuilding(
    tmp_path: Path,
    minilm: Embedder,
    serving_tokenizer: HFTokenizer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = make(tmp_path, minilm, serving_tokenizer)
    first.create_collection("acme", "kb")
    first.add_documents("acme", "kb", DOCS)
    expected = first.search("acme", "kb", "mountains", 4)
    first.close()
    with caplog.at_level(logging.INFO, logger="ragkv.retrieval"):
        second = make(tmp_path, minilm, serving_tokenizer)
    assert "rebuilding" not in caplog.text
    assert second.search("acme", "kb", "mountains", 4) == expected
    second.close()


@pytest.mark.parametrize("damage", ["corrupt", "missing", "stale"])
def test_bad_index_file_is_rebuilt_from_store(
    tmp_path: Path,
    minilm: Embedder,
    serving_tokenizer: HFTokenizer,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    first = make(tmp_path, minilm, serving_tokenizer, index_factory="HNSW32,Flat")
    first.create_collection("acme", "kb")
    first.add_documents("acme", "kb", DOCS[:2])
    first.save()
    first.add_documents("acme", "kb", DOCS[2:])  # after the save: the file is now stale
    expected = first.search("acme", "kb", "mountains", 4)
    first.store.close()  # a crash: the index is not saved again
    (path,) = (tmp_path / "retrieval" / "indexes").glob("*.faiss")
    if damage == "corrupt":
        path.write_bytes(path.read_bytes()[:-100] + b"\0" * 100)
    elif damage == "missing":
        path.unlink()
    with caplog.at_level(logging.WARNING, logger="ragkv.retrieval"):
        second = make(tmp_path, minilm, serving_tokenizer, index_factory="HNSW32,Flat")
    assert "rebuilding the index of collection 'kb'" in caplog.text
    assert second.check_integrity("acme", "kb") == len(DOCS)
    assert_same_hits(second.search("acme", "kb", "mountains", 4), expected)
    second.close()


def test_concurrent_ingest_and_search(retriever: Retriever) -> None:
    errors: list[BaseException] = []

    def ingest(worker: int) -> None:
        try:
            for i in range(4):
                text = f"Worker {worker} writes note {i} about rivers and lakes."
                retriever.add_documents("acme", "kb", [DocumentInput(text, f"w{worker}-{i}")])
        except BaseException as exc:
            errors.append(exc)

    def search() -> None:
        try:
            for _ in range(8):
                hits = retriever.search("acme", "kb", "Eiffel Tower", 2)
                assert hits[0].document_id == "eiffel"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(w,)) for w in range(2)]
    threads += [threading.Thread(target=search) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert retriever.check_integrity("acme", "kb") == len(DOCS) + 8


def test_tenants_are_isolated(retriever: Retriever) -> None:
    assert [c.name for c in retriever.list_collections("acme")] == ["kb"]
    assert retriever.list_collections("other") == []
    with pytest.raises(NotFound):
        retriever.search("other", "kb", "Paris", 1)
    retriever.create_collection("other", "kb")  # same name, other tenant: no conflict
    assert retriever.search("other", "kb", "Paris", 3) == []


def test_bad_input(retriever: Retriever) -> None:
    cases = [
        (Unprocessable, lambda: retriever.add_documents("acme", "kb", [DocumentInput("  ")])),
        (Unprocessable, lambda: retriever.add_documents("acme", "kb", [])),
        (
            Unprocessable,
            lambda: retriever.add_documents(
                "acme", "kb", [DocumentInput("a", "x"), DocumentInput("b", "x")]
            ),
        ),
        (
            PayloadTooLarge,
            lambda: retriever.add_documents("acme", "kb", [DocumentInput("x" * (1024 * 1024 + 1))]),
        ),
        (NotFound, lambda: retriever.add_documents("acme", "nope", DOCS)),
        (Conflict, lambda: retriever.create_collection("acme", "kb")),
        (Unprocessable, lambda: retriever.create_collection("acme", "bad name!")),
        (Unprocessable, lambda: retriever.search("acme", "kb", "q", 0)),
        (Unprocessable, lambda: retriever.search("acme", "kb", "q", 101)),
        (Unprocessable, lambda: retriever.search("acme", "kb", " ", 3)),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
    assert retriever.check_integrity("acme", "kb") == len(DOCS)


def test_delete_collection_removes_everything(retriever: Retriever, tmp_path: Path) -> None:
    retriever.save()
    assert list((tmp_path / "retrieval" / "indexes").glob("*.faiss"))
    retriever.delete_collection("acme", "kb")
    assert not list((tmp_path / "retrieval" / "indexes").glob("*.faiss"))
    with pytest.raises(NotFound):
        retriever.get_collection("acme", "kb")
    retriever.create_collection("acme", "kb")
    assert retriever.get_collection("acme", "kb").num_chunks == 0
    assert np.array_equal(retriever.store.vector_ids(retriever.get_collection("acme", "kb").id), [])


def test_removal_feed_names_the_chunks_a_write_removed(retriever: Retriever) -> None:
    calls: list[tuple[str, str, list[str] | None]] = []
    retriever.removals.subscribe(lambda t, n, ids: calls.append((t, n, ids)))
    first = [c.chunk_id for c in retriever.get_document("acme", "kb", "eiffel").chunks]
    retriever.add_documents("acme", "kb", [DOCS[0]])  # the same text: no chunk changed
    retriever.add_documents("acme", "kb", [DocumentInput("A new text about cats.", "cats")])
    assert calls == []
    retriever.add_documents("acme", "kb", [DocumentInput("The Eiffel Tower is grey.", "eiffel")])
    assert calls == [("acme", "kb", first)]
    second = [c.chunk_id for c in retriever.get_document("acme", "kb", "eiffel").chunks]
    retriever.delete_document("acme", "kb", "eiffel")
    retriever.delete_collection("acme", "kb")
    assert calls[1:] == [("acme", "kb", second), ("acme", "kb", None)]


def test_a_failing_removal_listener_does_not_undo_the_write(retriever: Retriever) -> None:
    def broken(tenant: str, name: str, chunk_ids: list[str] | None) -> None:
        raise RuntimeError("listener down")

    retriever.removals.subscribe(broken)
    retriever.delete_document("acme", "kb", "plants")
    with pytest.raises(NotFound):
        retriever.get_document("acme", "kb", "plants")
    assert retriever.check_integrity("acme", "kb") == 3
