"""Chunker properties on arbitrary text with SmolLM2's real tokenizer: every character of a
document lands in exactly one chunk, in order; each chunk is within the budget and its token
ids are the encoding of its text and decode back to it; cuts match the word-by-word search.

SmolLM2's byte-level vocabulary lacks six control bytes and the lead bytes 0xF1/0xF2 (code
points U+40000-U+BFFFF, unassigned planes): the tokenizer drops them, so text holding them
cannot decode back exactly. Chunks still carry the same ids as `encode` of their text.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from ragkv.retrieval.chunker import _WORD, Chunk, Chunker, chunk_id_of
from ragkv.retrieval.tokenizer import HFTokenizer
from tests.fuzz import fuzz_settings

WORDS = st.sampled_from(
    ["the", "cat", "sat", "Dr.", "x", "naïve", "日本語の文", "🙂👍🏽", "1,000.5", "(see", "note)",
     '"quoted."', "…", "e.g.", "supercalifragilistic", "a" * 40, "ab1" * 30]
)  # fmt: skip
SEPARATORS = st.sampled_from(
    [" ", " ", " ", ". ", "! ", "? ", "。", "\n", "\n\n", "\n \n", "\t", "  ", "\u3000", "\r\n"]
)
TEXTS = st.lists(st.one_of(WORDS, SEPARATORS, st.text(max_size=12)), max_size=60).map("".join)


class WordByWordChunker(Chunker):
    """The chunker's earlier search: one encode per word (or character) added to a part."""

    def _fit(self, sentence: str) -> list[str]:
        if len(self.tokenizer.encode(sentence)) <= self.chunk_tokens:
            return [sentence]
        parts: list[str] = []
        current = ""
        for word in _WORD.findall(sentence):
            if len(self.tokenizer.encode((current + word).strip())) <= self.chunk_tokens:
                current += word
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
            while end < len(word) and self._fits(word[start : end + 1]):
                end += 1
            parts.append(word[start:end])
            start = end
        return parts

    def _fits(self, text: str) -> bool:
        return len(self.tokenizer.encode(text)) <= self.chunk_tokens


DROPPED_CONTROLS = frozenset("\x04\x06\x13\x14\x16\x1d")


def representable(text: str) -> bool:
    """Whether SmolLM2's vocabulary holds every byte of `text` (see the module docstring)."""
    return not any(c in DROPPED_CONTROLS or 0x40000 <= ord(c) < 0xC0000 for c in text)


def visible(text: str) -> str:
    return "".join(text.split())


def readable(text: str) -> str:
    """`text` without whitespace and the control characters SmolLM2 cannot encode."""
    return "".join(c for c in visible(text) if c not in DROPPED_CONTROLS)


def check_chunk(chunk: Chunk, ordinal: int, budget: int, tokenizer: HFTokenizer) -> None:
    assert chunk.ordinal == ordinal
    assert chunk.text and chunk.text == chunk.text.strip()
    assert 0 < chunk.num_tokens <= budget
    assert chunk.token_ids == tokenizer.encode(chunk.text)
    if representable(chunk.text):
        assert tokenizer.decode(chunk.token_ids) == chunk.text
    assert chunk.chunk_id == chunk_id_of(chunk.text)


@fuzz_settings(120)
@given(text=TEXTS, budget=st.integers(4, 48))
@example(text="\x16", budget=4)  # found by a campaign: a chunk of no tokens
@example(text="Sent one. \x16\x06. Sent two.", budget=4)
def test_every_character_in_exactly_one_chunk(
    serving_tokenizer: HFTokenizer, text: str, budget: int
) -> None:
    chunks = Chunker(serving_tokenizer, chunk_tokens=budget).chunk(text)
    for ordinal, chunk in enumerate(chunks):
        check_chunk(chunk, ordinal, budget, serving_tokenizer)
    # Only whitespace between chunks is normalised: nothing lost, nothing repeated, in order
    # (but for a part made only of bytes the vocabulary lacks: it encodes to no token).
    assert "".join(readable(chunk.text) for chunk in chunks) == readable(text)
    # Where no word overflows the budget, cuts are those of the word-by-word search (over
    # the characters of one word token counts dip, so the searches may pick different cuts).
    words = [word.strip() for word in _WORD.findall(text)]
    if all(len(serving_tokenizer.encode(word)) <= budget for word in words):
        assert chunks == WordByWordChunker(serving_tokenizer, chunk_tokens=budget).chunk(text)


@fuzz_settings(40)
@given(word=st.text(st.characters(exclude_categories=("Z", "Cc", "Cs")), min_size=1, max_size=80))
def test_a_word_longer_than_the_budget_is_split_by_characters(
    serving_tokenizer: HFTokenizer, word: str
) -> None:
    chunks = Chunker(serving_tokenizer, chunk_tokens=4).chunk(word)
    for ordinal, chunk in enumerate(chunks):
        check_chunk(chunk, ordinal, 4, serving_tokenizer)
    assert "".join(chunk.text for chunk in chunks) == visible(word)
