"""Semantic cache store values fuzzed: every decoder refuses a damaged value with
`StoreRecordError` (never another exception, never data); a cache reopened over a store with
any one value damaged starts, answers each entry with its own response or not at all (losing
no more than the damaged value covers), and keeps working; a store written before values had
checksums is emptied, not misread."""

from __future__ import annotations

import json
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import strategies as st

from ragkv.cache.semantic.admin import SemanticCacheAdmin
from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.records import (
    LOG,
    U64,
    StoreRecordError,
    decode_entry,
    decode_json,
    decode_partition,
    decode_vector,
    encode_json,
    seal,
    unpack,
)
from ragkv.cache.semantic.store import EntryMeta, SemanticStore
from ragkv.cache.semantic.types import Sources
from ragkv.settings import CategoryPolicy, SemanticCacheSettings
from tests.fuzz import fuzz_settings
from tests.fuzz.strategies import JSON, corrupted

DIM = 16
ENTRIES = 24
SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
DATABASES = [b"entries", b"vectors", b"meta", b"log", b"partitions", b"state"]
ENTRY = encode_json({"q": "question", "r": "answer", "c": "general", "s": ["c", ["k1"]]})
META = EntryMeta(1, 10.0, float("inf"), 12.0, 3, 200).pack()
VALUES: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
    "entry": (ENTRY, decode_entry),
    "vector": (seal(np.ones(DIM, np.float32).tobytes()), decode_vector),
    "metadata": (META, EntryMeta.unpack),
    "log": (seal(LOG.pack(1, 2, 3, 4)), lambda raw: unpack(LOG, raw, "log record")),
    "counter": (seal(U64.pack(7)), lambda raw: unpack(U64, raw, "counter")),
    "partition": (
        encode_json({"tenant": "t", "model": "m", "template_hash": "h", "category": "g", "id": 1}),
        decode_partition,
    ),
    "state": (encode_json({"general": {"threshold": 0.9}}), lambda raw: decode_json(raw, "s")),
}


@fuzz_settings(300)
@given(data=st.data(), kind=st.sampled_from(sorted(VALUES)))
def test_a_damaged_value_is_refused(data: st.DataObject, kind: str) -> None:
    value, decode = VALUES[kind]
    damaged = data.draw(corrupted(value))
    assume(damaged != value)
    with pytest.raises(StoreRecordError):
        decode(damaged)


@fuzz_settings(300)
@given(payload=st.binary(max_size=48) | JSON.map(lambda v: json.dumps(v).encode()))
def test_sealed_nonsense_is_refused_or_well_formed(payload: bytes) -> None:
    """A value with a valid checksum over anything (a writer's bug): refused or well formed."""
    sealed = seal(payload)
    for name in ("entry", "vector", "metadata", "log", "partition"):
        try:
            decoded = VALUES[name][1](sealed)
        except StoreRecordError:
            continue
        if name == "entry":
            assert all(isinstance(decoded[k], str) for k in "qrc")  # type: ignore[index]
        elif name == "vector":
            assert len(decoded) * 4 == len(payload)  # type: ignore[arg-type]


def cache_settings() -> SemanticCacheSettings:
    policy = CategoryPolicy(threshold=0.9, floor=0.9, guard=False)
    return SemanticCacheSettings(categories={"general": policy}, lmdb_map_size_bytes=1 << 26)


def vectors() -> np.ndarray:
    rows = np.random.default_rng(3).standard_normal((ENTRIES, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 entries in two tenants, half tied to sources, policies saved; the last 4 written
    after the indexes were saved, so that the write log holds them."""
    folder = tmp_path_factory.mktemp("semantic-records")
    policy = cache_settings().categories["general"].model_dump()
    for first, last in ((0, ENTRIES - 4), (ENTRIES - 4, ENTRIES)):
        cache = SemanticCache(cache_settings(), folder)
        for entry in range(first, last):
            sources = Sources("docs", (f"chunk-{entry}",)) if entry % 2 else None
            cache.store_answer(f"tenant-{entry % 2}", "m", "none", f"q{entry}", vectors()[entry],
                               f"answer {entry}", "general", sources=sources)  # fmt: skip
        cache.store.put_state("policies", {"general": policy})
        if first == 0:
            cache.close()  # saves the indexes and trims the log
    cache.store.close()  # lmdb only: the indexes miss the last 4, the log has them
    return folder


def damage_one_value(folder: Path, data: st.DataObject) -> bytes:
    """Damage one value of one database; returns the database's name."""
    name = data.draw(st.sampled_from(DATABASES))
    env = lmdb.open(str(folder / "lmdb"), max_dbs=8)
    db = env.open_db(name)
    with env.begin(write=True) as txn:
        keys = [bytes(key) for key, _ in txn.cursor(db=db)]
        key = data.draw(st.sampled_from(keys))
        value = bytes(txn.get(key, db=db))
        damaged = data.draw(corrupted(value))
        assume(damaged != value)
        txn.put(key, damaged, db=db)
    env.close()
    return name


@fuzz_settings(40, suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_a_cache_over_a_damaged_value_answers_right_or_not_at_all(
    cache_folder: Path, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        shutil.copytree(cache_folder, folder, dirs_exist_ok=True)
        damaged = damage_one_value(Path(folder), data)
        cache = SemanticCache(cache_settings(), Path(folder))
        try:
            hits = 0
            for entry, vector in enumerate(vectors()):
                found = cache.lookup(f"tenant-{entry % 2}", "m", "none", "q", vector,
                                     "general", record=False)  # fmt: skip
                if found.hit is not None:
                    assert found.hit.response == f"answer {entry}"
                    hits += 1
            # A damaged entry value loses that entry; a damaged partition record its partition
            # (its tenant is unknown); a damaged counter empties the store (ids are unsure).
            if damaged in (b"entries", b"vectors", b"meta", b"log"):
                assert hits >= ENTRIES - 1, f"more than the damaged entry was lost ({damaged})"
            SemanticCacheAdmin(cache).invalidate_sources("docs")
            SemanticCacheAdmin(cache).flush()
            vector = vectors()[0]
            cache.store_answer("tenant-0", "m", "none", "new", vector, "new answer", "general")
            found = cache.lookup("tenant-0", "m", "none", "new", vector, "general")
            assert found.hit is not None and found.hit.response == "new answer"
        finally:
            cache.close()


def test_a_store_without_checksums_is_emptied_not_misread(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=8)
    old = {b"entries": json.dumps({"q": "q", "r": "r", "c": "general"}).encode(),
           b"meta": struct.pack("<IdddII", 1, 1.0, 2.0, 1.0, 0, 10),
           b"vectors": np.ones(DIM, np.float32).tobytes()}  # fmt: skip
    with env.begin(write=True) as txn:
        for name, value in old.items():
            txn.put(U64.pack(1), value, db=env.open_db(name, txn=txn))
    env.close()
    store = SemanticStore(tmp_path, 1 << 26, durable=False)
    assert list(store.iter_meta()) == [] and store.get(1) is None and store.vectors([1]) == {}
    assert store.sequence() == 0
    store.close()
