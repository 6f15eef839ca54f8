"""The sampler on fixed logits: greedy, top-k, top-p, seeds, logprobs, extreme settings."""

from __future__ import annotations

import math

import pytest
import torch

from ragkv.engine.sampling import SamplingParams, make_generator, sample
from ragkv.errors import InvalidRequest

LOGITS = torch.tensor([2.0, 1.0, 0.5, -1.0, 3.0])


def draws(params: SamplingParams, count: int = 200) -> set[int]:
    generator = make_generator(7)
    return {sample(LOGITS, params, generator)[0] for _ in range(count)}


def test_greedy_and_tiny_temperatures_pick_the_argmax() -> None:
    for temperature in (0.0, 1e-300, 1e-6):
        assert sample(LOGITS, SamplingParams(temperature=temperature), None)[0] == 4


def test_top_k_and_top_p_restrict_the_choices() -> None:
    assert draws(SamplingParams(temperature=1.0, top_k=2)) == {0, 4}
    assert draws(SamplingParams(temperature=1.0, top_p=1e-9)) == {4}
    assert draws(SamplingParams(temperature=5.0)) == {0, 1, 2, 3, 4}


def test_seeded_sampling_repeats() -> None:
    params = SamplingParams(temperature=1.0)
    first = [sample(LOGITS, params, g)[0] for g in [make_generator(3)] for _ in range(20)]
    again = [sample(LOGITS, params, g)[0] for g in [make_generator(3)] for _ in range(20)]
    assert first == again


def test_logprobs_are_the_log_softmax() -> None:
    token, logprob = sample(
        LOGITS, SamplingParams(temperature=0, logprobs=True, top_logprobs=2), None
    )
    expected = torch.log_softmax(LOGITS, dim=-1)
    assert logprob is not None and logprob.token_id == token == 4
    assert math.isclose(logprob.logprob, float(expected[4]), abs_tol=1e-6)
    assert [t for t, _ in logprob.top] == [4, 0]


@pytest.mark.parametrize(
    "fields",
    [{"max_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"top_k": -1}, {"top_logprobs": 21}],
)
def test_invalid_params_are_rejected(fields: dict) -> None:
    with pytest.raises(InvalidRequest):
        SamplingParams(**fields)
