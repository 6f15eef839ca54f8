"""Collections, documents, search and embeddings over real HTTP, with tenant keys."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import LiveServer

A = {"Authorization": "Bearer sk-tenant-a"}
B = {"Authorization": "Bearer sk-tenant-b"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.fixture
def collection(live_server: LiveServer) -> str:
    name = unique("kb")
    response = httpx.post(f"{live_server.url}/v1/collections", json={"name": name}, headers=A)
    assert response.status_code == 201, response.text
    docs = [
        {"id": "tower", "text": "The Eiffel Tower is in Paris.", "metadata": {"lang": "en"}},
        {"id": "river", "text": "The Danube flows through Vienna and Budapest."},
        {"id": "code", "text": "Guido van Rossum created the Python programming language."},
    ]
    url = f"{live_server.url}/v1/collections/{name}/documents"
    added = httpx.post(url, json={"documents": docs}, headers=A, timeout=120)
    assert added.status_code == 200, added.text
    assert added.json()["document_ids"] == ["tower", "river", "code"]
    return name


def test_collection_lifecycle(live_server: LiveServer, collection: str) -> None:
    base = f"{live_server.url}/v1/collections"
    listed = httpx.get(base, headers=A).json()
    assert collection in [c["name"] for c in listed["data"]]
    one = httpx.get(f"{base}/{collection}", headers=A).json()
    assert (one["num_documents"], one["num_chunks"], one["dimensions"]) == (3, 3, 384)
    error_of(httpx.post(base, json={"name": collection}, headers=A), 409)
    assert httpx.delete(f"{base}/{collection}", headers=A).json()["deleted"] is True
    assert error_of(httpx.get(f"{base}/{collection}", headers=A), 404)["type"] == "not_found_error"


def test_search_best_first(live_server: LiveServer, collection: str) -> None:
    url = f"{live_server.url}/v1/collections/{collection}/search"
    response = httpx.post(
        url, json={"query": "Which city has the Eiffel Tower?", "top_k": 2}, headers=A
    )
    data = response.json()["data"]
    assert [hit["document_id"] for hit in data][0] == "tower"
    assert len(data) == 2 and data[0]["score"] > data[1]["score"]
    assert data[0]["metadata"] == {"lang": "en"}
    assert data[0]["chunk_id"].startswith("chk_")


def test_documents_get_and_delete(live_server: LiveServer, collection: str) -> None:
    url = f"{live_server.url}/v1/collections/{collection}/documents"
    doc = httpx.get(f"{url}/river", headers=A).json()
    assert doc["text"].startswith("The Danube")
    (chunk,) = doc["chunks"]
    assert chunk["num_tokens"] == len(chunk["token_ids"]) > 0
    assert httpx.delete(f"{url}/river", headers=A).json() == {
        "id": "river", "object": "document", "deleted": True,
    }  # fmt: skip
    error_of(httpx.get(f"{url}/river", headers=A), 404)
    error_of(httpx.delete(f"{url}/river", headers=A), 404)


def test_tenants_cannot_see_each_other(live_server: LiveServer, collection: str) -> None:
    base = f"{live_server.url}/v1/collections"
    assert collection not in [c["name"] for c in httpx.get(base, headers=B).json()["data"]]
    error_of(httpx.get(f"{base}/{collection}", headers=B), 404)
    error_of(httpx.post(f"{base}/{collection}/search", json={"query": "Paris"}, headers=B), 404)
    error_of(httpx.get(f"{base}/{collection}/documents/tower", headers=B), 404)
    error_of(httpx.delete(f"{base}/{collection}", headers=B), 404)
    # B may use the same name for its own collection
    assert httpx.post(base, json={"name": collection}, headers=B).status_code == 201
    search = httpx.post(f"{base}/{collection}/search", json={"query": "Paris"}, headers=B)
    assert search.json()["data"] == []


def test_file_upload(live_server: LiveServer, collection: str) -> None:
    url = f"{live_server.url}/v1/collections/{collection}/documents"
    lines = [{"id": "j1", "text": "Jupiter is the largest planet."}, {"text": "Mars is red."}]
    files = [
        ("files", ("notes.txt", b"Bees make honey from nectar.", "text/plain")),
        ("files", ("guide.md", b"# Guide\n\nTea is brewed with hot water.", "text/markdown")),
        ("files", ("more.jsonl", "\n".join(json.dumps(x) for x in lines).encode(), "x/y")),
    ]
    response = httpx.post(url, files=files, headers=A, timeout=120)
    assert response.status_code == 200, response.text
    ids = response.json()["document_ids"]
    assert ids[:3] == ["notes.txt", "guide.md", "j1"] and ids[3].startswith("doc_")
    search = httpx.post(f"{url[: -len('/documents')]}/search", json={"query": "honey"}, headers=A)
    assert search.json()["data"][0]["document_id"] == "notes.txt"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"documents": [{"text": "   "}]}, 422),
        ({"documents": []}, 422),
        ({"documents": [{"text": "x" * (1024 * 1024 + 10)}]}, 413),
        ({"documents": [{"id": "a"}]}, 422),
        ({"docs": []}, 422),
    ],
    ids=["empty-text", "no-documents", "too-large", "no-text", "wrong-field"],
)
def test_bad_documents(
    live_server: LiveServer, collection: str, body: dict[str, object], status: int
) -> None:
    url = f"{live_server.url}/v1/collections/{collection}/documents"
    error = error_of(httpx.post(url, json=body, headers=A, timeout=60), status)
    assert error["message"]


def test_bad_uploads_and_content_types(live_server: LiveServer, collection: str) -> None:
    url = f"{live_server.url}/v1/collections/{collection}/documents"
    pdf = [("files", ("paper.pdf", b"%PDF-1.4", "application/pdf"))]
    assert "not supported" in error_of(httpx.post(url, files=pdf, headers=A), 415)["message"]
    text_body = httpx.post(url, content=b"hello", headers={**A, "content-type": "text/plain"})
    error_of(text_body, 415)
    bad_line = [("files", ("x.jsonl", b'{"id": 1, "text": 5}', "x/y"))]
    error_of(httpx.post(url, files=bad_line, headers=A), 422)
    latin1 = [("files", ("x.txt", "caf\xe9".encode("latin-1"), "text/plain"))]
    error_of(httpx.post(url, files=latin1, headers=A), 422)
    broken = httpx.post(
        url, content=b"{not json", headers={**A, "content-type": "application/json"}
    )
    error_of(broken, 400)


def test_bad_search_and_unknown_collection(live_server: LiveServer, collection: str) -> None:
    base = f"{live_server.url}/v1/collections"
    for top_k in (0, 101):
        body = {"query": "Paris", "top_k": top_k}
        error = error_of(httpx.post(f"{base}/{collection}/search", json=body, headers=A), 422)
        assert error["param"] == "top_k"
    missing = httpx.post(f"{base}/nope-{collection}/search", json={"query": "x"}, headers=A)
    assert "POST /v1/collections" in error_of(missing, 404)["message"]
    docs = {"documents": [{"text": "hello"}]}
    error_of(httpx.post(f"{base}/nope-{collection}/documents", json=docs, headers=A), 404)
    error_of(httpx.post(base, json={"name": "has space"}, headers=A), 422)


def test_embeddings_with_the_openai_client(live_server: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="sk-tenant-a")
    result = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=["a cat", "a kitten", "tax law"]
    )
    vectors = np.array([item.embedding for item in result.data])  # sent as base64 by the client
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert result.usage.prompt_tokens > 6


def test_embeddings_float_format_and_errors(live_server: LiveServer) -> None:
    url = f"{live_server.url}/v1/embeddings"
    one = httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": "hello"}, headers=A).json()
    assert one["object"] == "list" and len(one["data"][0]["embedding"]) == 384
    packed = httpx.post(
        url,
        json={"model": "all-MiniLM-L6-v2", "input": "hello", "encoding_format": "base64"},
        headers=A,
    ).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, one["data"][0]["embedding"], atol=1e-6)
    wrong = httpx.post(url, json={"model": "text-embedding-3-small", "input": "x"}, headers=A)
    assert error_of(wrong, 404)["code"] == "model_not_found"
    error_of(httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": []}, headers=A), 422)
    error_of(httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": [""]}, headers=A), 422)
    dims = {"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 12}
    error_of(httpx.post(url, json=dims, headers=A), 422)
    error_of(httpx.post(url, json={"model": "all-MiniLM-L6-v2", "input": "x"}), 401)
