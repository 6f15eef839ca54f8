"""Documents as callers hand them in, and the checks they pass before anything is written;
and the change feed that tells other components which chunks went away."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ragkv.errors import PayloadTooLarge, Unprocessable
from ragkv.settings import RetrievalSettings

log = logging.getLogger("ragkv.retrieval")

MAX_DOCUMENT_ID_CHARS = 256


class DocumentInput(NamedTuple):
    """A document to ingest; without `id` it gets one from its text (same text, same id)."""

    text: str
    id: str | None = None
    metadata: dict[str, Any] | None = None


def document_id_of(text: str) -> str:
    """The id a document without one gets: a hash of its text."""
    return "doc_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def validate_documents(
    documents: Sequence[DocumentInput], settings: RetrievalSettings
) -> list[DocumentInput]:
    """The documents with their ids filled in; a clear 413/422 for the first bad one."""
    if not documents:
        raise Unprocessable("documents must not be empty", param="documents")
    limit = settings.max_documents_per_request
    if len(documents) > limit:
        raise PayloadTooLarge(
            f"{len(documents)} documents in one request; the limit is {limit} "
            "(settings retrieval.max_documents_per_request)",
            param="documents",
        )
    checked: list[DocumentInput] = []
    seen: set[str] = set()
    for position, doc in enumerate(documents):
        where = f"documents[{position}]"
        if not doc.text.strip():
            raise Unprocessable(f"{where}.text is empty", param=f"{where}.text")
        size = len(doc.text.encode("utf-8"))
        if size > settings.max_document_bytes:
            raise PayloadTooLarge(
                f"{where} has {size} bytes of text; the limit is "
                f"{settings.max_document_bytes} (settings retrieval.max_document_bytes)",
                param=f"{where}.text",
            )
        doc_id = doc.id if doc.id is not None else document_id_of(doc.text)
        if not doc_id or len(doc_id) > MAX_DOCUMENT_ID_CHARS or not doc_id.isprintable():
            raise Unprocessable(
                f"{where}.id must be 1-{MAX_DOCUMENT_ID_CHARS} printable characters",
                param=f"{where}.id",
            )
        if doc_id in seen:
            raise Unprocessable(f"{where}.id '{doc_id}' appears twice", param=f"{where}.id")
        seen.add(doc_id)
        try:
            json.dumps(doc.metadata or {})
        except (TypeError, ValueError) as exc:
            raise Unprocessable(
                f"{where}.metadata is not JSON: {exc}", param=f"{where}.metadata"
            ) from exc
        checked.append(DocumentInput(doc.text, doc_id, dict(doc.metadata or {})))
    return checked


# (tenant, collection, chunk ids or None for every chunk of the collection)
RemovalListener = Callable[[str, str, list[str] | None], None]


class RemovalFeed:
    """Tells listeners which chunks a committed write removed: a replaced or deleted
    document's chunks, or a whole deleted collection. A failing listener is logged and does
    not undo the write (readers that key by chunk ids stay correct without it)."""

    def __init__(self) -> None:
        self.listeners: list[RemovalListener] = []

    def subscribe(self, listener: RemovalListener) -> None:
        """Call `listener` after every committed removal."""
        self.listeners.append(listener)

    def removed(self, tenant: str, collection: str, chunk_ids: list[str] | None) -> None:
        """Announce a removal (`chunk_ids` None: the whole collection)."""
        if chunk_ids is not None and not chunk_ids:
            return
        for listener in self.listeners:
            try:
                listener(tenant, collection, chunk_ids)
            except Exception:
                log.exception("a removal listener failed (collection '%s')", collection)
