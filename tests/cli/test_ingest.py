"""`ragkv ingest` end to end: files and folders into a real SQLite store and FAISS index."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ragkv.assets import generation_model_path
from ragkv.cli.main import app
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.service import Retriever
from ragkv.retrieval.tokenizer import LazyTokenizer, load_model_tokenizer
from ragkv.settings import Settings


def test_ingest_files_and_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.md").write_text("# Apples\n\nApples grow on trees in orchards.")
    (folder / "sub" / "b.txt").write_text("Bicycles have two wheels and pedals.")
    (folder / "skip.pdf").write_bytes(b"%PDF")
    single = tmp_path / "c.jsonl"
    single.write_text('{"id": "cats", "text": "Cats purr when content."}\n')
    data_dir = tmp_path / "data"
    monkeypatch.setenv("RAGKV_DATA_DIR", str(data_dir))
    result = CliRunner().invoke(app, ["ingest", str(folder), str(single), "--collection", "notes"])
    assert result.exit_code == 0, result.output
    assert "ingested 3 documents, 3 chunks into 'notes'" in result.output

    settings = Settings.load(data_dir=str(data_dir))
    tokenizer = LazyTokenizer(load_model_tokenizer, generation_model_path())  # loads if used
    retriever = Retriever(settings.retrieval, data_dir, Embedder(settings.embedding), tokenizer)
    retriever.open()
    assert retriever.check_integrity("default", "notes") == 3
    assert retriever.get_document("default", "notes", "sub/b.txt").text.startswith("Bicycles")
    assert retriever.search("default", "notes", "kitten sounds", 1)[0].document_id == "cats"
    retriever.close()

    bad = CliRunner().invoke(app, ["ingest", str(folder / "skip.pdf"), "--collection", "notes"])
    assert bad.exit_code == 1 and "not supported" in bad.output
    missing = CliRunner().invoke(app, ["ingest", str(tmp_path / "nope"), "--collection", "x"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    assert CliRunner().invoke(app, ["ingest"]).exit_code == 2
