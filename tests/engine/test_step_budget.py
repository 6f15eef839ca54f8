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
