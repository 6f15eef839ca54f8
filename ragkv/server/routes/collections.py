"""Collections, their documents (JSON or file upload) and search; each tenant sees only its own."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, BackgroundTasks, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ragkv.engine.async_engine import AsyncEngine
from ragkv.errors import InvalidRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType
from ragkv.retrieval.loaders import documents_from_bytes
from ragkv.retrieval.service import DocumentInput, Retriever
from ragkv.retrieval.store import CollectionInfo
from ragkv.server.auth import Tenant
from ragkv.server.deps import Components, Retrieval

log = logging.getLogger("ragkv.server")

router = APIRouter(tags=["collections"])


class CreateCollection(BaseModel):
    """`POST /v1/collections` body."""

    name: str = Field(
        description="1-64 letters, digits, '_', '-', '.', starting with a letter or digit",
        # Documented, not validated here: the retriever's own check words the 422.
        json_schema_extra={"pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
    )


class Collection(BaseModel):
    """A collection and its size."""

    object: Literal["collection"] = "collection"
    name: str
    created_at: datetime
    embedding_model: str
    dimensions: int
    num_documents: int
    num_chunks: int

    @classmethod
    def of(cls, info: CollectionInfo) -> Collection:
        """From the store's record."""
        return cls(
            name=info.name,
            created_at=info.created_at,
            embedding_model=info.embedding_model,
            dimensions=info.dim,
            num_documents=info.num_documents,
            num_chunks=info.num_chunks,
        )


class CollectionList(BaseModel):
    """The tenant's collections."""

    object: Literal["list"] = "list"
    data: list[Collection]


class Deleted(BaseModel):
    """Answer of a DELETE."""

    id: str
    object: str
    deleted: bool = True


class NewDocument(BaseModel):
    """A document to add; without `id` it is named by a hash of its text."""

    id: str | None = None
    text: str
    metadata: dict[str, Any] | None = None


class AddDocuments(BaseModel):
    """`POST /v1/collections/{name}/documents` JSON body (files go as multipart `files`)."""

    documents: list[NewDocument]


class IngestResult(BaseModel):
    """What an ingest stored."""

    object: Literal["ingest"] = "ingest"
    collection: str
    document_ids: list[str]
    num_documents: int
    num_chunks: int
    prewarm: Literal["scheduled", "off"] = "off"


class ChunkOut(BaseModel):
    """A stored chunk with its token ids (the keys of its KV cache entry)."""

    chunk_id: str
    ordinal: int
    text: str
    num_tokens: int
    content_hash: str
    token_ids: list[int]


class DocumentOut(BaseModel):
    """A stored document with its chunks in order."""

    object: Literal["document"] = "document"
    id: str
    collection: str
    metadata: dict[str, Any]
    text: str
    created_at: datetime
    chunks: list[ChunkOut]


class SearchRequest(BaseModel):
    """`POST /v1/collections/{name}/search` body."""

    query: str
    top_k: int = Field(5, description="1 to settings retrieval.max_top_k")


class SearchResult(BaseModel):
    """One hit; `score` is the cosine similarity."""

    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    """Hits, best first."""

    object: Literal["list"] = "list"
    data: list[SearchResult]


@router.post("/v1/collections", response_model=Collection, status_code=201)
async def create_collection(
    body: CreateCollection, tenant: Tenant, retriever: Retrieval
) -> Collection:
    """Create an empty collection (409 if the name is taken)."""
    info = await run_in_threadpool(retriever.create_collection, tenant, body.name)
    return Collection.of(info)


@router.get("/v1/collections", response_model=CollectionList)
async def list_collections(tenant: Tenant, retriever: Retrieval) -> CollectionList:
    """The caller's collections."""
    infos = await run_in_threadpool(retriever.list_collections, tenant)
    return CollectionList(data=[Collection.of(info) for info in infos])


@router.get("/v1/collections/{name}", response_model=Collection)
async def get_collection(name: str, tenant: Tenant, retriever: Retrieval) -> Collection:
    """One collection (404 if absent)."""
    return Collection.of(await run_in_threadpool(retriever.get_collection, tenant, name))


@router.delete("/v1/collections/{name}", response_model=Deleted)
async def delete_collection(name: str, tenant: Tenant, retriever: Retrieval) -> Deleted:
    """Delete a collection with all its documents."""
    await run_in_threadpool(retriever.delete_collection, tenant, name)
    return Deleted(id=name, object="collection")


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` references inlined: a schema placed in
    `openapi_extra` must not point at `#/$defs/...` (outside `components`; ReDoc refuses the
    whole document over it)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


_DOCUMENTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inlined_schema(AddDocuments)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


@router.post(
    "/v1/collections/{name}/documents", response_model=IngestResult, openapi_extra=_DOCUMENTS_BODY
)
async def add_documents(
    name: str,
    request: Request,
    tenant: Tenant,
    retriever: Retrieval,
    parts: Components,
    background: BackgroundTasks,
    prewarm: bool = False,
) -> IngestResult:
    """Add or replace documents: JSON `{"documents": [...]}` or multipart .txt/.md/.jsonl files.

    `?prewarm=true` computes the new chunks' KV for the chunk cache after answering, so
    their first RAG request already reuses it."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        documents = await _json_documents(request)
    elif content_type == "multipart/form-data":
        documents = await _uploaded_documents(request, retriever.settings.max_document_bytes)
    else:
        raise UnsupportedMediaType(
            f"content type '{content_type or 'none'}' is not accepted; send application/json "
            "or multipart/form-data with .txt, .md or .jsonl files"
        )
    await run_in_threadpool(retriever.get_collection, tenant, name)  # 404 before any work
    stats = await run_in_threadpool(retriever.add_documents, tenant, name, documents)
    engine = parts.engine
    scheduled = prewarm and engine.chunk_cache_enabled
    if scheduled:
        background.add_task(
            run_in_threadpool,
            _prewarm,
            retriever,
            engine,
            tenant,
            name,
            stats.document_ids,
            parts.pipeline.chunk_context,
        )
    return IngestResult(
        collection=name,
        document_ids=stats.document_ids,
        num_documents=len(stats.document_ids),
        num_chunks=stats.chunks,
        prewarm="scheduled" if scheduled else "off",
    )


def _prewarm(
    retriever: Retriever,
    engine: AsyncEngine,
    tenant: str,
    name: str,
    document_ids: list[str],
    context: tuple[int, ...],
) -> None:
    """Compute the chunk KV of ingested documents (best effort: a failure is only logged)."""
    try:
        chunks = [
            list(chunk.token_ids)
            for doc_id in document_ids
            for chunk in retriever.get_document(tenant, name, doc_id).chunks
        ]
        computed = engine.prewarm(tenant, chunks, context)
        log.info("prewarmed %d of %d chunks of collection %s", computed, len(chunks), name)
    except Exception:
        log.exception("chunk KV prewarm of collection %s failed", name)


async def _json_documents(request: Request) -> list[DocumentInput]:
    try:
        raw = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest("request body is not valid JSON", code="invalid_json") from exc
    try:
        body = AddDocuments.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from exc
    return [DocumentInput(doc.text, doc.id, doc.metadata) for doc in body.documents]


async def _uploaded_documents(request: Request, max_document_bytes: int) -> list[DocumentInput]:
    form = await request.form()
    uploads = [
        value for key, value in form.multi_items() if key in ("files", "file") and _is_file(value)
    ]
    if not uploads:
        raise Unprocessable(
            "upload one or more files in the multipart field 'files'", param="files"
        )
    documents: list[DocumentInput] = []
    for upload in uploads:
        filename = upload.filename or "upload"
        data = await upload.read(max_document_bytes + 1)
        if len(data) > max_document_bytes and not filename.lower().endswith(".jsonl"):
            raise PayloadTooLarge(
                f"file '{filename}' is over {max_document_bytes} bytes "
                "(settings retrieval.max_document_bytes)",
                param="files",
            )
        data += await upload.read()
        documents.extend(documents_from_bytes(filename, data))
    return documents


def _is_file(value: Any) -> bool:
    return isinstance(value, UploadFile)


@router.get("/v1/collections/{name}/documents/{document_id:path}", response_model=DocumentOut)
async def get_document(
    name: str, document_id: str, tenant: Tenant, retriever: Retrieval
) -> DocumentOut:
    """A document with its chunks and their token ids (404 if absent)."""
    doc = await run_in_threadpool(retriever.get_document, tenant, name, document_id)
    chunks = [
        ChunkOut(
            chunk_id=chunk.chunk_id,
            ordinal=chunk.ordinal,
            text=chunk.text,
            num_tokens=chunk.num_tokens,
            content_hash=chunk.content_hash,
            token_ids=chunk.token_ids,
        )
        for chunk in doc.chunks
    ]
    return DocumentOut(
        id=doc.id,
        collection=name,
        metadata=doc.metadata,
        text=doc.text,
        created_at=doc.created_at,
        chunks=chunks,
    )


@router.delete("/v1/collections/{name}/documents/{document_id:path}", response_model=Deleted)
async def delete_document(
    name: str, document_id: str, tenant: Tenant, retriever: Retrieval
) -> Deleted:
    """Delete a document, its chunks and their vectors."""
    await run_in_threadpool(retriever.delete_document, tenant, name, document_id)
    return Deleted(id=document_id, object="document")


@router.post("/v1/collections/{name}/search", response_model=SearchResponse)
async def search(
    name: str, body: SearchRequest, tenant: Tenant, retriever: Retrieval
) -> SearchResponse:
    """The `top_k` chunks closest in meaning to `query`, best first."""
    hits = await run_in_threadpool(retriever.search, tenant, name, body.query, body.top_k)
    return SearchResponse(
        data=[
            SearchResult(
                document_id=hit.document_id,
                chunk_id=hit.chunk_id,
                text=hit.text,
                score=hit.score,
                metadata=hit.metadata,
            )
            for hit in hits
        ]
    )
