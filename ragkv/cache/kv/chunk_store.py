"""Chunk KV cache: each retrieved chunk's KV, computed once alone at positions 0.., reused in
any order and mix (the engine re-rotates and blends it).

Keyed by (tenant, chunk token-ids hash, variant) within one model (the store's fingerprint;
disk records carry it and are refused under another model). Tiers, fastest first: device
memory (when the engine runs on an accelerator), CPU memory, disk (lmdb). A hit in a slower
tier is promoted; entries evicted from a memory tier fall to the next one. Whether a disk hit
is loaded or recomputed is decided by a cost model (bytes to read vs tokens to prefill),
which learns both speeds from what it observes. Pure data structure plus storage.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ragkv.cache.kv.chunk_disk import DiskTier
from ragkv.cache.kv.cost_model import CostModel
from ragkv.settings import ChunkCacheSettings

log = logging.getLogger("ragkv.cache")
MAX_PREFETCH_PENDING = 64  # chunk reads queued at most; more are dropped (a later get reads)


class ChunkKey(NamedTuple):
    """Identity of a cached chunk KV. `variant` "" is the chunk computed alone; Cache-Craft
    style variants computed in another context get their own names."""

    tenant: str
    token_hash: str
    variant: str = ""

    def encode(self) -> bytes:
        """Bytes form, used as the lmdb key (tenant first so a tenant can be flushed)."""
        return f"{self.tenant}\x00{self.token_hash}\x00{self.variant}".encode()


def chunk_key(tenant: str, token_ids: Sequence[int], variant: str = "") -> ChunkKey:
    """The key of a chunk's token ids for `tenant`."""
    return ChunkKey(tenant, _digest(token_ids), variant)


def context_variant(context: Sequence[int]) -> str:
    """The variant name of chunk KV computed after the `context` tokens ("" = alone)."""
    return f"ctx-{_digest(context)[:16]}" if context else ""


def _digest(token_ids: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(token_ids, dtype="<i4").tobytes()).hexdigest()


@dataclass
class MemoryEntry:
    """A chunk KV held in memory, with what eviction needs."""

    kv: torch.Tensor
    num_bytes: int
    compute_s: float
    hits: int = 1
    last_used: float = 0.0
    priority: float = 0.0


class MemoryTier:
    """Chunk KVs on one device under a byte budget; eviction LRU or PGDSF (RAGCache:
    priority = clock + frequency x recompute cost / size, the clock aging to the last
    evicted priority)."""

    def __init__(self, name: str, device: torch.device, max_bytes: int, policy: str) -> None:
        if policy not in ("lru", "pgdsf"):
            raise ValueError(f"unknown chunk cache eviction '{policy}' (lru, pgdsf)")
        self.name = name
        self.device = device
        self.max_bytes = max_bytes
        self.policy = policy
        self.entries: OrderedDict[ChunkKey, MemoryEntry] = OrderedDict()
        self.num_bytes = 0
        self.evictions = 0
        self._clock = 0.0

    def get(self, key: ChunkKey) -> MemoryEntry | None:
        """The entry, counted as used."""
        entry = self.entries.get(key)
        if entry is not None:
            entry.hits += 1
            entry.last_used = time.monotonic()
            entry.priority = self._priority(entry)
            self.entries.move_to_end(key)
        return entry

    def put(
        self, key: ChunkKey, kv: torch.Tensor, compute_s: float
    ) -> list[tuple[ChunkKey, MemoryEntry]]:
        """Hold `kv` (moved to this tier's device); returns the entries evicted for room.
        An entry larger than the whole tier is not kept."""
        num_bytes = kv.numel() * kv.element_size()
        if num_bytes > self.max_bytes:
            return []
        self.pop(key)
        evicted = self._make_room(num_bytes)
        entry = MemoryEntry(kv.to(self.device), num_bytes, compute_s, last_used=time.monotonic())
        entry.priority = self._priority(entry)
        self.entries[key] = entry
        self.num_bytes += num_bytes
        return evicted

    def pop(self, key: ChunkKey) -> MemoryEntry | None:
        """Remove and return an entry."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.num_bytes -= entry.num_bytes
        return entry

    def _priority(self, entry: MemoryEntry) -> float:
        return self._clock + entry.hits * max(entry.compute_s, 1e-6) / max(entry.num_bytes, 1)

    def _make_room(self, needed: int) -> list[tuple[ChunkKey, MemoryEntry]]:
        evicted: list[tuple[ChunkKey, MemoryEntry]] = []
        while self.entries and self.num_bytes + needed > self.max_bytes:
            if self.policy == "lru":
                key = next(iter(self.entries))
            else:
                key = min(self.entries, key=lambda k: self.entries[k].priority)
                self._clock = self.entries[key].priority
            evicted.append((key, self.pop(key)))
            self.evictions += 1
        return evicted


class ChunkHit(NamedTuple):
    """A chunk KV found in the store, on the store's compute device."""

    kv: torch.Tensor
    tier: str


class ChunkKVStore:
    """All tiers of the chunk KV cache for one model. Thread-safe.

    `get` returns the KV on `device` (promoting it to the fastest memory tier) or None when
    absent, refused, or cheaper to recompute; `put` stores a freshly computed KV in the
    fastest tier and writes it through to disk, so a restart or crash loses nothing.
    """

    def __init__(
        self,
        model_fingerprint: str,
        device: torch.device | str,
        memory_bytes: int,
        device_bytes: int = 0,
        disk_path: Path | str | None = None,
        disk_bytes: int = 0,
        eviction: str = "lru",
        cost_model: CostModel | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model_fingerprint = model_fingerprint
        self.memory: list[MemoryTier] = []
        if self.device.type != "cpu" and device_bytes > 0:
            self.memory.append(MemoryTier("device", self.device, device_bytes, eviction))
        if memory_bytes > 0:
            self.memory.append(MemoryTier("cpu", torch.device("cpu"), memory_bytes, eviction))
        self.disk = None
        if disk_path is not None and disk_bytes > 0:
            self.disk = DiskTier(disk_path, model_fingerprint, disk_bytes)
        self.cost = cost_model or CostModel(disk_read_mb_s=500.0, prefill_tokens_s=400.0)
        self.counts: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._prefetcher: ThreadPoolExecutor | None = None
        self._prefetch_pending = 0

    def get(self, key: ChunkKey, num_tokens: int) -> ChunkHit | None:
        """The chunk KV if cached and worth loading (counts hit/miss/decision)."""
        with self._lock:
            self.counts["lookups"] += 1
            for tier in self.memory:
                entry = tier.get(key)
                if entry is not None:
                    self.counts[f"hits_{tier.name}"] += 1
                    if tier is not self.memory[0]:
                        self._promote(key, entry.kv, entry.compute_s, tier)
                    return ChunkHit(entry.kv.to(self.device), tier.name)
            return self._get_disk(key, num_tokens)

    def put(self, key: ChunkKey, kv: torch.Tensor, compute_s: float) -> None:
        """Store a computed chunk KV: fastest memory tier, written through to disk."""
        with self._lock:
            self.counts["stored"] += 1
            if self.memory:
                self._insert(0, key, kv, compute_s)
            if self.disk is not None and key.encode() not in self.disk:
                self.disk.put(key.encode(), kv)

    def contains(self, key: ChunkKey) -> bool:
        """Whether any tier holds `key` (no load, no counting)."""
        with self._lock:
            if any(key in tier.entries for tier in self.memory):
                return True
            return self.disk is not None and key.encode() in self.disk

    def flush(self, tenant: str | None = None) -> int:
        """Drop every entry (of one tenant, or all) from every tier; returns entries dropped."""
        with self._lock:
            dropped = 0
            for tier in self.memory:
                for key in [k for k in tier.entries if tenant is None or k.tenant == tenant]:
                    tier.pop(key)
                    dropped += 1
            if self.disk is not None:
                prefix = b"" if tenant is None else f"{tenant}\x00".encode()
                dropped += self.disk.flush(prefix)
            return dropped

    def stats(self) -> dict[str, object]:
        """Entries, bytes and evictions per tier plus lookup/decision counters."""
        with self._lock:
            tiers = {
                tier.name: {
                    "entries": len(tier.entries),
                    "bytes": tier.num_bytes,
                    "max_bytes": tier.max_bytes,
                    "evictions": tier.evictions,
                }
                for tier in self.memory
            }
            if self.disk is not None:
                tiers["disk"] = {
                    "entries": len(self.disk),
                    "bytes": self.disk.num_bytes,
                    "max_bytes": self.disk.max_bytes,
                    "evictions": self.disk.evictions,
                    "refused": self.disk.refused,
                }
            return {
                "tiers": tiers,
                "counters": dict(self.counts),
                "cost_model": {
                    "disk_read_mb_s": round(self.cost.disk_bytes_s / 1e6, 1),
                    "prefill_tokens_s": round(self.cost.prefill_tokens_s, 1),
                },
            }

    def held_keys(self, limit: int) -> list[ChunkKey]:
        """Keys of the entries some tier holds (memory tiers first, then disk), at most
        `limit`: what this store reports to a cache-affinity router. No counting."""
        with self._lock:
            keys = [key for tier in self.memory for key in tier.entries]
            if self.disk is not None:
                keys += [ChunkKey(*raw.decode().split("\x00")) for raw in self.disk.record_keys()]
        return list(dict.fromkeys(keys))[:limit]

    def prefetch(self, wanted: Sequence[tuple[ChunkKey, int]]) -> int:
        """Read the disk records of `wanted` (key, chunk tokens) into the CPU memory tier on
        a worker thread, so that the blend finds them in memory (RAGCache's speculative
        pipelining: the engine calls this when a request arrives, and a queued request's
        chunks are warm when it is admitted). Returns how many reads were queued: only keys
        on disk and in no memory tier, at most `MAX_PREFETCH_PENDING` pending at once.

        The worker touches bytes and views only (no torch compute): see ragkv/compute.py."""
        if self.disk is None or not self.memory:
            return 0
        queued = 0
        with self._lock:
            for key, num_tokens in wanted:
                if self._prefetch_pending >= MAX_PREFETCH_PENDING:
                    break
                if any(key in tier.entries for tier in self.memory):
                    continue
                if key.encode() not in self.disk:
                    continue
                if self._prefetcher is None:
                    self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="ragkv-prefetch")
                self._prefetch_pending += 1
                self._prefetcher.submit(self._prefetch_one, key, num_tokens)
                queued += 1
        return queued

    def _prefetch_one(self, key: ChunkKey, num_tokens: int) -> None:
        try:
            with self._lock:
                encoded = key.encode()
                size = self.disk.size_of(encoded)
                held = any(key in tier.entries for tier in self.memory)
                if held or size is None or not self.cost.should_load(size, num_tokens):
                    return
            started = time.perf_counter()
            kv = self.disk.get(encoded, num_tokens)  # outside the lock: gets go on meanwhile
            if kv is None:
                return
            with self._lock:
                self.cost.observe_load(size, time.perf_counter() - started)
                if not any(key in tier.entries for tier in self.memory):
                    self.counts["prefetched"] += 1
                    self._insert(len(self.memory) - 1, key, kv, self.cost.recompute_s(num_tokens))
        except Exception:  # a failed prefetch only means the blend reads the disk itself
            log.exception("chunk KV prefetch failed")
        finally:
            with self._lock:
                self._prefetch_pending -= 1

    def close(self) -> None:
        """Stop prefetching, then close the disk tier."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
        if self.disk is not None:
            self.disk.close()

    def _get_disk(self, key: ChunkKey, num_tokens: int) -> ChunkHit | None:
        encoded = key.encode()
        size = self.disk.size_of(encoded) if self.disk is not None else None
        if size is None:
            self.counts["misses"] += 1
            return None
        if not self.cost.should_load(size, num_tokens):
            self.counts["decided_recompute"] += 1
            return None
        started = time.perf_counter()
        kv = self.disk.get(encoded, num_tokens)
        if kv is None:
            self.counts["refused"] += 1
            return None
        self.cost.observe_load(size, time.perf_counter() - started)
        self.counts["decided_load"] += 1
        self.counts["hits_disk"] += 1
        if self.memory:
            self._insert(0, key, kv, self.cost.recompute_s(num_tokens))
        return ChunkHit(kv.to(self.device), "disk")

    def _promote(self, key: ChunkKey, kv: torch.Tensor, compute_s: float, tier) -> None:
        tier.pop(key)
        self._insert(0, key, kv, compute_s)

    def _insert(self, level: int, key: ChunkKey, kv: torch.Tensor, compute_s: float) -> None:
        """Put into memory tier `level`; what it evicts falls to the next memory tier (the
        disk already has everything written through)."""
        for evicted, entry in self.memory[level].put(key, kv, compute_s):
            if level + 1 < len(self.memory):
                self._insert(level + 1, evicted, entry.kv, entry.compute_s)


def open_chunk_store(
    settings: ChunkCacheSettings,
    model_fingerprint: str,
    device: torch.device,
    data_dir: Path | None,
) -> ChunkKVStore:
    """The chunk KV store of `settings`: memory tiers plus lmdb under `data_dir/chunk_kv`."""
    mib = 1024 * 1024
    disk_path = data_dir / "chunk_kv" if data_dir is not None and settings.disk else None
    return ChunkKVStore(
        model_fingerprint,
        device,
        memory_bytes=settings.memory_mb * mib,
        device_bytes=settings.device_mb * mib,
        disk_path=disk_path,
        disk_bytes=settings.disk_mb * mib,
        eviction=settings.eviction,
        cost_model=CostModel(settings.disk_read_mb_s, settings.prefill_tokens_s),
    )
