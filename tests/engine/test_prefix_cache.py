"""Prefix reuse through the radix tree: exact outputs, page-rounded hits, tenant isolation."""

from __future__ import annotations

from ragkv.engine.sequence import KVReuse
from tests.engine.conftest import LoadedModel
from tests.engine.helpers import greedy_request, run_greedy
from tests.engine.test_exactness import long_text


def test_shared_prefix_is_reused_and_output_is_identical(make_engine, smollm: LoadedModel):
    tokenizer = smollm.tokenizer
    shared = tokenizer.encode(long_text(14))
    first = shared + tokenizer.encode(" Which town built a library?")
    second = shared + tokenizer.encode(" When did the lighthouse storm happen?")
    engine = make_engine()
    run_greedy(engine, [greedy_request(first, 4)])
    ((warm_tokens, cached),) = run_greedy(engine, [greedy_request(second, 12)]).values()

    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert cached == common // 16 * 16
    assert cached >= 160

    cold_engine = make_engine()
    ((cold_tokens, cold_cached),) = run_greedy(cold_engine, [greedy_request(second, 12)]).values()
    assert cold_cached == 0
    assert warm_tokens == cold_tokens


def test_full_repeat_hits_all_but_the_last_partial_page(make_engine, smollm: LoadedModel):
    prompt = smollm.tokenizer.encode(long_text(6))
    engine = make_engine()
    run_greedy(engine, [greedy_request(prompt, 2)])
    ((_, cached),) = run_greedy(engine, [greedy_request(prompt, 2)]).values()
    assert cached == (len(prompt) - 1) // 16 * 16


def test_tenants_do_not_share_prefixes(make_engine, smollm: LoadedModel):
    prompt = smollm.tokenizer.encode(long_text(6))
    engine = make_engine()
    run_greedy(engine, [greedy_request(prompt, 2, tenant="a")])
    ((_, other_tenant),) = run_greedy(engine, [greedy_request(prompt, 2, tenant="b")]).values()
    ((_, same_tenant),) = run_greedy(engine, [greedy_request(prompt, 2, tenant="a")]).values()
    assert other_tenant == 0
    assert same_tenant > 0


def test_no_prefix_cache_when_asked(make_engine, smollm: LoadedModel):
    prompt = smollm.tokenizer.encode(long_text(6))
    engine = make_engine()
    run_greedy(engine, [greedy_request(prompt, 2)])
    ((_, cached),) = run_greedy(engine, [greedy_request(prompt, 2, kv_reuse=KVReuse.FULL)]).values()
    assert cached == 0
