"""Continuous batching gives the same greedy tokens as one request at a time."""

from __future__ import annotations

from tests.engine.conftest import LoadedModel
from tests.engine.helpers import greedy_request, run_greedy

QUESTIONS = [
    "What is the tallest mountain on Earth?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?",
    "Give me a synonym for happy.",
]


def test_eight_concurrent_equal_eight_sequential(make_engine, smollm: LoadedModel) -> None:
    tokenizer = smollm.tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUESTIONS]
    sequential = []
    for prompt in prompts:
        engine = make_engine()
        ((tokens, _),) = run_greedy(engine, [greedy_request(prompt, 12)]).values()
        sequential.append(tokens)
    engine = make_engine(max_batch_tokens=128)  # several steps mix prefill chunks and decodes
    requests = [greedy_request(prompt, 12) for prompt in prompts]
    batched = run_greedy(engine, requests)
    assert [batched[r.request_id][0] for r in requests] == sequential
    assert engine.pool.num_free + engine.radix.size_info().total_pages == engine.pool.num_pages
