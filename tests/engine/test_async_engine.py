"""The async front steps the engine in bursts on the compute thread: outputs reach their
streams step by step, another computation queued on the compute thread (an embedding, a
prewarm) runs between two steps instead of after the whole burst, and the greedy tokens are
the ones a plain `generate` gives."""

from __future__ import annotations

import asyncio
import threading

from ragkv.compute import ComputeThread
from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request

PROMPT = [1, 504, 3458, 282, 260, 3575, 314]


def request(request_id: str, max_tokens: int) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return Request(request_id, PROMPT, params)


def test_a_queued_computation_runs_between_two_steps_of_a_burst(make_engine) -> None:
    compute = ComputeThread("test-compute")
    engine = make_engine()
    expected = [
        t for out in engine.generate([request("alone", 120)])["alone"] for t in out.token_ids
    ]

    async def scenario() -> tuple[list[int], int, bool]:
        front = AsyncEngine(engine, compute)
        front.start()
        produced: list[int] = []
        seen_by_other, still_running = -1, False

        def other() -> None:
            nonlocal seen_by_other, still_running
            seen_by_other, still_running = len(produced), engine.has_work()

        try:
            async for output in front.stream(request("r", 120)):
                if not produced:  # the first token: queue another computation
                    other_done = asyncio.ensure_future(compute.run(other))
                produced.extend(output.token_ids)  # each output carries its new tokens
            await other_done
            return produced, seen_by_other, still_running
        finally:
            await front.stop()

    try:
        tokens, seen, running = asyncio.run(scenario())
    finally:
        compute.close()
    assert tokens == expected  # bursts change when steps run, not what they compute
    assert running and seen < 120  # it ran while the request was still decoding


def test_others_waiting_counts_calls_queued_behind_the_running_one() -> None:
    compute = ComputeThread("test-compute")
    release, started = threading.Event(), threading.Event()

    def blocking() -> None:
        started.set()
        release.wait()

    try:
        assert not compute.others_waiting
        first = compute._submit(blocking)
        started.wait()
        assert not compute.others_waiting  # the running call is not waiting
        second = compute._submit(lambda: None)
        assert compute.others_waiting
        release.set()
        first.result(), second.result()
        assert not compute.others_waiting
    finally:
        compute.close()
