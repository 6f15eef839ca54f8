"""Chunker with SmolLM2's real tokenizer: budgets, boundaries, coverage, stable ids."""

from __future__ import annotations

import re

import pytest

from ragkv.retrieval.chunker import Chunker, chunk_id_of
from ragkv.retrieval.loaders import wikipedia_sample
from ragkv.retrieval.tokenizer import HFTokenizer

SENTENCES = [
    f"Sentence number {i} talks about topic {i * 7 % 13} in some detail." for i in range(60)
]


def words(text: str) -> list[str]:
    return text.split()


def test_chunks_respect_budget_and_token_ids_match_text(serving_tokenizer: HFTokenizer) -> None:
    chunker = Chunker(serving_tokenizer, chunk_tokens=48)
    chunks = chunker.chunk(" ".join(SENTENCES))
    assert len(chunks) > 5
    for ordinal, chunk in enumerate(chunks):
        assert chunk.ordinal == ordinal
        assert 0 < chunk.num_tokens <= 48
        assert chunk.token_ids == serving_tokenizer.encode(chunk.text)
        assert serving_tokenizer.decode(chunk.token_ids) == chunk.text


def test_chunks_end_at_sentence_boundaries_without_overlap(serving_tokenizer: HFTokenizer) -> None:
    text = " ".join(SENTENCES)
    chunks = Chunker(serving_tokenizer, chunk_tokens=48).chunk(text)
    assert all(chunk.text.endswith(".") for chunk in chunks)
    # No overlap and nothing lost: the chunks' words are the text's words, in order.
    assert [w for chunk in chunks for w in words(chunk.text)] == words(text)
    # Packed, not one sentence per chunk: a 48-token chunk holds several 15-token sentences.
    assert len(chunks) < len(SENTENCES) / 2


def test_paragraph_break_ends_a_half_full_chunk(serving_tokenizer: HFTokenizer) -> None:
    first = " ".join(SENTENCES[:3])
    second = " ".join(SENTENCES[3:5])
    chunks = Chunker(serving_tokenizer, chunk_tokens=64).chunk(f"{first}\n\n{second}")
    assert [chunk.text for chunk in chunks] == [first, second]
    # A short paragraph (under half the budget) is packed with the next one.
    short = Chunker(serving_tokenizer, chunk_tokens=256).chunk(f"{first}\n\n{second}")
    assert [chunk.text for chunk in short] == [f"{first}\n\n{second}"]


def test_long_sentence_is_split_between_words(serving_tokenizer: HFTokenizer) -> None:
    sentence = " ".join(f"word{i}" for i in range(200)) + "."
    chunks = Chunker(serving_tokenizer, chunk_tokens=32).chunk(sentence)
    assert len(chunks) > 3
    assert all(chunk.num_tokens <= 32 for chunk in chunks)
    assert [w for chunk in chunks for w in words(chunk.text)] == words(sentence)


def test_same_text_gives_same_ids_and_ids_follow_content(serving_tokenizer: HFTokenizer) -> None:
    chunker = Chunker(serving_tokenizer, chunk_tokens=48)
    text = " ".join(SENTENCES[:20])
    first, second = chunker.chunk(text), chunker.chunk(text)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
    assert len({c.chunk_id for c in first}) == len(first)
    assert all(c.chunk_id == chunk_id_of(c.text) for c in first)
    edited = chunker.chunk(text.replace("Sentence number 0 ", "Sentence number zero "))
    assert edited[0].chunk_id != first[0].chunk_id
    assert [c.chunk_id for c in edited[1:]] == [c.chunk_id for c in first[1:]]


def test_default_budget_on_wikipedia_leads(serving_tokenizer: HFTokenizer) -> None:
    chunker = Chunker(serving_tokenizer)
    assert chunker.chunk_tokens == 256
    for doc in wikipedia_sample()[:300]:
        chunks = chunker.chunk(doc.text)
        assert chunks and all(c.num_tokens <= 256 for c in chunks)
        assert re.sub(r"\s+", " ", " ".join(c.text for c in chunks)) == re.sub(
            r"\s+", " ", doc.text.strip()
        )


def test_callable_tokenizer_and_blank_text() -> None:
    chunker = Chunker(lambda text: [len(w) for w in text.split()], chunk_tokens=4)
    chunks = chunker.chunk("one two three. four five. six seven eight nine ten.")
    assert [c.text for c in chunks] == [
        "one two three.",
        "four five.",
        "six seven eight nine",
        "ten.",
    ]
    assert chunker.chunk("  \n\n ") == []
    with pytest.raises(TypeError):
        Chunker(42)  # type: ignore[arg-type]


def test_a_long_text_without_sentence_ends_takes_few_encodes(
    serving_tokenizer: HFTokenizer,
) -> None:
    """A max-size document with no punctuation (a log, a CSV) once took an encode per word:
    70 s for 1 MB. Cuts are now searched by doubling and bisection."""
    calls = []

    def counting(text: str) -> list[int]:
        calls.append(len(text))
        return serving_tokenizer.encode(text)

    text = " ".join(f"w{i}" for i in range(20_000))
    chunks = Chunker(counting, chunk_tokens=256).chunk(text)
    assert [w for chunk in chunks for w in words(chunk.text)] == words(text)
    assert all(chunk.num_tokens <= 256 for chunk in chunks)
    # One encode per word before (over 20,000); now about 2 log2(words per chunk) per chunk.
    assert len(calls) < 20 * len(chunks) < 20_000
