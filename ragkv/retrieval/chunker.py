"""Token-aware chunking at sentence and paragraph boundaries, with content-derived chunk ids.

Chunks do not overlap, so a chunk's token ids (and so its KV cache entry) depend only on its
own text. A chunk's token ids are the tokenizer's encoding of the chunk text as a whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from ragkv.retrieval.tokenizer import EncoderLike, as_encoder

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?:(?<=[.!?。！？])|(?<=[.!?。！？][\"')\]]))\s+")
_WORD = re.compile(r"\S+\s*")


class Chunk(NamedTuple):
    """One chunk of a document. `chunk_id` is a function of `text` alone."""

    chunk_id: str
    ordinal: int
    text: str
    token_ids: list[int]
    content_hash: str

    @property
    def num_tokens(self) -> int:
        """Number of tokens in the chunk."""
        return len(self.token_ids)


def content_hash(text: str) -> str:
    """sha256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id_of(text: str) -> str:
    """Stable id of a chunk's text: the same text always gets the same id."""
    return "chk_" + content_hash(text)[:32]


class Chunker:
    """Split documents into chunks of at most `chunk_tokens` tokens of `tokenizer`.

    Boundaries fall between sentences; a paragraph break ends a chunk once it is half full;
    a sentence longer than a chunk is split between words (a word longer than a chunk, which
    only happens with very small `chunk_tokens`, is split by characters).
    """

    def __init__(self, tokenizer: EncoderLike, chunk_tokens: int = 256) -> None:
        if chunk_tokens < 1:
            raise ValueError("chunk_tokens must be at least 1")
        self.tokenizer = as_encoder(tokenizer)
        self.chunk_tokens = chunk_tokens

    def chunk(self, text: str) -> list[Chunk]:
        """Chunks of `text` in order, each of at least one token; empty or blank text, or
        text the tokenizer encodes to nothing, gives no chunks."""
        pieces: list[tuple[str, int, bool]] = []  # (text, tokens, ends a paragraph)
        for paragraph in _PARAGRAPH_BREAK.split(text):
            sentences = [s.strip() for s in _SENTENCE_END.split(paragraph.strip()) if s.strip()]
            for index, sentence in enumerate(sentences):
                last = index == len(sentences) - 1
                for part in self._fit(sentence):
                    pieces.append((part, len(self.tokenizer.encode(part)), False))
                if last and pieces:
                    pieces[-1] = (pieces[-1][0], pieces[-1][1], True)
        return self._pack(pieces)

    def _fit(self, sentence: str) -> list[str]:
        """`sentence` itself, or word groups each within the chunk budget."""
        if len(self.tokenizer.encode(sentence)) <= self.chunk_tokens:
            return [sentence]
        words = _WORD.findall(sentence)
        parts: list[str] = []
        start = 0
        while start < len(words):
            count = self._longest_fit(words, start)
            if count == 0:  # one word over the budget on its own
                parts.extend(self._split_chars(words[start].strip()))
                count = 1
            else:
                parts.append("".join(words[start : start + count]).strip())
            start += count
        return parts

    def _split_chars(self, word: str) -> list[str]:
        parts: list[str] = []
        start = 0
        while start < len(word):
            count = max(1, self._longest_fit(word, start))
            parts.append(word[start : start + count])
            start += count
        return parts

    def _longest_fit(self, pieces: Sequence[str], start: int) -> int:
        """How many of `pieces[start:]`, joined and stripped, fit the budget (0: not one).

        Doubling then bisecting takes O(log n) encodes where adding one piece at a time took
        one per piece (minutes for a 1 MB text without sentence ends). Over words the cut is
        the same, as a word added never lowers the count; over the characters of one word the
        count can dip ("a" x 15 is 5 tokens, x 16 is 4), so a longer fitting cut may be found.
        """

        def fits(count: int) -> bool:
            text = "".join(pieces[start : start + count]).strip()
            return len(self.tokenizer.encode(text)) <= self.chunk_tokens

        limit = len(pieces) - start
        low, high = 0, 1  # `low` pieces fit; `high` is the next count to try
        while high <= limit and fits(high):
            low, high = high, high * 2
        high = min(high, limit + 1)  # the smallest count known not to fit (or past the end)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    def _pack(self, pieces: list[tuple[str, int, bool]]) -> list[Chunk]:
        chunks: list[Chunk] = []
        start = 0
        while start < len(pieces):
            end, used = start, 0
            while end < len(pieces):
                _, num_tokens, ends_paragraph = pieces[end]
                if end > start and used + num_tokens > self.chunk_tokens:
                    break
                used += num_tokens
                end += 1
                if ends_paragraph and used >= self.chunk_tokens // 2:
                    break
            while True:
                text = _join(pieces[start:end])
                token_ids = self.tokenizer.encode(text)
                # Pieces are counted one by one; joined, they can tokenize a little longer.
                if len(token_ids) <= self.chunk_tokens or end - start == 1:
                    break
                end -= 1
            if token_ids:  # text of bytes the vocabulary lacks (a lone "\x16") is no chunk
                chunks.append(
                    Chunk(chunk_id_of(text), len(chunks), text, token_ids, content_hash(text))
                )
            start = end
        return chunks


def _join(pieces: list[tuple[str, int, bool]]) -> str:
    parts: list[str] = []
    for index, (text, _, ends_paragraph) in enumerate(pieces):
        parts.append(text)
        if index < len(pieces) - 1:
            parts.append("\n\n" if ends_paragraph else " ")
    return "".join(parts)
