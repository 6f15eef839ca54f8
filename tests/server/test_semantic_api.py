"""Semantic cache over real HTTP: warm, dry-run lookup, tenant isolation, admin, metrics."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from ragkv.server.app import build_app
from tests.conftest import ADMIN_KEY, LiveServer, secured_settings, start_server

A, B = {"Authorization": "Bearer sk-tenant-a"}, {"Authorization": "Bearer sk-tenant-b"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CAPITAL = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = secured_settings(tmp_path_factory.mktemp("semantic-api"))
    live = start_server(build_app(settings), settings)
    yield live
    live.stop()


def warm(server: LiveServer, headers: dict[str, str], *entries: dict) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/cache/entries", json={"entries": list(entries)}, headers=headers,
        timeout=60,
    )  # fmt: skip


def lookup(server: LiveServer, headers: dict[str, str], **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/cache/lookup", json=body, headers=headers, timeout=60)


def test_warm_then_lookup_and_tenant_isolation(server: LiveServer) -> None:
    response = warm(server, A, {"query": CAPITAL, "response": "Paris."})
    assert response.status_code == 200, response.text
    (entry,) = response.json()["entries"]
    assert entry["stored"] and entry["category"] == "general"
    hit = lookup(server, A, query="What's the capital city of France?").json()
    assert hit["hit"] and hit["entry_id"] == entry["entry_id"] and hit["response"] == "Paris."
    assert hit["similarity"] >= hit["threshold"]
    other = lookup(server, B, query=CAPITAL).json()  # the identical query, another tenant
    assert not other["hit"] and other["entry_id"] is None


def test_admin_stats_feedback_flush(server: LiveServer) -> None:
    warmed = warm(server, B, {"query": "How do magnets work?", "response": "Fields.",
                              "category": "faq", "ttl_s": 3600})  # fmt: skip
    entry_id = warmed.json()["entries"][0]["entry_id"]
    stats = httpx.get(f"{server.url}/admin/cache/stats", headers=ADMIN).json()["semantic"]
    assert stats["tenants"]["tenant-b"]["faq"]["entries"] == 1
    assert httpx.get(f"{server.url}/admin/cache/stats", headers=B).status_code == 403
    feedback = httpx.post(
        f"{server.url}/admin/cache/feedback", json={"entry_id": entry_id}, headers=ADMIN
    )
    assert feedback.status_code == 200 and feedback.json()["dropped"]
    stats = httpx.get(f"{server.url}/admin/cache/stats", headers=ADMIN).json()["semantic"]
    assert stats["tenants"]["tenant-b"]["faq"]["false_hit_reports"] == 1
    assert stats["tenants"]["tenant-b"]["faq"]["entries"] == 0
    warm(server, B, {"query": "Why is the sky blue?", "response": "Rayleigh."})
    flushed = httpx.post(f"{server.url}/admin/cache/flush", json={"tenant": "tenant-b"},
                         headers=ADMIN)  # fmt: skip
    assert flushed.json()["flushed"]["semantic"] == 1
    assert not lookup(server, B, query="Why is the sky blue?").json()["hit"]


def test_categories_get_put(server: LiveServer) -> None:
    url = f"{server.url}/admin/cache/categories"
    table = httpx.get(url, headers=ADMIN).json()
    assert {"general", "faq", "code", "time_sensitive", "math", "personal"} <= set(
        table["categories"]
    )
    table["categories"]["faq"]["threshold"] = 0.9
    updated = httpx.put(url, json=table, headers=ADMIN)
    assert updated.status_code == 200 and updated.json()["categories"]["faq"]["threshold"] == 0.9
    table["categories"]["faq"]["floor"] = 0.95  # above the threshold
    assert httpx.put(url, json=table, headers=ADMIN).status_code == 422
    table["categories"]["faq"]["floor"] = 0.85
    del table["categories"]["general"]  # the default category must stay
    assert httpx.put(url, json=table, headers=ADMIN).status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/cache/lookup", {"query": ""}, 422),
        ("/v1/cache/lookup", {"query": "   "}, 400),
        ("/v1/cache/lookup", {"query": CAPITAL, "category": "astrology"}, 400),
        ("/v1/cache/lookup", {"query": 42}, 422),
        ("/v1/cache/entries", {"entries": [{"query": "q", "response": "r", "ttl_s": -5}]}, 422),
        ("/v1/cache/entries", {"entries": []}, 422),
        ("/v1/cache/entries", {"entries": "nope"}, 422),
    ],
)
def test_bad_input_gets_envelope(server: LiveServer, path: str, body: dict, status: int) -> None:
    response = httpx.post(f"{server.url}{path}", json=body, headers=A, timeout=60)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_metrics_exposed(server: LiveServer) -> None:
    warm(server, A, {"query": "How do bees make honey?", "response": "Nectar."})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'ragkv_semantic_cache_events_total{category="general",event="stores"}' in text
    assert "# TYPE ragkv_semantic_cache_lookup_seconds histogram" in text
