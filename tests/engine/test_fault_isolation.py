"""One poisoned request fails alone: a failure while sampling, detokenising or in the shared
forward ends that request with an error output and frees its pages, and the requests batched
with it produce the tokens they produce without it."""

from __future__ import annotations

import pytest

from ragkv.engine.sequence import Constraint
from tests.engine.conftest import LoadedModel
from tests.engine.helpers import greedy_request

QUESTIONS = ["Name a fruit.", "What is the capital of Italy?", "Say hello.", "Count to three."]


class Poison:
    """A fault hook that raises for one request at one stage (from its `after`-th call)."""

    def __init__(self, request_id: str, stage: str, after: int = 0) -> None:
        self.request_id, self.stage, self.after, self.calls = request_id, stage, after, 0

    def __call__(self, seq, stage: str) -> None:
        if seq.request_id == self.request_id and stage == self.stage:
            self.calls += 1
            if self.calls > self.after:
                raise RuntimeError(f"injected {stage} failure")


def tokens(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


@pytest.fixture
def prompts(smollm: LoadedModel) -> list[list[int]]:
    template = smollm.tokenizer.apply_chat_template
    return [template([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.mark.parametrize(
    ("stage", "after"), [("sample", 3), ("detokenize", 0), ("forward", 2)], ids=str
)
def test_a_failing_request_fails_alone(make_engine, prompts, stage: str, after: int) -> None:
    reference = make_engine().generate([greedy_request(p, 8) for p in prompts])
    expected = [tokens(outs) for outs in reference.values()]
    engine = make_engine(max_batch_tokens=64)  # prefill chunks and decodes share steps
    requests = [greedy_request(p, 8) for p in prompts]
    poisoned = requests[1]
    engine.post.fault_hook = Poison(poisoned.request_id, stage, after)
    outputs = engine.generate(requests)
    last = outputs[poisoned.request_id][-1]
    assert last.finished and last.finish_reason == "error"
    assert f"injected {stage} failure" in last.error
    for index, request in enumerate(requests):
        if request is not poisoned:
            assert tokens(outputs[request.request_id]) == expected[index]
            assert outputs[request.request_id][-1].error is None
    assert engine.stats.failed_requests == 1
    assert not engine.scheduler.running and not engine.scheduler.waiting
    assert engine.pool.num_free + engine.radix.size_info().total_pages == engine.pool.num_pages


def test_a_forward_that_fails_for_everyone_fails_each_request(make_engine, prompts) -> None:
    engine = make_engine()
    requests = [greedy_request(p, 4) for p in prompts[:2]]

    def always(seq, stage: str) -> None:
        if stage == "forward":
            raise RuntimeError("the device is gone")

    engine.post.fault_hook = always
    outputs = engine.generate(requests)
    assert all(outs[-1].finish_reason == "error" for outs in outputs.values())
    assert engine.pool.num_free + engine.radix.size_info().total_pages == engine.pool.num_pages


def test_a_failing_grammar_mask_fails_its_request_alone(make_engine, prompts) -> None:
    """The batched mask fails (a bad matcher): the step masks row by row, so only the
    request whose mask fails ends; the other constrained one still follows its grammar."""
    digits = Constraint("regex", "[0-9]{6}")
    reference = make_engine().generate(
        [greedy_request(p, 8) for p in prompts[:2]]
        + [greedy_request(prompts[3], 8, constraint=digits)]
    )
    expected = [tokens(outs) for outs in reference.values()]
    engine = make_engine(max_batch_tokens=64)
    requests = [greedy_request(p, 8) for p in prompts[:2]] + [
        greedy_request(prompts[i], 8, constraint=digits) for i in (3, 2)
    ]
    poisoned = requests[3]
    engine.post.fault_hook = Poison(poisoned.request_id, "mask", after=2)
    outputs = engine.generate(requests)
    last = outputs[poisoned.request_id][-1]
    assert last.finish_reason == "error" and "injected mask failure" in last.error
    for index, request in enumerate(requests[:3]):
        assert tokens(outputs[request.request_id]) == expected[index]
    assert engine.stats.failed_requests == 1
    assert engine.pool.num_free + engine.radix.size_info().total_pages == engine.pool.num_pages
