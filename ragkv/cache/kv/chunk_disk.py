"""Disk tier of the chunk KV cache: lmdb records, checksummed, versioned, model-checked.

Record layout: `MAGIC | version u16 | header length u32 | header JSON | payload | sha256`, the
checksum covering everything before it. The header names the model fingerprint, dtype and
shape; a record that fails any check is refused (and deleted), never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
import threading
import time
from pathlib import Path

import lmdb
import torch

log = logging.getLogger("ragkv.cache")

MAGIC = b"RKVC"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHI")
_DTYPES = {str(d): d for d in (torch.float32, torch.bfloat16, torch.float16)}


class RecordError(Exception):
    """A disk record is corrupt, of another format version, or from another model."""


def encode_record(kv: torch.Tensor, model_fingerprint: str) -> bytes:
    """Serialize `kv` (any shape, float32/bfloat16/float16) with header and checksum."""
    kv = kv.detach().to("cpu").contiguous()
    header = json.dumps(
        {"model": model_fingerprint, "dtype": str(kv.dtype), "shape": list(kv.shape)}
    ).encode()
    payload = kv.view(-1).view(torch.uint8).numpy().tobytes()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + payload
    return body + hashlib.sha256(body).digest()


def decode_record(
    record: bytes, model_fingerprint: str, num_tokens: int | None = None
) -> torch.Tensor:
    """The tensor in `record`; raises `RecordError` unless every check passes (with
    `num_tokens`, the KV `[layers, 2, tokens, ...]` must hold that many tokens)."""
    if len(record) < _PREFIX.size + 32:
        raise RecordError("record is truncated")
    body, digest = record[:-32], record[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise RecordError("checksum mismatch")
    magic, version, header_len = _PREFIX.unpack_from(body)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise RecordError(f"unknown record format {magic!r} v{version}")
    if _PREFIX.size + header_len > len(body):
        raise RecordError("header length overruns the record")
    header = _header(body[_PREFIX.size : _PREFIX.size + header_len])
    if header.get("model") != model_fingerprint:
        raise RecordError("record was written by another model")
    dtype_name = header.get("dtype")
    dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
    if dtype is None:
        raise RecordError(f"unknown dtype {dtype_name!r}")
    shape = header.get("shape")
    if not isinstance(shape, list) or not all(type(size) is int and size >= 0 for size in shape):
        raise RecordError(f"header shape {shape!r} is not a list of sizes")
    if num_tokens is not None and (len(shape) < 3 or shape[2] != num_tokens):
        raise RecordError(f"record of shape {shape} is not the KV of {num_tokens} tokens")
    payload = bytearray(body[_PREFIX.size + header_len :])
    expected = math.prod(shape) * dtype.itemsize
    if len(payload) != expected:
        raise RecordError(f"payload has {len(payload)} bytes, shape {shape} needs {expected}")
    if not payload:  # torch.frombuffer refuses an empty buffer
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(payload, dtype=torch.uint8).view(dtype).reshape(shape)


def _header(raw: bytes) -> dict[str, object]:
    """The record's JSON header; `RecordError` unless it is a JSON object."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep
        raise RecordError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise RecordError("header is not a JSON object")
    return header


class DiskTier:
    """Chunk KV records in one lmdb environment, bounded by `max_bytes` (oldest use first out).

    Thread-safe. Writes are whole transactions: a crash leaves each record there or not.
    """

    name = "disk"

    def __init__(self, path: Path | str, model_fingerprint: str, max_bytes: int) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.model_fingerprint = model_fingerprint
        self.max_bytes = max_bytes
        self._env = lmdb.open(str(path), map_size=max(max_bytes * 2, 1 << 26), max_dbs=1)
        self._lock = threading.Lock()
        self._sizes: dict[bytes, int] = {}
        self._last_used: dict[bytes, float] = {}
        with self._env.begin() as txn:
            for key, value in txn.cursor():
                self._sizes[bytes(key)] = len(value)
                self._last_used[bytes(key)] = 0.0
        self.refused = 0
        self.evictions = 0

    @property
    def num_bytes(self) -> int:
        """Bytes of all records."""
        return sum(self._sizes.values())

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, key: bytes) -> bool:
        return key in self._sizes

    def record_keys(self) -> list[bytes]:
        """Keys of every record (no disk read)."""
        with self._lock:
            return list(self._sizes)

    def size_of(self, key: bytes) -> int | None:
        """Record size in bytes, or None if absent (no disk read)."""
        return self._sizes.get(key)

    def put(self, key: bytes, kv: torch.Tensor) -> None:
        """Write (or replace) the record of `key`, evicting old records past `max_bytes`."""
        record = encode_record(kv, self.model_fingerprint)
        if len(record) > self.max_bytes:
            return
        with self._lock:
            self._make_room(len(record) - self._sizes.get(key, 0))
            try:
                with self._env.begin(write=True) as txn:
                    txn.put(key, record)
            except lmdb.MapFullError:
                log.warning("chunk KV disk tier is full; record not written")
                return
            self._sizes[key] = len(record)
            self._last_used[key] = time.monotonic()

    def get(self, key: bytes, num_tokens: int | None = None) -> torch.Tensor | None:
        """The stored tensor, or None if absent or refused (a refused record is deleted);
        `num_tokens`: the token count the KV must hold."""
        with self._env.begin() as txn:
            record = txn.get(key)
            if record is None:
                return None
            record = bytes(record)
        try:
            tensor = decode_record(record, self.model_fingerprint, num_tokens)
        except RecordError as exc:
            log.warning("chunk KV record refused (%s); it will be recomputed", exc)
            self.refused += 1
            self.delete(key)
            return None
        with self._lock:
            self._last_used[key] = time.monotonic()
        return tensor

    def delete(self, key: bytes) -> None:
        """Remove a record if present."""
        with self._lock:
            with self._env.begin(write=True) as txn:
                txn.delete(key)
            self._sizes.pop(key, None)
            self._last_used.pop(key, None)

    def flush(self, key_prefix: bytes = b"") -> int:
        """Delete every record whose key starts with `key_prefix`; returns how many."""
        with self._lock:
            doomed = [k for k in self._sizes if k.startswith(key_prefix)]
            with self._env.begin(write=True) as txn:
                for key in doomed:
                    txn.delete(key)
            for key in doomed:
                self._sizes.pop(key, None)
                self._last_used.pop(key, None)
        return len(doomed)

    def close(self) -> None:
        """Close the environment."""
        self._env.close()

    def _make_room(self, needed: int) -> None:
        total = sum(self._sizes.values())
        if total + needed <= self.max_bytes:
            return
        with self._env.begin(write=True) as txn:
            for key in sorted(self._sizes, key=self._last_used.__getitem__):
                if total + needed <= self.max_bytes:
                    break
                txn.delete(key)
                total -= self._sizes.pop(key)
                self._last_used.pop(key, None)
                self.evictions += 1
