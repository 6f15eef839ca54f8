"""A tiny KV pool: long requests still finish (eviction, preemption); pins last until TTL."""

from __future__ import annotations

import pytest

from ragkv.engine.engine import LLMEngine
from ragkv.errors import InvalidRequest, Overloaded
from tests.engine.conftest import LoadedModel, ManualClock
from tests.engine.helpers import greedy_request, run_greedy
from tests.engine.test_exactness import SENTENCES


def text_prompt(smollm: LoadedModel, seed: int, num_sentences: int) -> list[int]:
    """A prompt unique to `seed` from its first token on (no shared prefix with others)."""
    body = " ".join(SENTENCES[(seed + i) % len(SENTENCES)] for i in range(num_sentences))
    return smollm.tokenizer.encode(f"Document {seed}: {body}")


def check_pool(engine: LLMEngine) -> None:
    engine.radix.check_integrity()
    held = engine.radix.size_info().total_pages
    assert engine.pool.num_free + held == engine.pool.num_pages
    assert not engine.scheduler.running and not engine.scheduler.waiting


@pytest.mark.slow  # ~30 s; preemption is also covered by test_grammar (preempted sequences)
def test_long_requests_finish_in_a_tiny_pool(make_engine, smollm: LoadedModel) -> None:
    prompts = [text_prompt(smollm, seed, 8) for seed in range(3)]
    max_tokens = 80
    expected = []
    for prompt in prompts:
        ((tokens, _),) = run_greedy(make_engine(), [greedy_request(prompt, max_tokens)]).values()
        expected.append(tokens)
    engine = make_engine(kv_cache_mb=16)  # ~22 pages: two prompts fit, their answers do not
    needed = [engine.pool.pages_for(len(p) + max_tokens) for p in prompts]
    assert sum(needed[:2]) > engine.pool.num_pages >= max(needed)
    requests = [greedy_request(prompt, max_tokens) for prompt in prompts]
    results = run_greedy(engine, requests)
    assert [results[r.request_id][0] for r in requests] == expected
    assert engine.scheduler.num_preemptions > 0
    check_pool(engine)


def test_request_bigger_than_the_pool_is_a_clear_400(make_engine, smollm: LoadedModel) -> None:
    engine = make_engine(kv_cache_mb=4)
    with pytest.raises(InvalidRequest, match="KV pages"):
        engine.add_request(greedy_request(text_prompt(smollm, 0, 30), 8))


def test_context_overflow_names_the_numbers(make_engine, smollm: LoadedModel) -> None:
    engine = make_engine()
    with pytest.raises(InvalidRequest, match="8192") as info:
        engine.add_request(greedy_request([1] * 8000, 500))
    assert info.value.code == "context_length_exceeded"


def test_full_queue_is_overloaded(make_engine, smollm: LoadedModel) -> None:
    engine = make_engine(max_waiting=2, retry_after_s=3)
    prompt = text_prompt(smollm, 0, 2)
    engine.add_request(greedy_request(prompt, 2))
    engine.add_request(greedy_request(prompt, 2))
    with pytest.raises(Overloaded) as info:
        engine.add_request(greedy_request(prompt, 2))
    assert info.value.headers["Retry-After"] == "3"


def cached_on_repeat(engine: LLMEngine, prompt: list[int]) -> int:
    ((_, cached),) = run_greedy(engine, [greedy_request(prompt, 1)]).values()
    return cached


def apply_pressure(engine: LLMEngine, smollm: LoadedModel, first_seed: int) -> None:
    for seed in range(first_seed, first_seed + 4):
        run_greedy(engine, [greedy_request(text_prompt(smollm, seed, 14), 4)])


def test_pinned_session_survives_pressure_until_ttl(make_engine, smollm: LoadedModel) -> None:
    clock = ManualClock()
    engine = make_engine(clock=clock, kv_cache_mb=32)
    session = text_prompt(smollm, 100, 8)
    unpinned = text_prompt(smollm, 200, 8)
    run_greedy(engine, [greedy_request(session, 4, pin_ttl_s=60)])
    run_greedy(engine, [greedy_request(unpinned, 4)])
    clock.now += 1
    apply_pressure(engine, smollm, first_seed=10)
    assert engine.radix.size_info().pinned_pages > 0
    assert cached_on_repeat(engine, unpinned) == 0
    assert cached_on_repeat(engine, session) >= len(session) // 16 * 16 - 16

    clock.now += 61  # the pin has expired: the session's pages are ordinary LRU pages now
    apply_pressure(engine, smollm, first_seed=20)
    assert engine.radix.size_info().pinned_pages == 0
    assert cached_on_repeat(engine, session) == 0
    check_pool(engine)


def test_a_session_moves_its_pin_to_the_latest_turn(make_engine, smollm: LoadedModel) -> None:
    clock = ManualClock()
    engine = make_engine(clock=clock, kv_cache_mb=32, session_pin_ttl_s=30)
    first_turn = text_prompt(smollm, 300, 4)
    second_turn = text_prompt(smollm, 400, 4)  # a different path: the old pin must go
    run_greedy(engine, [greedy_request(first_turn, 2, session_id="agent-1")])
    pinned_after_first = engine.radix.size_info().pinned_pages
    assert pinned_after_first >= len(first_turn) // 16
    run_greedy(engine, [greedy_request(second_turn, 2, session_id="agent-1")])
    assert engine.radix.size_info().pinned_pages == (len(second_turn) + 1) // 16
    clock.now += 31
    assert engine.radix.size_info().pinned_pages == 0


@pytest.mark.parametrize("on_demand", [False, True])
def test_a_running_request_takes_pages_from_tool_pins_before_preempting(
    make_engine, smollm: LoadedModel, on_demand: bool
) -> None:
    """Pinned at the tool call, or on demand: pinned when the other request's pages reach
    the conversation, then trimmed for it."""
    agent = text_prompt(smollm, 7, 16)  # an agent's conversation, waiting on a tool
    other = text_prompt(smollm, 8, 8)
    max_tokens = 60
    ((expected, _),) = run_greedy(make_engine(), [greedy_request(other, max_tokens)]).values()
    engine = make_engine(kv_cache_mb=16, tool_pin_max_share=0.6, tool_pin_on_demand=on_demand)
    run_greedy(engine, [greedy_request(agent, 1)])  # its KV is now in the radix tree
    pinned = engine.pin_tool_turn("default", agent, ttl_s=600.0) // engine.pool.page_size
    assert pinned > 0
    assert engine.radix.size_info().pinned_pages == (0 if on_demand else pinned)
    # The other request fits in the pool only with some of the pinned pages.
    assert engine.pool.num_pages - pinned < engine.pool.pages_for(len(other) + max_tokens)
    ((tokens, _),) = run_greedy(engine, [greedy_request(other, max_tokens)]).values()
    assert tokens == expected
    stats = engine.scheduler.tool_pins.stats()
    # the pin gave up pages from its end as the request grew, and keeps its first ones
    assert stats["yielded"] >= 1 and stats["trimmed"] >= 1 and stats["active"] == 1
    assert (stats["made"], stats["held"], stats["waiting"]) == (1, 1, 0)
    assert 0 < stats["pinned_pages"] < pinned
    assert engine.radix.size_info().pinned_pages == stats["pinned_pages"]
    assert engine.scheduler.num_preemptions == 0
    check_pool(engine)


def test_a_follow_up_waiting_for_pages_keeps_its_tool_pin(make_engine, smollm: LoadedModel) -> None:
    """The agent is back but the pool is busy: its pin holds until it is admitted (released
    at a failed admission, the conversation would be evictable while the agent queues)."""
    engine = make_engine(kv_cache_mb=32, tool_pin_max_share=0.5, tool_pin_on_demand=False)
    page, pool = engine.pool.page_size, engine.pool.num_pages
    agent = text_prompt(smollm, 7, 6)
    run_greedy(engine, [greedy_request(agent, 1)])  # its KV is now in the radix tree
    pinned = engine.pin_tool_turn("default", agent, ttl_s=600.0) // page
    assert pinned == len(agent) // page
    cached = engine.radix.size_info().total_pages
    # another request holds all but one of the pages left, and never needs more
    filler = text_prompt(smollm, 8, 40)[: (pool - cached - 1) * page - 8]
    engine.add_request(greedy_request(filler, 8))
    engine.step()
    while engine.scheduler.running[0].in_prefill:
        engine.step()
    follow_up = greedy_request(agent + smollm.tokenizer.encode(" The tool said: 42. " * 6), 2)
    assert engine.pool.pages_for(len(follow_up.prompt_ids)) - pinned > engine.pool.num_free
    engine.add_request(follow_up)
    engine.step()  # no room: the follow-up waits
    assert follow_up.request_id in [s.request_id for s in engine.scheduler.waiting]
    stats = engine.scheduler.tool_pins.stats()
    assert (stats["hit"], stats["active"], stats["pinned_pages"]) == (0, 1, pinned)
    results: dict[str, list] = {}
    while engine.has_work():
        for output in engine.step():
            results.setdefault(output.request_id, []).append(output)
    assert results[follow_up.request_id][-1].cached_tokens == pinned * page
    stats = engine.scheduler.tool_pins.stats()
    assert (stats["hit"], stats["active"]) == (1, 0)
    check_pool(engine)
