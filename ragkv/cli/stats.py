"""`ragkv stats`: the admin cache statistics of a running server as rich tables."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table

SEMANTIC_COLUMNS = ("lookups", "hits", "hit_rate", "stores", "evictions", "expirations",
                    "false_hit_reports", "guard_rejections", "entries", "bytes")  # fmt: skip
MAX_TENANTS = 20


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def _rows_table(title: str, first: str, rows: dict[str, dict[str, Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(first)
    for column in SEMANTIC_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    for name, row in rows.items():
        table.add_row(name, *(_cell(row.get(column)) for column in SEMANTIC_COLUMNS))
    return table


def _pairs_table(title: str, pairs: dict[str, Any]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in pairs.items():
        if not isinstance(value, dict):
            table.add_row(key.replace("_", " "), _cell(value))
    return table


def _tiers_table(tiers: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="chunk KV tiers", title_justify="left")
    columns = ("entries", "bytes", "max_bytes", "evictions")
    table.add_column("tier")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for tier, info in tiers.items():
        table.add_row(tier, *(_cell(info.get(column)) for column in columns))
    return table


def render(stats: dict[str, Any]) -> Group:
    """Tables of `/admin/cache/stats`: semantic by category and by tenant (top 20 by
    lookups), the prefix level, and the chunk level with its tiers."""
    parts: list[Any] = []
    semantic = stats.get("semantic") or {}
    categories = dict(semantic.get("categories") or {})
    if semantic.get("totals"):
        categories["(all)"] = semantic["totals"]
    parts.append(_rows_table("semantic cache by category", "category", categories))
    tenants = {
        tenant: _sum(by_category) for tenant, by_category in (semantic.get("tenants") or {}).items()
    }
    top = sorted(tenants.items(), key=lambda item: -item[1].get("lookups", 0))[:MAX_TENANTS]
    parts.append(_rows_table("semantic cache by tenant", "tenant", dict(top)))
    parts.append(_pairs_table("prefix KV (radix tree)", stats.get("prefix") or {}))
    chunk = stats.get("chunk")
    if chunk is None:
        parts.append(_pairs_table("chunk KV", {"status": "off"}))
    else:
        parts.append(_pairs_table("chunk KV", chunk))
        parts.append(_tiers_table(chunk.get("tiers") or {}))
        parts.append(_pairs_table("chunk KV events", chunk.get("counters") or {}))
    return Group(*parts)


def _sum(by_category: dict[str, dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for row in by_category.values():
        for key, value in row.items():
            if key != "hit_rate":
                total[key] = total.get(key, 0) + value
    lookups = total.get("lookups", 0)
    total["hit_rate"] = total.get("hits", 0) / lookups if lookups else 0.0
    return total
