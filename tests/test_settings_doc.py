"""The README's configuration table is the one generated from `Settings`."""

from __future__ import annotations

from pathlib import Path

from ragkv.settings_doc import markdown_table, rows

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_has_a_row() -> None:
    table = markdown_table()
    assert "`engine.kv_cache_mb`" in table
    assert "`RAGKV_SERVER__PORT`" in table
    assert len(rows()) > 40


def test_readme_table_matches_the_code() -> None:
    text = README.read_text()
    missing = [row for row in rows() if row not in text]
    assert not missing, "README is stale; regenerate with python -m ragkv.settings_doc:\n" + (
        "\n".join(missing[:5])
    )
