"""Category-aware semantic cache: vectors in, cached answers out (no model, no HTTP here).

`lookup` and `store` take the query's normalised embedding; the caller embeds. Every call is
blocking (lmdb, hnswlib) and thread-safe: call it from a worker thread in async code. A
partition is (tenant, model, template hash, category); nothing crosses partitions, so one
tenant never sees another's entries.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from ragkv.cache.semantic.adaptive import LoadAdapter
from ragkv.cache.semantic.categories import CategoryClassifier, EmbedFn, PolicyTable
from ragkv.cache.semantic.eviction import choose_victims
from ragkv.cache.semantic.guard import guard_conflict
from ragkv.cache.semantic.index import IndexFiles
from ragkv.cache.semantic.partitions import Partition, PartitionKey, PartitionSet
from ragkv.cache.semantic.stats import SemanticCacheStats
from ragkv.cache.semantic.store import EntryMeta, NewEntry, SemanticStore, expires_at
from ragkv.cache.semantic.types import (
    CacheHit,
    CacheWrite,
    LookupResult,
    Sources,
    StoreResult,
    check_query,
    check_vector,
)
from ragkv.cache.semantic.verified import VERIFIED_STATE, VerifiedThresholds
from ragkv.errors import InvalidRequest
from ragkv.settings import CategoryPolicy, SemanticCacheSettings

_USAGE_FLUSH_EVERY = 1000


@dataclass
class _Planned:
    write: CacheWrite
    category: str
    vector: np.ndarray
    size: int


class SemanticCache:
    """The semantic cache of one process, stored under `path` (lmdb + index files)."""

    def __init__(
        self,
        settings: SemanticCacheSettings,
        path: Path,
        *,
        embed: EmbedFn | None = None,
        clock: Callable[[], float] = time.time,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """Open (or create) the cache; restores indexes without rebuilding intact ones.

        `embed` embeds classifier examples (texts -> `[n, dim]` normalised); `clock` gives
        seconds (TTL, LRU and load hysteresis use it; inject one in tests).
        """
        self.settings = settings
        self.clock = clock
        self.lock = threading.RLock()
        self.store = SemanticStore(
            path / "lmdb", settings.lmdb_map_size_bytes, settings.durable_writes
        )
        saved = self.store.get_state("policies")
        policies = settings.categories
        if saved:
            policies = {name: CategoryPolicy(**fields) for name, fields in saved.items()}
        self.policies = PolicyTable(policies, settings.default_category)
        self.classifier = CategoryClassifier(
            settings.classifier_examples, self.policies, settings.classifier_min_similarity, embed
        )
        self.adapter = LoadAdapter(
            settings.load_high, settings.load_low, settings.load_min_dwell_s, clock
        )
        self.verified = None
        if settings.verified:
            self.verified = VerifiedThresholds(
                settings.verified_delta, settings.verified_min_observations
            )
            self.verified.load(self.store.get_state(VERIFIED_STATE))
        self.stats = SemanticCacheStats(registry)
        self.partitions = PartitionSet(self.store, IndexFiles(path / "index"), settings)
        self._pending_usage: dict[int, EntryMeta] = {}
        with self.lock:
            self.start_report = self.partitions.open()

    # -- reading --------------------------------------------------------------------------------

    def classify(self, query: str, vector: np.ndarray | None) -> str:
        """The category a query falls in (rules, then nearest example centroid)."""
        return self.classifier.classify(query, vector)

    def lookup(
        self,
        tenant: str,
        model: str,
        template_hash: str,
        query: str,
        vector: np.ndarray,
        category: str | None = None,
        record: bool = True,
    ) -> LookupResult:
        """Find a cached answer for `query` (`vector: [dim]`, its embedding) in its partition.

        With `record` (the default) the lookup counts in the stats and the entry's hit count;
        `record=False` is a dry run. Raises InvalidRequest for an empty query, a bad vector or
        an unknown category.
        """
        started = time.perf_counter()
        query, vector = check_query(query), check_vector(vector)
        category = self._category(query, vector, category)
        policy = self.policies.get(category)
        threshold = self.adapter.threshold(policy)
        if not policy.cacheable:
            result = LookupResult(None, category, threshold, None, None, "not_cacheable")
            expired, guarded = [], 0
        else:
            key = PartitionKey(tenant, model, template_hash, category)
            with self.lock:
                result, expired, guarded = self._search(
                    key, query, vector, category, policy, threshold, record
                )
                part = self.partitions.get(key)
                if expired and part is not None:
                    self.delete_entries(part, expired)
        self.stats.count(tenant, category, "expirations", len(expired))
        if record:
            self.stats.count(tenant, category, "lookups")
            self.stats.count(tenant, category, "hits" if result.hit else "misses")
            self.stats.count(tenant, category, "guard_rejections", guarded)
            elapsed_s = time.perf_counter() - started
            self.stats.observe_lookup(elapsed_s, result.hit is not None, result.similarity)
        return result

    def _search(
        self,
        key: PartitionKey,
        query: str,
        vector: np.ndarray,
        category: str,
        policy: CategoryPolicy,
        threshold: float,
        record: bool,
    ) -> tuple[LookupResult, list[int], int]:
        part = self.partitions.get(key)
        if part is None or part.index is None:
            return LookupResult(None, category, threshold, None, None, "no_entries"), [], 0
        candidates = part.index.search(vector, self.settings.candidates_k)
        if not candidates:
            return LookupResult(None, category, threshold, None, None, "no_entries"), [], 0
        best_id, best_similarity = candidates[0]
        now = self.clock()
        reason, expired, guarded = "below_threshold", [], 0
        for entry_id, similarity in candidates:
            meta = part.meta.get(entry_id)
            if meta is None or similarity < self._needed(entry_id, category, policy, threshold):
                continue
            if meta.expires_at <= now:
                expired.append(entry_id)
                reason = "expired"
                continue
            stored = self.store.get(entry_id)
            if stored is None:
                continue
            conflict = guard_conflict(query, stored.query) if policy.guard else None
            if conflict is not None:
                reason, guarded = f"guard_{conflict}", guarded + 1
                continue
            if record:
                meta.hits += 1
                meta.last_used = now
                self._note_usage(entry_id, meta)
            hit = CacheHit(
                entry_id, stored.query, stored.response, similarity, category, meta.created_at
            )
            result = LookupResult(hit, category, threshold, similarity, entry_id, "hit")
            return result, expired, guarded
        result = LookupResult(None, category, threshold, best_similarity, best_id, reason)
        return result, expired, guarded

    def _needed(
        self, entry_id: int, category: str, policy: CategoryPolicy, threshold: float
    ) -> float:
        if self.verified is None:
            return threshold
        learned = self.verified.threshold(entry_id, category, policy.threshold, policy.floor)
        # Load may relax a learned threshold too, but never below the floor.
        return max(policy.floor, learned - (policy.threshold - threshold))

    # -- writing --------------------------------------------------------------------------------

    def store_answer(
        self,
        tenant: str,
        model: str,
        template_hash: str,
        query: str,
        vector: np.ndarray,
        response: str,
        category: str | None = None,
        ttl_s: float | None = None,
        sources: Sources | None = None,
    ) -> StoreResult:
        """Cache one answer; see `store_many`."""
        write = CacheWrite(query, response, vector, category, ttl_s, sources)
        return self.store_many(tenant, model, template_hash, [write])[0]

    def store_many(
        self, tenant: str, model: str, template_hash: str, writes: Sequence[CacheWrite]
    ) -> list[StoreResult]:
        """Cache answers in one lmdb transaction (all or nothing); one result per write.

        Every write is checked first (InvalidRequest: empty query, bad vector, unknown
        category, TTL <= 0). A write to a non-cacheable category, or bigger than its
        category's `max_bytes`, is refused with a reason, not an error. An identical query
        already cached is replaced. Quotas are enforced by evicting (expired entries first,
        then by the category's LRU/LFU order).
        """
        planned = [self._plan(write) for write in writes]
        results: list[StoreResult | None] = [None] * len(planned)
        groups: dict[PartitionKey, list[int]] = {}
        for position, plan in enumerate(planned):
            policy = self.policies.get(plan.category)
            if not policy.cacheable:
                results[position] = StoreResult(None, plan.category, "not_cacheable", 0)
            elif plan.size > policy.max_bytes:
                results[position] = StoreResult(None, plan.category, "too_large", 0)
            else:
                key = PartitionKey(tenant, model, template_hash, plan.category)
                groups.setdefault(key, []).append(position)
        with self.lock:
            self._write_groups(groups, planned, results)
            if self.partitions.writes_since_save >= self.settings.index_save_every_writes:
                self.save()
        return [r if r is not None else StoreResult(None, "", "skipped", 0) for r in results]

    def _plan(self, write: CacheWrite) -> _Planned:
        query, vector = check_query(write.query), check_vector(write.vector)
        if not isinstance(write.response, str):
            raise InvalidRequest("response must be a string", param="response")
        if write.ttl_s is not None and not (
            isinstance(write.ttl_s, int | float) and write.ttl_s > 0
        ):
            raise InvalidRequest("ttl_s must be a positive number of seconds", param="ttl_s")
        category = self._category(query, vector, write.category)
        size = len(query.encode()) + len(write.response.encode()) + vector.nbytes
        return _Planned(write._replace(query=query), category, vector, size)

    def _write_groups(
        self,
        groups: dict[PartitionKey, list[int]],
        planned: list[_Planned],
        results: list[StoreResult | None],
    ) -> None:
        """Write the groups' entries in one lmdb transaction, evicting for quotas, then
        update indexes, memory and stats; fills `results`."""
        now = self.clock()
        adds: list[NewEntry] = []
        add_positions: list[int] = []
        deletes: list[tuple[int, int]] = []
        evictions: dict[PartitionKey, list[int]] = {}
        for key, positions in groups.items():
            part = self.partitions.get_or_create(key)
            policy = self.policies.get(key.category)
            # Within one batch the last write of a query wins; at most max_entries are kept.
            latest = {planned[p].write.query: p for p in positions}
            positions = sorted(latest.values())[-policy.max_entries :]
            replaced = self.partitions.same_queries(
                part, [planned[p].write.query for p in positions],
                np.stack([planned[p].vector for p in positions]),
            )  # fmt: skip
            incoming = sum(planned[p].size for p in positions)
            # A category's quota is the tenant's, across every model and template it uses.
            meta, live_bytes = self.partitions.quota_scope(key)
            victims = choose_victims(meta, live_bytes, policy, len(positions), incoming,
                                     replaced, now)  # fmt: skip
            evictions[key] = victims
            deletes.extend((part.partition_id, entry_id) for entry_id in replaced)
            deletes.extend((meta[entry_id].partition_id, entry_id) for entry_id in victims)
            for position in positions:
                plan = planned[position]
                ttl_s = plan.write.ttl_s if plan.write.ttl_s is not None else policy.ttl_s
                meta = EntryMeta(part.partition_id, now, expires_at(now, ttl_s), now, 0, plan.size)
                adds.append(NewEntry(plan.write.query, plan.write.response, plan.category,
                                     plan.vector, meta, plan.write.sources))  # fmt: skip
                add_positions.append(position)
        if not adds:
            return
        ids, _ = self.store.write(adds, deletes)
        for _, entry_id in deletes:
            self._forget(entry_id)
        self.partitions.add_entries(ids, adds)
        for entry_id, position, entry in zip(ids, add_positions, adds, strict=True):
            results[position] = StoreResult(entry_id, entry.category, "stored", 0)
        self.partitions.writes_since_save += len(adds) + len(deletes)
        self._count_writes(groups, evictions, planned, results)

    def _count_writes(
        self,
        groups: dict[PartitionKey, list[int]],
        evictions: dict[PartitionKey, list[int]],
        planned: list[_Planned],
        results: list[StoreResult | None],
    ) -> None:
        """Stores and evictions in the stats; writes superseded within the batch marked."""
        for key, victims in evictions.items():
            self.stats.count(key.tenant, key.category, "evictions", len(victims))
            first = next((p for p in groups[key] if results[p] is not None), None)
            if first is not None and victims:
                results[first] = results[first]._replace(evicted=len(victims))  # type: ignore[union-attr]
        for key, positions in groups.items():
            stored = sum(1 for p in positions if results[p] is not None)
            self.stats.count(key.tenant, key.category, "stores", stored)
        for position, plan in enumerate(planned):
            if results[position] is None:
                results[position] = StoreResult(None, plan.category, "superseded_in_batch", 0)

    # -- deleting -------------------------------------------------------------------------------

    def delete_entries(self, part: Partition, entry_ids: Sequence[int]) -> None:
        """The one deletion path: lmdb first (one transaction), then index and memory."""
        if not entry_ids:
            return
        self.store.write([], [(part.partition_id, entry_id) for entry_id in entry_ids])
        for entry_id in entry_ids:
            self._forget(entry_id)
        self.partitions.writes_since_save += len(entry_ids)

    def _forget(self, entry_id: int) -> None:
        for part in self._holding(entry_id):
            meta = part.meta.pop(entry_id, None)
            if meta is not None:
                part.bytes -= meta.bytes
            if part.index is not None:
                part.index.delete(entry_id)
        self._pending_usage.pop(entry_id, None)
        if self.verified is not None:
            self.verified.forget_entry(entry_id)

    def _holding(self, entry_id: int) -> list[Partition]:
        return [p for p in self.partitions.by_id.values() if entry_id in p.meta]

    def partition_of(self, entry_id: int) -> Partition | None:
        """The partition holding `entry_id` (call with `lock` held), or None."""
        holding = self._holding(entry_id)
        return holding[0] if holding else None

    def forget_usage(self, entry_ids: Sequence[int]) -> None:
        """Drop unsaved hit counts of entries that are gone (call with `lock` held)."""
        for entry_id in entry_ids:
            self._pending_usage.pop(entry_id, None)

    def set_load(self, load: float) -> None:
        """Feed the engine's load signal (0 idle .. 1 saturated) to threshold adaptation."""
        self.adapter.update(load)

    def _note_usage(self, entry_id: int, meta: EntryMeta) -> None:
        self._pending_usage[entry_id] = meta
        if len(self._pending_usage) >= _USAGE_FLUSH_EVERY:
            self._flush_usage()

    def _flush_usage(self) -> None:
        pending, self._pending_usage = self._pending_usage, {}
        self.store.update_usage(list(pending.items()))

    def save(self) -> None:
        """Persist hit counts and every changed index (checksummed, with the lmdb sequence)."""
        with self.lock:
            self._flush_usage()
            self.partitions.save()

    def close(self) -> None:
        """Save and close; the cache must not be used afterwards."""
        with self.lock:
            self.save()
            self.store.close()

    def _category(self, query: str, vector: np.ndarray, category: str | None) -> str:
        if category is None:
            return self.classify(query, vector)
        self.policies.get(category)
        return category
