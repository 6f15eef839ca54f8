"""Strategies shared by the fuzz tests: any JSON value, and damaged copies of stored bytes."""

from __future__ import annotations

from hypothesis import strategies as st

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)


@st.composite
def corrupted(draw: st.DrawFn, record: bytes) -> bytes:
    """`record` with bits flipped, cut short, lengthened, a span overwritten, or replaced
    (the result may equal `record`: callers `assume` it does not)."""
    how = draw(st.sampled_from(["flip", "cut", "append", "overwrite", "replace"]))
    data = bytearray(record)
    if how == "flip":
        for bit in draw(st.lists(st.integers(0, len(data) * 8 - 1), min_size=1, max_size=8)):
            data[bit // 8] ^= 1 << (bit % 8)
    elif how == "cut":
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif how == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "overwrite":
        start = draw(st.integers(0, len(data) - 1))
        span = draw(st.binary(min_size=1, max_size=32))
        data[start : start + len(span)] = span
    else:
        data = bytearray(draw(st.binary(max_size=256)))
    return bytes(data)
