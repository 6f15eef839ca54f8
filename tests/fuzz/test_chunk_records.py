"""Chunk KV disk records fuzzed: a record with any byte flipped, cut or added is refused with
`RecordError`; a well-checksummed record with any header or payload (a writer's bug) is refused
or decodes to exactly what its header says; the disk tier drops what it refuses."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile

import lmdb
import pytest
import torch
from hypothesis import HealthCheck, assume, given
from hypothesis import strategies as st

from ragkv.cache.kv.chunk_disk import (
    _PREFIX,
    FORMAT_VERSION,
    MAGIC,
    DiskTier,
    RecordError,
    decode_record,
    encode_record,
)
from tests.fuzz import fuzz_settings
from tests.fuzz.strategies import JSON, corrupted

MODEL = "model-a"
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16,
          "torch.float16": torch.float16}  # fmt: skip


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), max_size=5))
    dtype = draw(st.sampled_from(list(DTYPES.values())))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    return torch.randn(shape, generator=generator).to(dtype)


def header_values() -> st.SearchStrategy[object]:
    """Headers near the real one (each field right, wrong or of another type) or any JSON."""
    near = st.fixed_dictionaries(
        {
            "model": st.just(MODEL) | JSON,
            "dtype": st.sampled_from(list(DTYPES)) | JSON,
            "shape": st.lists(st.integers(-2, 4), max_size=5) | JSON,
        }
    )
    return near | JSON


@st.composite
def forged(draw: st.DrawFn) -> tuple[bytes, object, bytes]:
    """A record with a valid checksum where up to two fields are wrong (or none is):
    (record, header, payload)."""
    broken = draw(st.sets(st.sampled_from(["magic", "version", "length", "header", "payload"]),
                          max_size=2))  # fmt: skip
    shape = draw(st.lists(st.integers(0, 4), max_size=5))
    dtype = draw(st.sampled_from(list(DTYPES)))
    header = {"model": MODEL, "dtype": dtype, "shape": shape}
    if "header" in broken:
        header = draw(header_values())
    raw_header = json.dumps(header).encode()
    if "header" in broken and draw(st.booleans()):
        raw_header = draw(st.binary(max_size=40))
    size = math.prod(shape) * DTYPES[dtype].itemsize
    payload = draw(st.binary(min_size=size, max_size=size))
    if "payload" in broken:
        payload = draw(st.binary(max_size=96))
    body = _PREFIX.pack(
        draw(st.binary(min_size=4, max_size=4)) if "magic" in broken else MAGIC,
        draw(st.integers(0, 2**16 - 1)) if "version" in broken else FORMAT_VERSION,
        draw(st.integers(0, 2**32 - 1)) if "length" in broken else len(raw_header),
    )
    body += raw_header + payload
    return body + hashlib.sha256(body).digest(), header, payload


@fuzz_settings(100)
@given(tensor=tensors())
def test_records_round_trip(tensor: torch.Tensor) -> None:
    decoded = decode_record(encode_record(tensor, MODEL), MODEL)
    assert decoded.dtype == tensor.dtype and decoded.shape == tensor.shape
    assert torch.equal(decoded, tensor)


@fuzz_settings(300)
@given(data=st.data(), tensor=tensors())
def test_corrupted_records_are_refused(data: st.DataObject, tensor: torch.Tensor) -> None:
    record = encode_record(tensor, MODEL)
    bad = data.draw(corrupted(record))
    assume(bad != record)
    with pytest.raises(RecordError):
        decode_record(bad, MODEL)


@fuzz_settings(400)
@given(case=forged())
def test_checksummed_nonsense_is_refused_or_exact(case: tuple[bytes, object, bytes]) -> None:
    record, header, payload = case
    try:
        tensor = decode_record(record, MODEL)
    except RecordError:
        return
    assert isinstance(header, dict) and header["model"] == MODEL
    assert tensor.dtype == DTYPES[header["dtype"]]
    assert list(tensor.shape) == header["shape"]
    assert len(payload) == math.prod(header["shape"]) * tensor.element_size()
    assert tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() == payload


@fuzz_settings(60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), num_tokens=st.integers(1, 6))
def test_disk_tier_drops_what_it_refuses(data: st.DataObject, num_tokens: int) -> None:
    tensor = torch.randn(2, 2, num_tokens, 3, 4)
    with tempfile.TemporaryDirectory() as folder:
        tier = DiskTier(folder, MODEL, 1 << 22)
        tier.put(b"good", tensor)
        tier.put(b"bad", tensor)
        tier.close()
        env = lmdb.open(folder)
        with env.begin(write=True) as txn:
            record = bytes(txn.get(b"bad"))
            bad = data.draw(corrupted(record))
            assume(bad != record)
            txn.put(b"bad", bad)
        env.close()
        tier = DiskTier(folder, MODEL, 1 << 22)
        assert tier.get(b"bad", num_tokens) is None and b"bad" not in tier
        assert tier.get(b"good", num_tokens + 1) is None, "KV of another token count was used"
        assert tier.refused == 2 and len(tier) == 0
        tier.close()
