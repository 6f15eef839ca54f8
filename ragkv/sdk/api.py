"""Every API method, written once. A method builds a `Call` and hands it to the client's
`_run`, which sends it: `Client._run` returns the result, `AsyncClient._run` a coroutine of
it, so each method here is a plain call on `Client` and awaitable on `AsyncClient`."""

from __future__ import annotations

import mimetypes
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ragkv.sdk._http import Call
from ragkv.sdk.types import (
    CacheLookup,
    ChatResult,
    Collection,
    IngestResult,
    RagAnswer,
    SearchHit,
)

Messages = str | Sequence[dict[str, Any]]
DocumentLike = dict[str, Any] | str | Path


RAGKV_OPTIONS = (
    "kv_reuse", "session_id", "pin_ttl_s", "semantic_cache", "category", "recompute_ratio"
)  # fmt: skip


def chat_body(
    messages: Messages,
    *,
    model: str,
    max_tokens: int | None = None,
    temperature: float | None = None,
    documents: Sequence[dict[str, Any] | str] | None = None,
    rag: str | dict[str, Any] | None = None,
    stream: bool = False,
    **params: Any,
) -> dict[str, Any]:
    """The `/v1/chat/completions` body. A string `messages` is one user message; a string
    `rag` names a collection; a string document is its text. `params` named in
    `RAGKV_OPTIONS` go into the `ragkv` object, the others are OpenAI parameters."""
    ragkv = {name: params.pop(name, None) for name in RAGKV_OPTIONS}
    openai_params = params
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body: dict[str, Any] = {"model": model, "messages": list(messages), **openai_params}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    if documents:
        body["documents"] = [{"text": d} if isinstance(d, str) else dict(d) for d in documents]
    if rag is not None:
        body["rag"] = {"collection": rag} if isinstance(rag, str) else dict(rag)
    options = {name: value for name, value in ragkv.items() if value is not None}
    if options:
        body["ragkv"] = options
    if stream:
        body["stream"] = True
    return body


def _chat_result(response: Any) -> ChatResult:
    return ChatResult.of(response.json(), response.headers.get("x-ragkv-cache"))


def _rag_answer(response: Any) -> RagAnswer:
    return RagAnswer.of(response.json(), response.headers.get("x-ragkv-cache"))


def _segment(name: str) -> str:
    return quote(name, safe="")


class API:
    """The methods of `Client` and `AsyncClient` (see their docs for construction)."""

    model = "default"

    def __init__(self, base_url: str, max_retries: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.collections = Collections(self)
        self.documents = Documents(self)
        self.cache = Cache(self)
        self.admin = Admin(self)

    def chat(
        self,
        messages: Messages,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        documents: Sequence[dict[str, Any] | str] | None = None,
        rag: str | dict[str, Any] | None = None,
        kv_reuse: str | None = None,
        session_id: str | None = None,
        pin_ttl_s: float | None = None,
        semantic_cache: bool | None = None,
        category: str | None = None,
        recompute_ratio: float | None = None,
        **openai_params: Any,
    ) -> ChatResult:
        """A chat answer. `documents` (texts or `{"id", "text"}`) or `rag` (a collection name
        or `{"collection", "top_k"}`) give it context; the other keywords are the `ragkv`
        cache controls and any OpenAI parameter (`stop`, `seed`, `top_p`, ...)."""
        body = chat_body(
            messages,
            model=openai_params.pop("model", self.model),
            max_tokens=max_tokens,
            temperature=temperature,
            documents=documents,
            rag=rag,
            kv_reuse=kv_reuse,
            session_id=session_id,
            pin_ttl_s=pin_ttl_s,
            semantic_cache=semantic_cache,
            category=category,
            recompute_ratio=recompute_ratio,
            **openai_params,
        )
        return self._run(Call("POST", "/v1/chat/completions", json=body, parse=_chat_result))

    def rag(
        self,
        question: str,
        *,
        collection: str,
        top_k: int = 4,
        system: str | None = None,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        kv_reuse: str | None = None,
    ) -> RagAnswer:
        """Answer `question` from the `top_k` chunks of `collection` closest to it."""
        body: dict[str, Any] = {
            "question": question,
            "collection": collection,
            "top_k": top_k,
            "temperature": temperature,
        }
        if system is not None:
            body["system"] = system
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if kv_reuse is not None:
            body["ragkv"] = {"kv_reuse": kv_reuse}
        return self._run(Call("POST", "/v1/rag/chat", json=body, parse=_rag_answer))

    def search(self, collection: str, query: str, top_k: int = 5) -> list[SearchHit]:
        """The `top_k` chunks of `collection` closest in meaning to `query`, best first."""
        return self._run(
            Call(
                "POST",
                f"/v1/collections/{_segment(collection)}/search",
                json={"query": query, "top_k": top_k},
                parse=lambda r: [SearchHit.of(hit) for hit in r.json()["data"]],
            )
        )

    def embeddings(self, texts: str | Sequence[str], model: str = "all-MiniLM-L6-v2"):
        """Normalised embeddings of `texts` (one list of floats per text)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self._run(
            Call(
                "POST",
                "/v1/embeddings",
                json={"input": texts, "model": model},
                parse=lambda r: [item["embedding"] for item in r.json()["data"]],
            )
        )

    def models(self) -> list[dict[str, Any]]:
        """The models this gateway serves."""
        return self._run(Call("GET", "/v1/models", parse=lambda r: r.json()["data"]))


class Collections:
    """`client.collections`: create, list, get, delete."""

    def __init__(self, owner: API) -> None:
        self._owner = owner

    def create(self, name: str) -> Collection:
        """A new empty collection (ConflictError if the name is taken)."""
        call = Call("POST", "/v1/collections", json={"name": name}, parse=_collection)
        return self._owner._run(call)

    def list(self) -> list[Collection]:
        """The caller's collections."""
        parse = lambda r: [Collection.of(c) for c in r.json()["data"]]  # noqa: E731
        return self._owner._run(Call("GET", "/v1/collections", parse=parse))

    def get(self, name: str) -> Collection:
        """One collection (NotFoundError if absent)."""
        return self._owner._run(Call("GET", f"/v1/collections/{_segment(name)}", parse=_collection))

    def delete(self, name: str) -> bool:
        """Delete a collection with its documents; True when deleted."""
        parse = lambda r: bool(r.json()["deleted"])  # noqa: E731
        return self._owner._run(Call("DELETE", f"/v1/collections/{_segment(name)}", parse=parse))


def _collection(response: Any) -> Collection:
    return Collection.of(response.json())


class Documents:
    """`client.documents`: add (dicts or file paths), get, delete."""

    def __init__(self, owner: API) -> None:
        self._owner = owner

    def add(
        self, collection: str, documents: Sequence[DocumentLike], prewarm: bool = False
    ) -> IngestResult:
        """Add or replace documents: dicts (`text`, optional `id`, `metadata`) or paths of
        .txt/.md/.jsonl files (uploaded). `prewarm` computes their chunk KV afterwards."""
        path = f"/v1/collections/{_segment(collection)}/documents"
        params = {"prewarm": "true"} if prewarm else None
        files = [d for d in documents if not isinstance(d, dict)]
        if files and len(files) != len(documents):
            raise ValueError("give documents as dicts or as file paths, not both in one call")
        if files:
            uploads = [_upload(Path(f)) for f in files]
            call = Call("POST", path, params=params, files=uploads, parse=_ingest)
        else:
            call = Call("POST", path, params=params, json={"documents": list(documents)},
                        parse=_ingest)  # fmt: skip
        return self._owner._run(call)

    def get(self, collection: str, document_id: str) -> dict[str, Any]:
        """A stored document with its chunks (NotFoundError if absent)."""
        path = f"/v1/collections/{_segment(collection)}/documents/{_segment(document_id)}"
        return self._owner._run(Call("GET", path))

    def delete(self, collection: str, document_id: str) -> bool:
        """Delete a document, its chunks and their vectors; True when deleted."""
        path = f"/v1/collections/{_segment(collection)}/documents/{_segment(document_id)}"
        return self._owner._run(Call("DELETE", path, parse=lambda r: bool(r.json()["deleted"])))


def _ingest(response: Any) -> IngestResult:
    return IngestResult.of(response.json())


def _upload(path: Path) -> tuple[str, tuple[str, bytes, str]]:
    mime = mimetypes.guess_type(path.name)[0] or "text/plain"
    return ("files", (path.name, path.read_bytes(), mime))


class Cache:
    """`client.cache`: warm the semantic cache, dry-run lookups."""

    def __init__(self, owner: API) -> None:
        self._owner = owner

    def warm(
        self, entries: Sequence[dict[str, Any]], system_prompt: str | None = None
    ) -> list[dict[str, Any]]:
        """Store known `{"query", "response", "category"?, "ttl_s"?}` pairs; one outcome
        (`entry_id`, `stored`, `reason`) per entry."""
        body: dict[str, Any] = {"entries": list(entries)}
        if system_prompt is not None:
            body["system_prompt"] = system_prompt
        call = Call("POST", "/v1/cache/entries", json=body, parse=lambda r: r.json()["entries"])
        return self._owner._run(call)

    def lookup(
        self, query: str, category: str | None = None, system_prompt: str | None = None
    ) -> CacheLookup:
        """Would `query` hit, on which entry and how similar (counts nothing)."""
        body = {"query": query, "category": category, "system_prompt": system_prompt}
        body = {k: v for k, v in body.items() if v is not None}
        parse = lambda r: CacheLookup.of(r.json())  # noqa: E731
        return self._owner._run(Call("POST", "/v1/cache/lookup", json=body, parse=parse))


class Admin:
    """`client.admin` (admin key): stats, flush, category policies, feedback."""

    def __init__(self, owner: API) -> None:
        self._owner = owner

    def stats(self) -> dict[str, Any]:
        """Cache statistics per level (`semantic`, `prefix`, `chunk`)."""
        return self._owner._run(Call("GET", "/admin/cache/stats"))

    def flush(
        self,
        level: str = "all",
        tenant: str | None = None,
        category: str | None = None,
        collection: str | None = None,
    ) -> dict[str, Any]:
        """Drop cached entries of one level (`semantic`, `prefix`, `chunk`) or all; with
        `collection`, the cached answers built from that collection of `tenant`."""
        body = {"level": level, "tenant": tenant, "category": category, "collection": collection}
        body = {k: v for k, v in body.items() if v is not None}
        call = Call("POST", "/admin/cache/flush", json=body, parse=lambda r: r.json()["flushed"])
        return self._owner._run(call)

    def categories(self) -> dict[str, Any]:
        """The category policies in force (`categories`, `default_category`)."""
        return self._owner._run(Call("GET", "/admin/cache/categories"))

    def set_categories(self, categories: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Replace the category policies (persisted)."""
        body = {"categories": categories}
        return self._owner._run(Call("PUT", "/admin/cache/categories", json=body))

    def feedback(
        self, entry_id: int, correct: bool = False, similarity: float | None = None
    ) -> dict[str, Any]:
        """Report a served hit: wrong (default) drops the entry; both train verified mode."""
        body: dict[str, Any] = {"entry_id": entry_id, "correct": correct}
        if similarity is not None:
            body["similarity"] = similarity
        return self._owner._run(Call("POST", "/admin/cache/feedback", json=body))
