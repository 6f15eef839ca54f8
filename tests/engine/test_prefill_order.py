"""Prefill order: fewest tokens left to compute first, so an agent back from a tool (its
conversation cached, a few new tokens) is not queued behind a long prompt's chunked prefill;
every answer is still the one the request gets alone."""

from __future__ import annotations

from ragkv.engine.engine import LLMEngine
from tests.engine.conftest import LoadedModel
from tests.engine.helpers import greedy_request, run_greedy
from tests.engine.test_pressure import check_pool, text_prompt


def first_token_steps(engine: LLMEngine, requests) -> dict[str, int]:
    """Step the engine to the end: per request, the step that gave its first token."""
    for request in requests:
        engine.add_request(request)
    first: dict[str, int] = {}
    step = 0
    while engine.has_work():
        step += 1
        for output in engine.step():
            first.setdefault(output.request_id, step)
    return first


def test_a_cached_conversation_goes_before_a_long_prefill(make_engine, smollm: LoadedModel) -> None:
    conversation = text_prompt(smollm, 3, 6)  # the agent's turn so far
    back = conversation + smollm.tokenizer.encode(" Tool result: 42.")
    long = text_prompt(smollm, 9, 16)
    expected = {}
    for name, prompt in (("back", back), ("long", long)):
        ((tokens, _),) = run_greedy(make_engine(), [greedy_request(prompt, 4)]).values()
        expected[name] = tokens
    engine = make_engine(max_batch_tokens=64)
    run_greedy(engine, [greedy_request(conversation, 1)])  # its KV is in the prefix cache
    long_request = greedy_request(long, 4)
    engine.add_request(long_request)
    engine.step()  # the long prompt's prefill has started: 64 of its tokens
    back_request = greedy_request(back, 4)
    steps = first_token_steps(engine, [back_request])
    # The agent is served in the next step; the long prompt needs 64-token chunks to go on.
    assert steps[back_request.request_id] == 1
    assert steps[long_request.request_id] >= -(-(len(long) - 64) // 64)
    assert engine.scheduler.num_preemptions == 0
    check_pool(engine)
    # Same tokens as each request alone (greedy), the agent's from its cached conversation.
    again = make_engine(max_batch_tokens=64)
    run_greedy(again, [greedy_request(conversation, 1)])
    requests = [greedy_request(back, 4), greedy_request(long, 4)]
    results = run_greedy(again, requests)
    assert [results[r.request_id][0] for r in requests] == [expected["back"], expected["long"]]
    assert results[requests[0].request_id][1] >= len(conversation) - 16
