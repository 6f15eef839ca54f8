"""`ragkv stats` against a live server: JSON for scripts, tables for people."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from ragkv.cli.main import app
from tests.conftest import ADMIN_KEY, LiveServer


def test_stats_json_and_tables(live_server: LiveServer) -> None:
    runner = CliRunner()
    raw = runner.invoke(app, ["stats", "--url", live_server.url, "--api-key", ADMIN_KEY, "--json"])
    assert raw.exit_code == 0, raw.output
    report = json.loads(raw.output)
    assert {"semantic", "prefix", "chunk"} <= set(report)
    tables = runner.invoke(app, ["stats", "--url", live_server.url, "--api-key", ADMIN_KEY])
    assert tables.exit_code == 0, tables.output
    for title in ("semantic cache by category", "prefix KV", "chunk KV"):
        assert title in tables.output
    assert "pool pages" in tables.output


def test_stats_needs_the_admin_key(live_server: LiveServer) -> None:
    result = CliRunner().invoke(
        app, ["stats", "--url", live_server.url, "--api-key", "sk-tenant-a"]
    )
    assert result.exit_code == 1 and "403" in result.output


def test_ask_a_collection_through_the_server(live_server: LiveServer) -> None:
    import ragkv

    with ragkv.Client(live_server.url, api_key="sk-tenant-b") as client:
        if "cli-ask" not in [c.name for c in client.collections.list()]:
            client.collections.create("cli-ask")
        text = "The Danube flows through ten countries, more than any other river."
        client.documents.add("cli-ask", [{"id": "danube", "text": text}])
    args = ["ask", "Which river flows through the most countries?", "--collection", "cli-ask",
            "--url", live_server.url, "--api-key", "sk-tenant-b", "--max-tokens", "16"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[1] danube" in result.output and "chunk tokens reused" in result.output
    missing = CliRunner().invoke(app, [*args[:2], "--collection", "no-such", *args[4:]])
    assert missing.exit_code == 1 and "404" in missing.output
