"""Token-aware chunking at sentence and paragraph boundaries, with content-derived chunk ids.

Chunks do not overlap, so a chunk's token ids (and so its KV cache entry) depend only on its
own text. A chunk's token ids are the tokenizer's encoding of the chunk text as a whole.
"""

from __future__ import annotations

import hashlib
import re
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
        """Chunks of `text` in order; empty or blank text gives no chunks."""
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
        parts: list[str] = []
        current = ""
        for word in _WORD.findall(sentence):
            candidate = current + word
            if len(self.tokenizer.encode(candidate.strip())) <= self.chunk_tokens:
                current = candidate
                continue
            if current.strip():
                parts.append(current.strip())
            current = word
            if len(self.tokenizer.encode(word.strip())) > self.chunk_tokens:
                parts.extend(self._split_chars(word.strip()))
                current = ""
        if current.strip():
            parts.append(current.strip())
        return parts

    def _split_chars(self, word: str) -> list[str]:
        parts: list[str] = []
        start = 0
        while start < len(word):
            end = start + 1
            while end < len(word) and len(self.tokenizer.encode(word[start : end + 1])) <= (
                self.chunk_tokens
            ):
                end += 1
            parts.append(word[start:end])
            start = end
        return parts

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
