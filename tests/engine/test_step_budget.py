"""While sequences decode, a step takes at most `prefill_tokens_while_decoding` prefill tokens:
a step's time is the wait between two tokens of every stream, so a long prompt arriving
must not hold them up for a `max_batch_tokens` step. Answers stay those of each request
alone (greedy)."""

from __future__ import annotations

from ragkv.engine.engine import LLMEngine
from ragkv.engine.scheduler import CPU_PREFILL_TOKENS_WHILE_DECODING, prefill_while_decoding
from ragkv.settings import EngineSettings
from tests.engine.conftest import LoadedModel
from tests.engine.helpers import greedy_request, run_greedy
from tests.engine.test_pressure import check_pool, text_prompt


def run_to_end(engine: LLMEngine) -> tuple[list[tuple[int, int]], dict[str, list[int]]]:
    """Step the engine to the end: per step (decode rows, prefill tokens), and each
    request's tokens."""
    sizes, tokens = [], {}
    while engine.has_work():
        before = engine.stats.step_tokens
        rows = sum(1 for s in engine.scheduler.running if not s.in_prefill)
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.token_ids)
        sizes.append((rows, engine.stats.step_tokens - before - rows))
    return sizes, tokens


def test_a_long_prompt_takes_small_steps_while_others_decode(
    make_engine, smollm: LoadedModel
) -> None:
    short, long = text_prompt(smollm, 1, 2), text_prompt(smollm, 8, 14)
    assert len(long) > 200
    expected = {}
    for name, prompt, max_tokens in (("short", short, 24), ("long", long, 3)):
        ((tokens, _),) = run_greedy(make_engine(), [greedy_request(prompt, max_tokens)]).values()
        expected[name] = tokens
    engine = make_engine(max_batch_tokens=256, prefill_tokens_while_decoding=32)
    assert engine.scheduler.prefill_tokens_while_decoding == 32
    decoding = greedy_request(short, 24)
    engine.add_request(decoding)
    first = engine.step()  # its prefill and first token: it decodes from the next step on
    arriving = greedy_request(long, 3)
    engine.add_request(arriving)
    sizes, outputs = run_to_end(engine)
    # While the short request decodes, the long prompt moves 32 tokens a step, not 256.
    while_decoding = [prefill for rows, prefill in sizes if rows and prefill]
    assert while_decoding and max(while_decoding) == 32
    assert engine.scheduler.num_preemptions == 0
    check_pool(engine)
    assert first[0].token_ids + outputs[decoding.request_id] == expected["short"]
    assert outputs[arriving.request_id] == expected["long"]


def test_alone_a_prompt_gets_the_whole_budget(make_engine, smollm: LoadedModel) -> None:
    long = text_prompt(smollm, 8, 14)
    engine = make_engine(max_batch_tokens=128, prefill_tokens_while_decoding=16)
    engine.add_request(greedy_request(long, 2))
    sizes, _ = run_to_end(engine)
    assert sizes[0] == (0, 128)  # nothing decodes: the prefill is not bounded
    assert sizes[-1][0] == 1 and sizes[-1][1] == 0


def test_the_default_bounds_prefill_on_a_cpu_only() -> None:
    settings = EngineSettings()
    assert settings.prefill_tokens_while_decoding == 0
    assert prefill_while_decoding(settings, "cpu") == CPU_PREFILL_TOKENS_WHILE_DECODING
    assert prefill_while_decoding(settings, "cuda") is None
    chosen = EngineSettings(prefill_tokens_while_decoding=64)
    assert prefill_while_decoding(chosen, "cuda") == 64


def test_a_step_that_completes_a_prompt_holds_a_longer_chunk_back(
    make_engine, smollm: LoadedModel
) -> None:
    short, long = text_prompt(smollm, 1, 2), text_prompt(smollm, 8, 14)
    assert len(short) < 64 and len(long) > 128
    expected = {}
    for name, prompt in (("short", short), ("long", long)):
        ((tokens, _),) = run_greedy(make_engine(), [greedy_request(prompt, 3)]).values()
        expected[name] = tokens
    engine = make_engine(max_batch_tokens=64)
    arriving_first = greedy_request(long, 3)
    engine.add_request(arriving_first)
    engine.step()  # the long prompt's first chunk
    arriving_later = greedy_request(short, 3)
    engine.add_request(arriving_later)
    sizes, outputs = run_to_end(engine)
    # The short prompt completes in the next step, which takes nothing of the long one (its
    # chunk would delay the short prompt's first token); the step after takes a chunk again
    # although the short request decodes: no chunk is held back two steps in a row.
    assert sizes[0] == (0, len(short))
    assert sizes[1][0] == 1 and sizes[1][1] > 0
    assert engine.scheduler.num_preemptions == 0
    check_pool(engine)
    assert outputs[arriving_later.request_id] == expected["short"]
    assert outputs[arriving_first.request_id] == expected["long"]


def test_a_long_prompt_advances_at_least_every_other_step(make_engine, smollm: LoadedModel) -> None:
    long = greedy_request(text_prompt(smollm, 8, 14), 1)
    engine = make_engine(max_batch_tokens=64)
    engine.add_request(long)

    def computed() -> int:
        seqs = list(engine.scheduler.running) + list(engine.scheduler.waiting)
        # 0 before the engine takes the request in
        return next((s.num_computed for s in seqs if s.request_id == long.request_id), 0)

    progress, held = [], []
    for i in range(6):  # a short prompt that completes in one step arrives before every step
        engine.add_request(greedy_request(text_prompt(smollm, 1, 1 + i % 2), 1))
        before = computed()
        engine.step()
        progress.append(computed() - before)
        held.append(engine.scheduler.held_back)
    assert not any(a and b for a, b in zip(held, held[1:], strict=False))
    assert all(a or b for a, b in zip(progress, progress[1:], strict=False))
    assert any(held)
