"""Incremental detokenisation: the text built a window at a time equals a full decode of the
output after every token (held back only while a UTF-8 character is half there), stop strings
straddling tokens are found, and the streamed deltas join to the final text."""

from __future__ import annotations

import random

import pytest

from ragkv.assets import generation_model_path
from ragkv.engine.output import OutputProcessor
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request, Sequence
from ragkv.engine.tokenizer import Tokenizer

TEXTS = [
    "Hello world, this is plain ASCII text with numbers 12345 and punctuation!?",
    "Accents: café, naïve, Zürich, São Paulo; CJK: 東京は日本の首都です。 emoji: 🙂🚀👩‍🔬",
    "  leading spaces,\n\nnew lines\tand tabs   trailing  ",
    "def f(x):\n    return {'a': [1, 2, 3]}  # code ✓",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(generation_model_path())


def sequence(stop: tuple[str, ...] = (), max_tokens: int = 10_000) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, stop=stop)
    return Sequence(Request("r", [1, 2, 3], params), "t", [1, 2, 3], None)


def feed(processor: OutputProcessor, seq: Sequence, ids: list[int]) -> tuple[str, str | None]:
    """Append `ids` one by one like the engine does; the joined deltas and the finish."""
    deltas = []
    for token in ids:
        reason = processor.append(seq, token, None)
        seq.finish_reason = reason
        deltas.append(processor.output(seq).text)
        if reason is not None:
            break
    return "".join(deltas), seq.finish_reason


def check_prefix_of_full_decode(tokenizer: Tokenizer, seq: Sequence) -> None:
    full = tokenizer.decode(seq.output_ids)
    if full.endswith("\ufffd"):
        assert full.startswith(seq.text)
    else:
        assert seq.text == full


@pytest.mark.parametrize("text", TEXTS)
def test_text_equals_full_decode_after_every_token(tokenizer: Tokenizer, text: str) -> None:
    processor, seq = OutputProcessor(tokenizer), sequence()
    for token in tokenizer.encode(text):
        processor.append(seq, token, None)
        check_prefix_of_full_decode(tokenizer, seq)
    assert seq.text == tokenizer.decode(seq.output_ids) == text


def test_random_token_ids_match_full_decode(tokenizer: Tokenizer) -> None:
    # Random ids split characters anywhere; a fixed seed keeps the case the same everywhere.
    rng = random.Random(1234)
    specials = tokenizer.stop_token_ids
    for _ in range(20):
        ids = [t for t in (rng.randrange(tokenizer.vocab_size) for _ in range(60)) if t > 16]
        processor, seq = OutputProcessor(tokenizer), sequence(max_tokens=len(ids))
        joined, _ = feed(processor, seq, [t for t in ids if t not in specials])
        assert seq.text == tokenizer.decode(seq.output_ids)
        assert joined == seq.text


def test_stop_string_across_tokens_cuts_text(tokenizer: Tokenizer) -> None:
    processor, seq = OutputProcessor(tokenizer), sequence(stop=("lo wor", "again"))
    joined, reason = feed(processor, seq, tokenizer.encode("Hello world again and again"))
    assert reason == "stop"
    assert seq.text == joined == "Hel"


def test_earliest_of_several_stops_wins(tokenizer: Tokenizer) -> None:
    processor, seq = OutputProcessor(tokenizer), sequence(stop=("three", "two"))
    joined, reason = feed(processor, seq, tokenizer.encode("one two three four"))
    assert (joined, reason) == ("one ", "stop")


def test_stop_token_is_not_shown(tokenizer: Tokenizer) -> None:
    processor, seq = OutputProcessor(tokenizer), sequence()
    stop_token = min(tokenizer.stop_token_ids)
    joined, reason = feed(processor, seq, [*tokenizer.encode("Done."), stop_token])
    assert (joined, reason) == ("Done.", "stop")


def test_half_character_at_the_end_is_kept_like_a_full_decode(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("🙂")
    assert len(ids) > 1, "the emoji should take several byte tokens"
    processor, seq = OutputProcessor(tokenizer), sequence(max_tokens=len(ids) - 1)
    joined, reason = feed(processor, seq, ids)
    assert reason == "length"
    assert joined == seq.text == tokenizer.decode(ids[:-1])
