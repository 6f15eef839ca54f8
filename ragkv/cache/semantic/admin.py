"""Admin operations of the semantic cache: feedback, flush, expiry sweep, policies, stats.

A mixin of `SemanticCache` (kept apart so each file has one job): it uses the cache's lock,
store, partitions, policies, stats and single deletion path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragkv.cache.semantic.stats import EVENTS
from ragkv.cache.semantic.verified import VERIFIED_STATE
from ragkv.errors import NotFound
from ragkv.settings import CategoryPolicy

if TYPE_CHECKING:
    from ragkv.cache.semantic.cache import SemanticCache


class SemanticCacheAdmin:
    """Operations behind /admin/cache/* (mixed into `SemanticCache`)."""

    def feedback(
        self: SemanticCache, entry_id: int, correct: bool, similarity: float | None = None
    ) -> dict[str, Any]:
        """Learn from a served hit: a wrong one drops the entry and counts a false-hit report.

        With verified mode on, (similarity, correct) also trains the learned thresholds.
        """
        with self._lock:
            entry = self.get(entry_id)
            parts = self._partition_of(entry_id)
            if entry is None or not parts:
                raise NotFound(f"cache entry {entry_id} does not exist (it may have expired)")
            tenant, category = parts[0].key.tenant, parts[0].key.category
            if self.verified is not None and similarity is not None:
                self.verified.observe(entry_id, category, float(similarity), bool(correct))
                self.store.put_state(VERIFIED_STATE, self.verified.export())
            if not correct:
                self._delete(parts[0], [entry_id])
                self.stats.count(tenant, category, "false_hit_reports")
        return {"entry_id": entry_id, "tenant": tenant, "category": category,
                "dropped": not correct}  # fmt: skip

    def flush(self: SemanticCache, tenant: str | None = None, category: str | None = None) -> int:
        """Drop every entry of the matching partitions (None matches all); returns the count."""
        removed = 0
        with self._lock:
            for part in list(self.partitions.by_id.values()):
                if tenant is not None and part.key.tenant != tenant:
                    continue
                if category is not None and part.key.category != category:
                    continue
                ids = list(part.meta)
                self.store.flush_partition(part.partition_id, ids)
                for entry_id in ids:
                    self._pending_usage.pop(entry_id, None)
                removed += len(ids)
                part.meta.clear()
                part.bytes = 0
                part.index = None
                self.partitions.writes_since_save += 1
        return removed

    def sweep_expired(self: SemanticCache) -> int:
        """Delete every expired entry now (lookups also drop the ones they meet)."""
        now, removed = self.clock(), 0
        with self._lock:
            for part in list(self.partitions.by_id.values()):
                expired = [i for i, m in part.meta.items() if m.expires_at <= now]
                self._delete(part, expired)
                self.stats.count(part.key.tenant, part.key.category, "expirations", len(expired))
                removed += len(expired)
        return removed

    # -- policies, load, persistence ------------------------------------------------------------

    def categories(self: SemanticCache) -> dict[str, CategoryPolicy]:
        """The category policies in force."""
        return self.policies.all()

    def set_categories(self: SemanticCache, policies: dict[str, CategoryPolicy]) -> None:
        """Replace the policy table (persisted in lmdb, so it survives a restart)."""
        with self._lock:
            self.policies.replace(policies)
            self.store.put_state("policies", {n: p.model_dump() for n, p in policies.items()})

    def stats_report(self: SemanticCache) -> dict[str, Any]:
        """Per tenant and category: lookups, hits, hit rate, false-hit reports, entries, bytes,
        evictions, expirations; plus totals per category and the load-adaptation state."""
        counts = self.stats.snapshot()
        with self._lock:
            sizes = self.partitions.summary()
        tenants: dict[str, dict[str, dict[str, Any]]] = {}
        by_category: dict[str, dict[str, Any]] = {}
        totals: dict[str, Any] = _row({}, {"entries": 0, "bytes": 0})
        for tenant, category in sorted(set(counts) | set(sizes)):
            row = _row(counts.get((tenant, category), {}), sizes.get((tenant, category), {}))
            tenants.setdefault(tenant, {})[category] = row
            by_category[category] = _add(by_category.get(category), row)
            totals = _add(totals, row)
        return {
            "tenants": tenants,
            "categories": by_category,
            "totals": totals,
            "load": {
                "signal": self.adapter.load,
                "relaxed": self.adapter.relaxed,
                "relaxation": self.adapter.relaxation(),
            },
            "verified": None if self.verified is None else self.verified.snapshot(),
            "start": self.start_report._asdict(),
        }


def _row(counts: dict[str, int], sizes: dict[str, int]) -> dict[str, Any]:
    row: dict[str, Any] = {event: int(counts.get(event, 0)) for event in EVENTS}
    row["entries"] = int(sizes.get("entries", 0))
    row["bytes"] = int(sizes.get("bytes", 0))
    row["hit_rate"] = _rate(row)
    return row


def _add(total: dict[str, Any] | None, row: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return dict(row)
    merged = {key: total[key] + row[key] for key in row if key != "hit_rate"}
    merged["hit_rate"] = _rate(merged)
    return merged


def _rate(row: dict[str, Any]) -> float:
    return row["hits"] / row["lookups"] if row["lookups"] else 0.0
