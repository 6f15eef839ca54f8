"""Retry-After from the measured drain rate: the floor until a rate is known, the queue over
the rate after, within a cap, and old finishes age out of the window."""

from __future__ import annotations

import pytest

from ragkv.engine.load import DrainRate
from ragkv.errors import Overloaded
from tests.engine.conftest import LoadedModel, ManualClock
from tests.engine.helpers import greedy_request


def test_no_rate_yet_gives_the_floor() -> None:
    drain = DrainRate(clock=ManualClock())
    assert drain.per_s() is None
    assert drain.retry_after_s(queued=50, floor_s=2) == 2
    drain.finished()
    assert drain.retry_after_s(queued=50, floor_s=2) == 2  # one finish is no rate


def test_rate_turns_the_queue_into_seconds() -> None:
    clock = ManualClock()
    drain = DrainRate(window_s=60, clock=clock)
    for _ in range(20):  # 20 finishes, 0.5 s apart: 2 per second
        drain.finished()
        clock.now += 0.5
    assert drain.per_s() == 2.0
    assert drain.retry_after_s(queued=21, floor_s=1) == 11
    assert drain.retry_after_s(queued=1, floor_s=3) == 3  # never below the floor
    assert drain.retry_after_s(queued=10_000, floor_s=1, cap_s=120) == 120


def test_finishes_older_than_the_window_age_out() -> None:
    clock = ManualClock()
    drain = DrainRate(window_s=10, clock=clock)
    drain.finished()
    drain.finished()
    clock.now += 11
    assert drain.per_s() is None


def test_full_queue_answers_with_the_measured_drain(make_engine, smollm: LoadedModel) -> None:
    clock = ManualClock()
    engine = make_engine(clock=clock, max_waiting=2, retry_after_s=1)
    prompt = smollm.tokenizer.encode("The weather today is")
    for _ in range(3):  # three real requests finish, 5 s of the clock apart
        engine.generate([greedy_request(prompt, 2)])
        clock.now += 5
    clock.now -= 5  # finishes at 0, 5 and 10 s: 0.3 per second
    engine.add_request(greedy_request(prompt, 2))
    engine.add_request(greedy_request(prompt, 2))
    with pytest.raises(Overloaded) as info:
        engine.add_request(greedy_request(prompt, 2))
    assert info.value.headers["Retry-After"] == "7"  # 2 queued / 0.3 per s, rounded up
