"""Streamed answers: record the deltas of a live stream, replay a cached answer as a stream."""

from __future__ import annotations

import re
from collections.abc import Iterator

_PIECES = re.compile(r"\S+\s*|\s+")


class StreamRecorder:
    """Collect the text deltas of a streamed answer so the whole answer can be cached."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self.finished = False

    def add(self, delta: str) -> None:
        """Append one streamed delta (in order)."""
        self._parts.append(delta)

    def finish(self) -> str:
        """Mark the stream complete (only complete streams should be cached); the full text."""
        self.finished = True
        return self.text

    @property
    def text(self) -> str:
        """Everything recorded so far."""
        return "".join(self._parts)


def replay_chunks(text: str, words_per_chunk: int = 4) -> Iterator[str]:
    """Split a cached answer into stream deltas of a few words; joined they equal `text`."""
    if words_per_chunk < 1:
        raise ValueError("words_per_chunk must be >= 1")
    pieces = _PIECES.findall(text)
    for start in range(0, len(pieces), words_per_chunk):
        yield "".join(pieces[start : start + words_per_chunk])
