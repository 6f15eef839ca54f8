"""deploy/grafana/ragkv.json queries only metrics the gateway exports, and deploy/prometheus.yml
scrapes where a default gateway listens."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ragkv.settings import Settings
from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "ragkv.json"
METRIC_NAME = re.compile(r"\bragkv_[a-z0-9_]+\b")


def panels() -> list[dict]:
    return [
        panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel["type"] != "row"
    ]


def queried_metrics() -> set[str]:
    return {
        name
        for panel in panels()
        for target in panel["targets"]
        for name in METRIC_NAME.findall(target["expr"])
    }


@pytest.fixture(scope="module")
def exported(live_server: LiveServer) -> set[str]:
    """Sample names in /metrics after one RAG chat: semantic lookup, engine, chunk KV."""
    body = {
        "messages": [{"role": "user", "content": "What does the Grafana test document say?"}],
        "documents": [{"text": "The Grafana test document says that the sky is green. " * 4}],
        "max_tokens": 2,
        "temperature": 0,
    }
    headers = {"Authorization": "Bearer sk-tenant-b"}
    response = httpx.post(
        f"{live_server.url}/v1/chat/completions", json=body, headers=headers, timeout=120
    )
    assert response.status_code == 200, response.text
    text = httpx.get(f"{live_server.url}/metrics", timeout=60).text
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_queried_metric_is_exported(exported: set[str]) -> None:
    queried = queried_metrics()
    assert len(queried) >= 20
    assert sorted(queried - exported) == []


def test_dashboard_is_well_formed() -> None:
    document = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    assert document["templating"]["list"][0]["type"] == "datasource"
    for panel in panels():
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(target["expr"].strip() for target in panel["targets"])


def test_prometheus_scrapes_the_default_gateway() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    port = Settings.load().server.port
    assert job["static_configs"][0]["targets"] == [f"127.0.0.1:{port}"]
