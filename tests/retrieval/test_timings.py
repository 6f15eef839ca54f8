"""Search latency kept for the operator: counted when a search ends (also on error),
percentiles over the recent window only."""

from __future__ import annotations

import pytest

from ragkv.retrieval.timings import SearchTimings


def record(timings: SearchTimings, values_ms: list[float]) -> None:
    # The measured durations are not under test; feed known values through the window.
    for value in values_ms:
        with timings._lock:
            timings._ms.append(value)
            timings.count += 1


def test_no_search_yet() -> None:
    assert SearchTimings().summary() == {"searches": 0, "p50_ms": None, "p95_ms": None}


def test_measure_counts_even_a_failed_search() -> None:
    timings = SearchTimings()
    with pytest.raises(ValueError), timings.measure():
        raise ValueError("index gone")
    summary = timings.summary()
    assert summary["searches"] == 1 and summary["p50_ms"] >= 0


def test_percentiles_cover_the_recent_window_only() -> None:
    timings = SearchTimings(window=100)
    record(timings, [1000.0] * 50)  # old, slow searches leave the window
    record(timings, [float(v) for v in range(1, 101)])
    summary = timings.summary()
    assert summary["searches"] == 150
    assert summary["p50_ms"] == 50.5
    assert summary["p95_ms"] == pytest.approx(95.05)
