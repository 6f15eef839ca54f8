"""The semantic cache's lmdb values as bytes, each sealed with a CRC32 of its contents.

lmdb keeps a crash from tearing a transaction, but it does not check what it reads back: a
value damaged on disk would come back as a garbled answer, or as bytes no decoder expects.
Every value the store writes ends in a CRC32 of the rest; the decoders here raise only
`StoreRecordError`, so a damaged value is refused, never served and never a crash.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np

FORMAT_VERSION = 2  # 1: values without a checksum
_CRC = struct.Struct("<I")
U64 = struct.Struct(">Q")
# partition id, created_at, expires_at (inf: never), last_used, hits, bytes
META = struct.Struct("<IdddII")
LOG = struct.Struct("<BIQQ")  # op, partition id, entry id, sequence
PARTITION_FIELDS = ("tenant", "model", "template_hash", "category")
COUNTERS = (b"seq", b"next_id", b"log_pos", b"partition_id", b"log_trimmed")


class StoreRecordError(Exception):
    """A value of the semantic cache store is damaged: wrong checksum, size or form."""


def seal(payload: bytes) -> bytes:
    """`payload` followed by its CRC32."""
    return payload + _CRC.pack(zlib.crc32(payload))


def unseal(raw: bytes, what: str) -> bytes:
    """The payload of a sealed value; `StoreRecordError` when the checksum disagrees."""
    if len(raw) < _CRC.size or zlib.crc32(raw[: -_CRC.size]) != _CRC.unpack(raw[-_CRC.size :])[0]:
        raise StoreRecordError(f"{what} fails its checksum")
    return bytes(raw[: -_CRC.size])


def unpack(layout: struct.Struct, raw: bytes, what: str) -> tuple[Any, ...]:
    """The fields of a sealed fixed-layout value."""
    payload = unseal(raw, what)
    if len(payload) != layout.size:
        raise StoreRecordError(f"{what} has {len(payload)} bytes, not {layout.size}")
    return layout.unpack(payload)


def encode_json(value: Any) -> bytes:
    """A sealed JSON value."""
    return seal(json.dumps(value).encode())


def decode_json(raw: bytes, what: str) -> Any:
    """The value of `encode_json`."""
    try:
        return json.loads(unseal(raw, what))
    except (ValueError, RecursionError) as exc:
        raise StoreRecordError(f"{what} is not JSON: {exc}") from exc


def decode_entry(raw: bytes) -> dict[str, Any]:
    """An entry record `{"q", "r", "c", "s"?}`: query, response, category, sources
    `[collection, [chunk ids]]`."""
    record = decode_json(raw, "entry record")
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in "qrc"):
        raise StoreRecordError("entry record lacks its query, response or category")
    sources = record.get("s")
    if sources is not None and not (
        isinstance(sources, list)
        and len(sources) == 2
        and isinstance(sources[0], str)
        and isinstance(sources[1], list)
        and all(isinstance(chunk_id, str) for chunk_id in sources[1])
    ):
        raise StoreRecordError("entry record has malformed sources")
    return record


def decode_vector(raw: bytes) -> np.ndarray:
    """A `[dim]` float32 vector."""
    payload = unseal(raw, "vector")
    if not payload or len(payload) % 4:
        raise StoreRecordError(f"vector has {len(payload)} bytes, not a float32 array")
    return np.frombuffer(payload, dtype=np.float32)


def decode_partition(raw: bytes) -> dict[str, Any]:
    """A partition record: tenant, model, template_hash, category (strings) and id."""
    record = decode_json(raw, "partition record")
    if not isinstance(record, dict) or type(record.get("id")) is not int:
        raise StoreRecordError("partition record has no id")
    if not all(isinstance(record.get(field), str) for field in PARTITION_FIELDS):
        raise StoreRecordError("partition record lacks its key fields")
    return record


def format_problem(
    raw_format: bytes | None, counters: dict[bytes, bytes | None], holds_data: bool
) -> str | None:
    """Why a store cannot be used as it is (another format, a damaged counter), or None.
    A store without a format mark is new, or was written before values had checksums."""
    if raw_format is None and holds_data:
        return "its values have no checksums (an older ragkv wrote them)"
    try:
        version = unpack(U64, raw_format, "format mark")[0] if raw_format is not None else None
        for name, raw in counters.items():
            if raw is not None:
                unpack(U64, raw, f"counter {name.decode()}")
    except StoreRecordError as exc:
        return str(exc)
    return None if version in (None, FORMAT_VERSION) else f"format {version}, not {FORMAT_VERSION}"
