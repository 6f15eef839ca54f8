"""Admin operations of the semantic cache: entries by id, feedback, flush, expiry sweep,
policies, stats.

Composed over one `SemanticCache` (kept apart so each file has one job): it uses the cache's
lock, store, partitions, policies, stats and its one deletion path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.partitions import Partition
from ragkv.cache.semantic.stats import EVENTS
from ragkv.cache.semantic.verified import VERIFIED_STATE
from ragkv.errors import NotFound
from ragkv.settings import CategoryPolicy


class SemanticCacheAdmin:
    """Operations behind /admin/cache/* on `cache`. Blocking and thread-safe, like the cache."""

    def __init__(self, cache: SemanticCache) -> None:
        self.cache = cache

    def get(self, entry_id: int) -> dict[str, Any] | None:
        """One entry as a dict (query, response, category, times, hits, bytes) or None."""
        stored = self.cache.store.get(entry_id)
        if stored is None:
            return None
        meta = stored.meta
        return {
            "entry_id": entry_id,
            "query": stored.query,
            "response": stored.response,
            "category": stored.category,
            "created_at": meta.created_at,
            "expires_at": None if math.isinf(meta.expires_at) else meta.expires_at,
            "hits": meta.hits,
            "bytes": meta.bytes,
        }

    def delete(self, entry_id: int) -> dict[str, Any]:
        """Remove one entry everywhere; returns what was removed. NotFound if absent."""
        with self.cache.lock:
            entry, part = self._entry(entry_id)
            self.cache.delete_entries(part, [entry_id])
        entry["tenant"] = part.key.tenant
        return entry

    def feedback(
        self, entry_id: int, correct: bool, similarity: float | None = None
    ) -> dict[str, Any]:
        """Learn from a served hit: a wrong one drops the entry and counts a false-hit report.

        With verified mode on, (similarity, correct) also trains the learned thresholds.
        """
        cache = self.cache
        with cache.lock:
            _, part = self._entry(entry_id)
            tenant, category = part.key.tenant, part.key.category
            if cache.verified is not None and similarity is not None:
                cache.verified.observe(entry_id, category, float(similarity), bool(correct))
                cache.store.put_state(VERIFIED_STATE, cache.verified.export())
            if not correct:
                cache.delete_entries(part, [entry_id])
                cache.stats.count(tenant, category, "false_hit_reports")
        return {"entry_id": entry_id, "tenant": tenant, "category": category,
                "dropped": not correct}  # fmt: skip

    def _entry(self, entry_id: int) -> tuple[dict[str, Any], Partition]:
        """The entry and its partition (call with the lock held); NotFound if absent."""
        entry = self.get(entry_id)
        part = self.cache.partition_of(entry_id)
        if entry is None or part is None:
            raise NotFound(f"cache entry {entry_id} does not exist (it may have expired)")
        return entry, part

    def flush(self, tenant: str | None = None, category: str | None = None) -> int:
        """Drop every entry of the matching partitions (None matches all); returns the count."""
        cache, removed = self.cache, 0
        with cache.lock:
            for part in list(cache.partitions.by_id.values()):
                if tenant is not None and part.key.tenant != tenant:
                    continue
                if category is not None and part.key.category != category:
                    continue
                ids = list(part.meta)
                cache.store.flush_partition(part.partition_id, ids)
                cache.forget_usage(ids)
                removed += len(ids)
                part.meta.clear()
                part.bytes = 0
                part.index = None
                cache.partitions.writes_since_save += 1
        return removed

    def invalidate_sources(self, collection: str, chunk_ids: Sequence[str] | None = None) -> int:
        """Drop every answer generated from one of `chunk_ids` of `collection` (None: from
        any of its chunks), because those chunks were replaced or deleted; returns the count.

        Each partition's entries go in one lmdb transaction with their source-index keys.
        """
        cache, removed = self.cache, 0
        with cache.lock:
            doomed = cache.store.entries_from(collection, chunk_ids)
            by_partition: dict[int, list[int]] = {}
            for entry_id in doomed:
                part = cache.partition_of(entry_id)
                if part is not None:
                    by_partition.setdefault(part.partition_id, []).append(entry_id)
            for partition_id, entry_ids in by_partition.items():
                part = cache.partitions.by_id[partition_id]
                cache.delete_entries(part, sorted(entry_ids))
                cache.stats.count(part.key.tenant, part.key.category, "invalidations",
                                  len(entry_ids))  # fmt: skip
                removed += len(entry_ids)
        return removed

    def sweep_expired(self) -> int:
        """Delete every expired entry now (lookups also drop the ones they meet)."""
        cache = self.cache
        now, removed = cache.clock(), 0
        with cache.lock:
            for part in list(cache.partitions.by_id.values()):
                expired = [i for i, m in part.meta.items() if m.expires_at <= now]
                cache.delete_entries(part, expired)
                cache.stats.count(part.key.tenant, part.key.category, "expirations", len(expired))
                removed += len(expired)
        return removed

    # -- policies, load, persistence ------------------------------------------------------------

    def categories(self) -> dict[str, CategoryPolicy]:
        """The category policies in force."""
        return self.cache.policies.all()

    def default_category(self) -> str:
        """The category a request without one falls into (fixed at start)."""
        return self.cache.policies.default_category

    def set_categories(self, policies: dict[str, CategoryPolicy]) -> None:
        """Replace the policy table (persisted in lmdb, so it survives a restart)."""
        cache = self.cache
        with cache.lock:
            cache.policies.replace(policies)
            cache.store.put_state("policies", {n: p.model_dump() for n, p in policies.items()})

    def stats_report(self) -> dict[str, Any]:
        """Per tenant and category: lookups, hits, hit rate, false-hit reports, entries, bytes,
        evictions, expirations; plus totals per category and the load-adaptation state."""
        cache = self.cache
        counts = cache.stats.snapshot()
        with cache.lock:
            sizes = cache.partitions.summary()
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
                "signal": cache.adapter.load,
                "relaxed": cache.adapter.relaxed,
                "relaxation": cache.adapter.relaxation(),
            },
            "verified": None if cache.verified is None else cache.verified.snapshot(),
            "start": cache.start_report._asdict(),
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
