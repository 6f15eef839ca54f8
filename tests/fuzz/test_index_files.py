"""Index files fuzzed: a FAISS index file or its checksum file, a semantic-cache manifest or
partition file with bytes flipped, cut, added or replaced is refused with the clear error (or
read as None), never a crash; a reopened semantic cache rebuilds what it refused and still
answers every stored entry."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from ragkv.cache.semantic.cache import SemanticCache
from ragkv.cache.semantic.index import IndexFiles
from ragkv.retrieval.index import IndexFileError, VectorIndex
from ragkv.settings import CategoryPolicy, SemanticCacheSettings
from tests.fuzz import fuzz_settings
from tests.fuzz.strategies import JSON, corrupted

DIM = 16
SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


def unit_rows(count: int, dim: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def faiss_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved Flat index of 50 vectors, 5 of them removed: `index.faiss` and its `.json`."""
    index = VectorIndex(DIM, "Flat")
    index.add(np.arange(50), unit_rows(50, DIM, seed=0))
    index.remove(np.arange(5))
    folder = tmp_path_factory.mktemp("faiss")
    index.save(folder / "index.faiss")
    return folder


@fuzz_settings(120, suppress_health_check=SLOW_OK)
@given(data=st.data(), name=st.sampled_from(["index.faiss", "index.faiss.json"]))
def test_a_corrupted_faiss_index_is_refused_or_detectably_different(
    faiss_files: Path, data: st.DataObject, name: str
) -> None:
    """Refused, or its ids differ from the store's (the Retriever then rebuilds it), or it
    answers exactly as the saved one."""
    saved = VectorIndex.load(faiss_files / "index.faiss", DIM, "Flat")
    queries = unit_rows(4, DIM, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        for each in faiss_files.iterdir():
            shutil.copy(each, folder)
        target = Path(folder) / name
        target.write_bytes(data.draw(corrupted(target.read_bytes())))
        try:
            loaded = VectorIndex.load(Path(folder) / "index.faiss", DIM, "Flat")
        except IndexFileError:
            return
    if sorted(loaded.ids()) != sorted(saved.ids()):
        return
    before, after = saved.search(queries, 5), loaded.search(queries, 5)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)


MANIFESTS = st.one_of(
    st.binary(max_size=64),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {"seq": JSON | st.integers(-2, 9), "partitions": st.dictionaries(st.text(max_size=3), JSON)}
    ).map(lambda value: json.dumps(value).encode()),
)


@fuzz_settings(200)
@given(raw=MANIFESTS)
def test_a_manifest_reads_as_none_or_well_formed(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        files = IndexFiles(Path(folder))
        files.manifest_path.write_bytes(raw)
        manifest = files.read_manifest()
    if manifest is None:
        return
    assert type(manifest.get("seq", 0)) is int and manifest.get("seq", 0) >= 0
    for info in manifest["partitions"].values():
        assert Path(info["file"]).name == info["file"] and isinstance(info["sha256"], str)
        assert type(info.get("live", 0)) is int and info.get("live", 0) >= 0


def cache_settings() -> SemanticCacheSettings:
    policy = CategoryPolicy(threshold=0.9, floor=0.9, guard=False)
    return SemanticCacheSettings(categories={"general": policy}, lmdb_map_size_bytes=1 << 26)


@pytest.fixture(scope="module")
def cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed semantic cache of 40 entries in two partitions, its indexes saved."""
    folder = tmp_path_factory.mktemp("semantic")
    cache = SemanticCache(cache_settings(), folder)
    for entry, vector in enumerate(unit_rows(40, DIM, seed=2)):
        tenant = f"tenant-{entry % 2}"
        cache.store_answer(tenant, "m", "none", f"q{entry}", vector, f"a{entry}", "general")
    cache.close()
    return folder


@fuzz_settings(40, suppress_health_check=SLOW_OK)
@given(data=st.data())
def test_a_semantic_cache_reopens_over_corrupted_index_files(
    cache_folder: Path, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "cache"
        shutil.copytree(cache_folder, copy)
        index_files = sorted(path for path in copy.rglob("*") if path.suffix in (".json", ".bin"))
        target = data.draw(st.sampled_from(index_files))
        damage = corrupted(target.read_bytes())
        if target.name == "manifest.json":
            damage = damage | MANIFESTS
        target.write_bytes(data.draw(damage))
        cache = SemanticCache(cache_settings(), copy)
        try:
            for entry, vector in enumerate(unit_rows(40, DIM, seed=2)):
                tenant = f"tenant-{entry % 2}"
                found = cache.lookup(tenant, "m", "none", "q", vector, "general", record=False)
                assert found.hit is not None and found.hit.response == f"a{entry}"
        finally:
            cache.close()
