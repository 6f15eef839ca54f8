"""Chunk KV store: tiers, eviction policies, cost model, and a disk tier that survives a
restart bit-identical and refuses corrupt or foreign records."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import lmdb
import torch

from ragkv.cache.kv.chunk_disk import DiskTier
from ragkv.cache.kv.chunk_store import ChunkKVStore, MemoryTier, chunk_key
from ragkv.cache.kv.cost_model import CostModel


def kv(seed: int, tokens: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((2, 2, tokens, 3, 4), generator=generator)


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def test_key_depends_on_tenant_tokens_and_variant():
    assert chunk_key("a", [1, 2, 3]) == chunk_key("a", [1, 2, 3])
    assert chunk_key("a", [1, 2, 3]) != chunk_key("b", [1, 2, 3])
    assert chunk_key("a", [1, 2, 3]) != chunk_key("a", [1, 2, 4])
    assert chunk_key("a", [1, 2, 3]) != chunk_key("a", [1, 2, 3], variant="after:x")


def test_lru_tier_evicts_least_recently_used():
    tier = MemoryTier("cpu", torch.device("cpu"), 2 * nbytes(kv(0)), "lru")
    keys = [chunk_key("t", [i]) for i in range(3)]
    tier.put(keys[0], kv(0), 1.0)
    tier.put(keys[1], kv(1), 1.0)
    tier.get(keys[0])
    evicted = tier.put(keys[2], kv(2), 1.0)
    assert [key for key, _ in evicted] == [keys[1]]
    assert set(tier.entries) == {keys[0], keys[2]} and tier.evictions == 1


def test_pgdsf_keeps_frequent_costly_entries():
    tier = MemoryTier("cpu", torch.device("cpu"), 2 * nbytes(kv(0)), "pgdsf")
    costly, cheap, new = (chunk_key("t", [i]) for i in range(3))
    tier.put(costly, kv(0), compute_s=2.0)
    tier.put(cheap, kv(1), compute_s=0.1)
    for _ in range(3):
        tier.get(costly)
    tier.get(cheap)  # the most recent use, yet the cheaper one to recompute
    evicted = tier.put(new, kv(2), compute_s=0.5)
    assert [key for key, _ in evicted] == [cheap]


def test_evicted_memory_entries_stay_on_disk_and_come_back(tmp_path):
    store = ChunkKVStore(
        "model-a", "cpu", memory_bytes=nbytes(kv(0)), disk_path=tmp_path, disk_bytes=1 << 24
    )
    store.cost = CostModel(disk_read_mb_s=1e6, prefill_tokens_s=1.0)  # loading always wins
    first, second = chunk_key("t", [1]), chunk_key("t", [2])
    store.put(first, kv(1), 0.1)
    store.put(second, kv(2), 0.1)  # pushes `first` out of memory
    assert store.memory[0].entries.keys() == {second}
    hit = store.get(first, num_tokens=8)
    assert hit is not None and hit.tier == "disk" and torch.equal(hit.kv, kv(1))
    assert store.get(first, 8).tier == "cpu"  # promoted on the disk hit
    assert store.counts["decided_load"] == 1


def test_device_tier_demotes_to_cpu_and_promotes_back():
    """What the fastest memory tier evicts falls to the next; a hit there moves back up.

    The store builds its device tier only on an accelerator. Without one a CPU tier stands
    in for it: a tier moves KV with `.to(device)` and is otherwise device-agnostic.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = nbytes(kv(0))
    store = ChunkKVStore("m", device, memory_bytes=4 * size, device_bytes=size)
    if device == "cpu":
        store.memory.insert(0, MemoryTier("device", torch.device("cpu"), size, "lru"))
    assert [tier.name for tier in store.memory] == ["device", "cpu"]
    first, second = chunk_key("t", [1]), chunk_key("t", [2])
    store.put(first, kv(1), 0.1)
    store.put(second, kv(2), 0.1)  # the device tier holds one: `first` falls to cpu
    assert set(store.memory[0].entries) == {second} and set(store.memory[1].entries) == {first}
    hit = store.get(first, num_tokens=8)
    assert hit is not None and hit.tier == "cpu" and torch.equal(hit.kv.cpu(), kv(1))
    assert hit.kv.device.type == device
    assert set(store.memory[0].entries) == {first} and set(store.memory[1].entries) == {second}
    assert store.get(first, 8).tier == "device"
    assert store.counts["hits_cpu"] == 1 and store.counts["hits_device"] == 1


def test_cost_model_recomputes_when_the_disk_is_slower(tmp_path):
    store = ChunkKVStore("m", "cpu", memory_bytes=0, disk_path=tmp_path, disk_bytes=1 << 24)
    store.cost = CostModel(disk_read_mb_s=1e-6, prefill_tokens_s=1e6)
    key = chunk_key("t", [5])
    store.put(key, kv(5), 0.1)
    assert store.get(key, num_tokens=8) is None
    assert store.counts["decided_recompute"] == 1
    store.cost.observe_load(10**9, 0.001)  # it learns a fast disk
    store.cost.observe_load(10**9, 0.001)
    store.cost.observe_prefill(8, 1.0)
    assert store.get(key, num_tokens=8) is not None


def test_flush_one_tenant_keeps_the_other(tmp_path):
    store = ChunkKVStore("m", "cpu", memory_bytes=1 << 24, disk_path=tmp_path, disk_bytes=1 << 24)
    store.put(chunk_key("a", [1]), kv(1), 0.1)
    store.put(chunk_key("b", [1]), kv(2), 0.1)
    assert store.flush("a") == 2  # memory + disk
    assert not store.contains(chunk_key("a", [1]))
    assert store.contains(chunk_key("b", [1]))


WRITER = textwrap.dedent(
    """
    import sys, torch
    from ragkv.cache.kv.chunk_store import ChunkKVStore, chunk_key
    store = ChunkKVStore("model-a", "cpu", 1 << 24, disk_path=sys.argv[1], disk_bytes=1 << 26)
    g = torch.Generator().manual_seed(42)
    for i in range(3):
        store.put(chunk_key("t", [i]), torch.randn((4, 2, 16, 3, 8), generator=g), 0.2)
    store.close()
    """
)


def test_disk_tier_survives_a_restart_bit_identical(tmp_path):
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path)], check=True, timeout=120)
    generator = torch.Generator().manual_seed(42)
    expected = [torch.randn((4, 2, 16, 3, 8), generator=generator) for _ in range(3)]
    store = ChunkKVStore("model-a", "cpu", 1 << 24, disk_path=tmp_path, disk_bytes=1 << 26)
    store.cost = CostModel(disk_read_mb_s=1e6, prefill_tokens_s=1.0)
    for i, tensor in enumerate(expected):
        hit = store.get(chunk_key("t", [i]), num_tokens=16)
        assert hit is not None and hit.tier == "disk"
        assert torch.equal(hit.kv, tensor) and hit.kv.dtype == tensor.dtype


def test_corrupt_and_foreign_records_are_refused(tmp_path):
    disk = DiskTier(tmp_path, "model-a", 1 << 24)
    good, bad = chunk_key("t", [1]).encode(), chunk_key("t", [2]).encode()
    disk.put(good, kv(1))
    disk.put(bad, kv(2))
    disk.close()
    env = lmdb.open(str(tmp_path))
    with env.begin(write=True) as txn:
        record = bytearray(txn.get(bad))
        record[len(record) // 2] ^= 0xFF
        txn.put(bad, bytes(record))
    env.close()
    disk = DiskTier(tmp_path, "model-a", 1 << 24)
    assert disk.get(bad) is None and disk.refused == 1 and bad not in disk
    assert torch.equal(disk.get(good), kv(1))
    disk.close()
    foreign = DiskTier(tmp_path, "model-b", 1 << 24)
    assert foreign.get(good) is None and foreign.refused == 1
    foreign.close()


def test_disk_tier_evicts_oldest_past_its_bound(tmp_path):
    record_bytes = nbytes(kv(0)) + 200
    disk = DiskTier(tmp_path, "m", 2 * record_bytes)
    keys = [chunk_key("t", [i]).encode() for i in range(3)]
    for i, key in enumerate(keys):
        disk.put(key, kv(i))
    assert keys[0] not in disk and keys[2] in disk and disk.evictions == 1
    assert disk.num_bytes <= 2 * record_bytes


def wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the prefetch did not finish"
        time.sleep(0.01)


def test_prefetch_reads_disk_records_into_memory_bit_identical(tmp_path):
    writer = ChunkKVStore("model-a", "cpu", 1 << 24, disk_path=tmp_path, disk_bytes=1 << 26)
    keys = [chunk_key("t", [i]) for i in range(4)]
    for i, key in enumerate(keys):
        writer.put(key, kv(i), compute_s=0.1)
    writer.close()
    store = ChunkKVStore("model-a", "cpu", 1 << 24, disk_path=tmp_path, disk_bytes=1 << 26)
    store.cost = CostModel(disk_read_mb_s=1e6, prefill_tokens_s=1.0)  # loading always pays
    absent = chunk_key("t", [99])
    assert store.prefetch([(key, 8) for key in keys] + [(absent, 8)]) == 4  # absent: skipped
    wait_for(lambda: store.counts["prefetched"] == 4)
    for i, key in enumerate(keys):
        hit = store.get(key, num_tokens=8)
        assert hit is not None and hit.tier == "cpu"  # memory, not disk: the read was done
        assert torch.equal(hit.kv, kv(i))
    assert store.counts["hits_disk"] == 0
    assert store.prefetch([(key, 8) for key in keys]) == 0  # held in memory: nothing to read
    store.close()


def test_prefetch_refuses_a_corrupt_record(tmp_path):
    writer = ChunkKVStore("model-a", "cpu", 1 << 24, disk_path=tmp_path, disk_bytes=1 << 26)
    key = chunk_key("t", [5])
    writer.put(key, kv(5), compute_s=0.1)
    writer.close()
    env = lmdb.open(str(tmp_path))
    with env.begin(write=True) as txn:
        record = bytearray(txn.get(key.encode()))
        record[len(record) // 2] ^= 0xFF
        txn.put(key.encode(), bytes(record))
    env.close()
    store = ChunkKVStore("model-a", "cpu", 1 << 24, disk_path=tmp_path, disk_bytes=1 << 26)
    store.cost = CostModel(disk_read_mb_s=1e6, prefill_tokens_s=1.0)
    assert store.prefetch([(key, 8)]) == 1
    wait_for(lambda: store.disk.refused == 1)
    assert store.get(key, num_tokens=8) is None  # refused and deleted: the chunk is recomputed
    assert store.counts["prefetched"] == 0
    store.close()
