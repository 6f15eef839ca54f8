"""`ragkv ingest`: load files, folders or the Wikipedia sample into a collection, with progress."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ragkv.assets import generation_model_path
from ragkv.errors import NotFound
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.loaders import documents_from_bytes, iter_files, wikipedia_sample
from ragkv.retrieval.service import DocumentInput, Retriever
from ragkv.retrieval.tokenizer import LazyTokenizer, load_model_tokenizer
from ragkv.settings import Settings

BATCH_DOCUMENTS = 64


def collect_documents(paths: list[Path], use_wikipedia_sample: bool) -> list[DocumentInput]:
    """Documents from `paths` (.txt, .md, .jsonl files or folders) and/or the Wikipedia sample."""
    documents = wikipedia_sample() if use_wikipedia_sample else []
    for path, name in iter_files(paths):
        documents.extend(documents_from_bytes(name, path.read_bytes()))
    return documents


def run_ingest(
    settings: Settings,
    documents: list[DocumentInput],
    collection: str,
    tenant: str,
    console: Console,
) -> tuple[int, int, float]:
    """Ingest in batches with a progress bar; returns (documents, chunks, seconds)."""
    model_path = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
    tokenizer = LazyTokenizer(load_model_tokenizer, model_path)
    retriever = Retriever(
        settings.retrieval, settings.data_dir, Embedder(settings.embedding), tokenizer
    )
    retriever.open()
    try:
        try:
            retriever.get_collection(tenant, collection)
        except NotFound:
            retriever.create_collection(tenant, collection)
            console.print(f"created collection '{collection}' (tenant '{tenant}')")
        num_chunks = 0
        started = time.perf_counter()
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("documents, {task.fields[chunks]} chunks, {task.fields[rate]} chunks/s"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task(collection, total=len(documents), chunks=0, rate="-")
            for start in range(0, len(documents), BATCH_DOCUMENTS):
                batch = documents[start : start + BATCH_DOCUMENTS]
                num_chunks += retriever.add_documents(tenant, collection, batch).chunks
                rate = num_chunks / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=len(batch), chunks=num_chunks, rate=f"{rate:.1f}")
        return len(documents), num_chunks, time.perf_counter() - started
    finally:
        retriever.close()
