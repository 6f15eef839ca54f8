"""The semantic cache's small parts: guard, classifier, load adaptation, verified thresholds,
single-flight, stream replay and the cacheability rule."""

from __future__ import annotations

import asyncio

import pytest

from ragkv.cache.semantic.adaptive import LoadAdapter
from ragkv.cache.semantic.categories import CategoryClassifier, PolicyTable, rule_category
from ragkv.cache.semantic.guard import guard_conflict
from ragkv.cache.semantic.keys import is_cacheable, normalize_query, template_hash
from ragkv.cache.semantic.single_flight import SingleFlight
from ragkv.cache.semantic.verified import VerifiedThresholds
from ragkv.errors import InvalidRequest
from ragkv.retrieval.embedder import Embedder
from ragkv.settings import CategoryPolicy, SemanticCacheSettings
from tests.cache.conftest import ManualClock


@pytest.mark.parametrize(
    ("new", "old", "conflict"),
    [
        ("Flights to Paris on May 3", "Flights to Paris on May 4", "numbers"),
        ("What happened in March?", "What happened in April?", "dates"),
        ("Why can't I sleep at night?", "Why do I sleep at night?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "entities"),
        ("How do I learn Python?", "What is the best way to learn python", None),
        ("What is 2,000 plus 5?", "what is 2000 plus 5", None),
    ],
)
def test_guard(new: str, old: str, conflict: str | None) -> None:
    assert guard_conflict(new, old) == conflict


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("What is my account balance?", "personal"),
        ("How do I reverse a list in Python?", "code"),
        ("What is 15% of 240?", "math"),
        ("What is the weather today in Oslo?", "time_sensitive"),
        ("Why is the sky blue?", None),
    ],
)
def test_rules(text: str, category: str | None) -> None:
    assert rule_category(text) == category


def test_classifier_centroids_are_embedded_once(embedder: Embedder) -> None:
    settings = SemanticCacheSettings()
    table = PolicyTable(settings.categories, "general")
    embedded: list[str] = []

    def counting_embed(texts):
        embedded.extend(texts)
        return embedder.embed(texts)

    classifier = CategoryClassifier(
        settings.classifier_examples, table, settings.classifier_min_similarity, counting_embed
    )
    queries = {
        "Who do I contact for help with billing?": "faq",
        "When is my dentist appointment?": "personal",
        "Why do cats purr?": "general",
    }
    vectors = embedder.embed(list(queries))
    for (text, expected), vector in zip(queries.items(), vectors, strict=True):
        assert classifier.classify(text, vector) == expected
    # Cheap per query (a product with the centroids, no model call): the examples were
    # embedded once, lazily, and classifying never embeds again. Counted, not timed.
    examples = [t for texts in settings.classifier_examples.values() for t in texts]
    assert sorted(embedded) == sorted(examples)
    for _ in range(200):
        classifier.classify("Why do cats purr?", vectors[2])
    assert len(embedded) == len(examples)


def test_load_adaptation_hysteresis_and_floor() -> None:
    clock = ManualClock(0.0)
    adapter = LoadAdapter(load_high=0.8, load_low=0.5, min_dwell_s=10.0, clock=clock)
    policy = CategoryPolicy(threshold=0.92, floor=0.86)
    assert adapter.threshold(policy) == pytest.approx(0.92)
    adapter.update(0.7)  # below high: still normal
    assert not adapter.relaxed and adapter.threshold(policy) == pytest.approx(0.92)
    adapter.update(1.0)
    assert adapter.relaxed and adapter.threshold(policy) == pytest.approx(0.86)
    adapter.update(0.65)  # between low and high: stays relaxed, 30% of the way to the floor
    assert adapter.relaxed and adapter.threshold(policy) == pytest.approx(0.902)
    adapter.update(0.3)  # below low but within the dwell time: no switch yet
    assert adapter.relaxed and adapter.threshold(policy) == pytest.approx(0.92)
    clock.advance(11)
    adapter.update(0.3)
    assert not adapter.relaxed
    adapter.update(0.9)  # high again, but the last switch was just now
    assert not adapter.relaxed
    clock.advance(11)
    for load in (0.81, 0.9, 0.99, 1.0):
        adapter.update(load)
        assert policy.floor <= adapter.threshold(policy) <= policy.threshold
    with pytest.raises(InvalidRequest):
        adapter.update(1.5)


def test_verified_thresholds_learn_from_feedback() -> None:
    verified = VerifiedThresholds(delta=0.1, min_observations=5)
    assert verified.threshold(1, "general", configured=0.92, floor=0.8) == 0.92
    # A wrong hit at 0.95 raises that entry's bar above 0.95.
    verified.observe(1, "general", 0.95, correct=False)
    assert verified.threshold(1, "general", 0.92, 0.8) > 0.95
    # Plenty of correct hits down to 0.85 for entry 2 lower its threshold toward them.
    for similarity in (0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91, 0.93, 0.94, 0.96, 0.97, 0.98):
        verified.observe(2, "general", similarity, correct=True)
    learned = verified.threshold(2, "general", 0.92, 0.8)
    assert 0.8 <= learned < 0.92
    # Never below the floor.
    assert verified.threshold(2, "general", 0.92, 0.9) >= 0.9


def test_single_flight_runs_once() -> None:
    flights = SingleFlight()
    calls = 0

    async def generate() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "answer"

    async def main() -> list[tuple[str, bool]]:
        key = ("partition", normalize_query("  What IS  the answer? "))
        return await asyncio.gather(*(flights.run(key, generate) for _ in range(5)))

    results = asyncio.run(main())
    assert calls == 1
    assert [r for r, _ in results] == ["answer"] * 5
    assert sum(leader for _, leader in results) == 1


def test_single_flight_shares_errors() -> None:
    flights = SingleFlight()

    async def fail() -> str:
        await asyncio.sleep(0.01)
        raise RuntimeError("model failed")

    async def main() -> list[object]:
        return await asyncio.gather(*(flights.run("k", fail) for _ in range(3)),
                                    return_exceptions=True)  # fmt: skip

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert not flights.in_flight("k")


def test_single_flight_leader_shares_a_streamed_answer() -> None:
    flights = SingleFlight(grace_s=3600)  # "a moment ago" holds however slow the machine

    async def main() -> tuple[list[object], object, bool]:
        flight = flights.lead("k")
        waiters = [asyncio.create_task(flights.wait("k", 5)) for _ in range(3)]
        await asyncio.sleep(0)
        running = flights.in_flight("k")
        flight.resolve("answer")
        flight.resolve("ignored: a flight resolves once")
        shared = await asyncio.gather(*waiters)
        late = await flights.wait("k", 5)  # resolved a moment ago: still joinable
        return shared, late, running

    shared, late, running = asyncio.run(main())
    assert running and shared == ["answer"] * 3 and late == "answer"


def test_single_flight_without_an_answer_lets_followers_run() -> None:
    flights = SingleFlight()

    async def main() -> tuple[object, object, object, bool]:
        alone = await flights.wait("k", 5)  # nobody leads: nothing to wait for
        flight = flights.lead("k")
        waiter = asyncio.create_task(flights.wait("k", 5))
        await asyncio.sleep(0)
        flight.resolve(None)  # the leader's answer was incomplete
        nothing = await waiter
        stuck = flights.lead("stuck")
        timed_out = await flights.wait("stuck", 0.01)  # never resolved within the wait
        stuck.resolve(None)
        return alone, nothing, timed_out, flights.in_flight("k")

    assert asyncio.run(main()) == (None, None, None, False)


def test_cacheable_and_keys() -> None:
    assert is_cacheable(0.0, None) and not is_cacheable(0.7, None)
    assert not is_cacheable(None, None)
    assert is_cacheable(0.9, True) and not is_cacheable(0.0, False)
    assert template_hash(None) == "none"
    assert template_hash("You are terse.") != template_hash("You are verbose.")
