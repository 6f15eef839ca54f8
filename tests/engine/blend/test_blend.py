"""Blended prefill on the real SmolLM2: RoPE re-rotation, exactness at full recompute,
reuse that really changes the KV, selectors ordered by fidelity, and store-back."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import lmdb
import pytest
import torch

from ragkv.cache.kv.chunk_store import ChunkKVStore, chunk_key, context_variant
from ragkv.engine.blend.prefill import blended_prefill, place_chunks, rerotate
from ragkv.engine.blend.selectors import CacheBlendSelector, SelectionInputs, make_selector
from ragkv.engine.sequence import ChunkSpan, KVReuse
from ragkv.pipeline.prompt import ContextChunk, assemble_rag_prompt, rag_head
from ragkv.retrieval.loaders import wikipedia_sample_path
from ragkv.settings import ChunkCacheSettings
from tests.engine.helpers import greedy_request, prefill_logits, run_greedy


@pytest.fixture(scope="module")
def passages(smollm) -> list[tuple[str, list[int]]]:
    """Six Wikipedia leads (title, first 120 token ids)."""
    data = json.loads(wikipedia_sample_path().read_text())
    rng = random.Random(7)
    leads = [v for v in data.values() if len(v["extract"]) > 900]
    return [(d["title"], smollm.tokenizer.encode(d["extract"])[:120]) for d in rng.sample(leads, 6)]


def alone(model, token_ids: list[int], first_position: int = 0) -> torch.Tensor:
    """KV `[layers, 2, L, KH, D]` of tokens computed alone starting at `first_position`."""
    kv = place_chunks(model, len(token_ids), [], [])
    result = blended_prefill(
        model, torch.tensor(token_ids), kv, [], make_selector(KVReuse.FULL), 0, first_position
    )
    return result.kv


def rag_prompt(smollm, passages, order: list[int]):
    chunks = [ContextChunk(passages[i][1], passages[i][0]) for i in order]
    question = f"What is {passages[order[1]][0]}?"
    return assemble_rag_prompt(smollm.tokenizer, [{"role": "user", "content": question}], chunks)


def blend(smollm, passages, order, selector):
    prompt = rag_prompt(smollm, passages, order)
    cached = [alone(smollm.model, passages[i][1]) for i in order]
    kv = place_chunks(smollm.model, len(prompt.token_ids), cached, prompt.spans)
    return prompt, blended_prefill(
        smollm.model, torch.tensor(prompt.token_ids), kv, prompt.spans, selector
    )


def kl(reference: torch.Tensor, other: torch.Tensor) -> float:
    p, q = reference.log_softmax(-1), other.log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


def test_rerotated_kv_equals_kv_computed_at_the_new_position(smollm, passages):
    tokens = passages[0][1]
    at_zero = alone(smollm.model, tokens)
    for offset in (37, 300):
        at_offset = alone(smollm.model, tokens, first_position=offset)
        moved = rerotate(at_zero[:, 0], offset, smollm.model)
        assert (moved - at_offset[:, 0]).abs().max() <= 1e-4 * max(1.0, at_offset.abs().max())
        assert (at_zero[:, 1] - at_offset[:, 1]).abs().max() <= 1e-4 * at_offset.abs().max()
    assert not torch.allclose(at_zero[:, 0], at_offset[:, 0])  # rotation really moved K


def test_full_and_cacheblend_at_ratio_one_equal_plain_prefill(smollm, passages):
    order = [0, 1, 2, 3]
    prompt = rag_prompt(smollm, passages, order)
    plain = prefill_logits(smollm.model, prompt.token_ids)[-1]
    for selector in (make_selector(KVReuse.FULL), make_selector(KVReuse.CACHEBLEND, 1.0)):
        _, result = blend(smollm, passages, order, selector)
        assert (result.logits - plain).abs().max() <= 1e-3
        assert result.num_chunk_recomputed == result.num_chunk_tokens == prompt.num_chunk_tokens


def test_naive_reuse_is_real_and_cacheblend_is_closer_to_full(smollm, passages):
    orders = [[0, 1, 2, 3, 4], [4, 2, 0, 5, 1]]
    naive_kl, blend_kl = [], []
    for order in orders:
        prompt = rag_prompt(smollm, passages, order)
        full = prefill_logits(smollm.model, prompt.token_ids)[-1]
        _, naive = blend(smollm, passages, order, make_selector(KVReuse.NAIVE))
        _, cacheblend = blend(smollm, passages, order, make_selector(KVReuse.CACHEBLEND, 0.15))
        assert naive.num_chunk_recomputed == 0 and naive.num_chunk_reused > 400
        assert (naive.logits - full).abs().max() > 0.05  # stale KV really was used
        assert cacheblend.num_chunk_recomputed == round(0.15 * prompt.num_chunk_tokens)
        naive_kl.append(kl(full, naive.logits))
        blend_kl.append(kl(full, cacheblend.logits))
    assert sum(blend_kl) < 0.8 * sum(naive_kl), (blend_kl, naive_kl)


def test_gradual_filtering_narrows_to_the_budget_and_stays_exact_at_one(smollm, passages):
    order = [3, 0, 4]
    prompt = rag_prompt(smollm, passages, order)
    gradual = CacheBlendSelector(0.1, sink_tokens=1, refine_layers=3, refine_start=2.0)
    _, result = blend(smollm, passages, order, gradual)
    budget = round(0.1 * prompt.num_chunk_tokens)
    assert result.num_chunk_recomputed == budget
    firsts = {span.start for span in prompt.spans}
    assert firsts <= set(result.recomputed.tolist())  # sinks survive every filtering step
    _, one_shot = blend(smollm, passages, order, CacheBlendSelector(0.1, sink_tokens=1))
    assert not torch.equal(result.recomputed, one_shot.recomputed)  # later layers chose
    plain = prefill_logits(smollm.model, prompt.token_ids)[-1]
    everything = CacheBlendSelector(1.0, refine_layers=3)
    _, exact = blend(smollm, passages, order, everything)
    assert (exact.logits - plain).abs().max() <= 1e-3


def test_adaptive_budget_follows_the_deviation_spread_apart_from_chunk_firsts():
    spans = [ChunkSpan(0, 100), ChunkSpan(100, 100)]
    positions = torch.arange(200)
    concentrated = torch.full((200,), 0.1)
    concentrated[[5, 50, 150]] = 10.0  # three tokens hold 99% of the non-first energy
    flat = torch.ones(200)
    for deviation in (concentrated, flat):
        deviation[[0, 100]] = 1000.0  # chunk-first tokens: sinks, far above everything

    def budget(deviation, **bounds):
        selector = CacheBlendSelector(adaptive=True, sink_tokens=1, **bounds)
        inputs = SelectionInputs(spans=spans, chunk_positions=positions, deviation=deviation)
        return selector.budget(inputs)

    unbounded = {"min_ratio": 0.0, "max_ratio": 1.0}
    assert budget(concentrated, **unbounded) == 2 + 3
    assert budget(flat, **unbounded) == 2 + 139  # 70% of 198 equal tokens, rounded up
    assert budget(concentrated) == 10  # min_ratio 0.05 of 200
    assert budget(flat) == 100  # max_ratio 0.5


def test_lego_and_cachecraft_pick_what_they_promise(smollm, passages):
    order = [3, 1, 5]
    prompt, lego = blend(smollm, passages, order, make_selector(KVReuse.LEGO, lego_tokens=8))
    assert lego.num_chunk_recomputed == 8 * len(order)
    firsts = {span.start for span in prompt.spans}
    assert firsts <= set(lego.recomputed.tolist())
    _, craft = blend(smollm, passages, order, make_selector(KVReuse.CACHECRAFT, 0.2))
    assert 0 < craft.num_chunk_recomputed <= round(0.2 * prompt.num_chunk_tokens) + len(order)


def engine_with_chunks(make_engine, tmp_path, **chunk):
    store = ChunkKVStore("fp", "cpu", 256 << 20, disk_path=tmp_path, disk_bytes=1 << 30)
    return make_engine(chunk_store=store, chunk_settings=ChunkCacheSettings(**chunk))


def rag_request(smollm, passages, order, **fields):
    prompt = rag_prompt(smollm, passages, order)
    return greedy_request(prompt.token_ids, 8, chunk_spans=tuple(prompt.spans), **fields)


def test_engine_blends_then_stores_back_as_a_prefix(smollm, passages, make_engine, tmp_path):
    engine = engine_with_chunks(make_engine, tmp_path)
    first = rag_request(smollm, passages, [0, 1, 2], kv_reuse=KVReuse.CACHEBLEND)
    outputs = engine.generate([first])[first.request_id]
    assert outputs[0].selector == "cacheblend" and outputs[0].chunk_tokens_reused > 0
    assert engine.blender.stats.chunks_computed == 3
    again = rag_request(smollm, passages, [0, 1, 2], kv_reuse=KVReuse.CACHEBLEND)
    second = engine.generate([again])[again.request_id]
    num_prompt = len(again.prompt_ids)
    assert second[-1].cached_tokens >= num_prompt - engine.pool.page_size
    assert second[0].selector is None  # a plain prefix hit, no blending needed
    tokens = lambda outs: [t for o in outs for t in o.token_ids]  # noqa: E731
    assert tokens(second) == tokens(outputs)
    new_mix = rag_request(smollm, passages, [2, 0, 1], kv_reuse=KVReuse.CACHEBLEND)
    engine.generate([new_mix])
    assert engine.blender.stats.chunks_computed == 3  # reordered chunks came from the cache


def test_engine_full_and_ratio_one_match_greedy(smollm, passages, make_engine, tmp_path):
    engine = engine_with_chunks(make_engine, tmp_path)
    order = [5, 3, 1]
    full = rag_request(smollm, passages, order, kv_reuse=KVReuse.FULL)
    ratio_one = rag_request(
        smollm, passages, order, kv_reuse=KVReuse.CACHEBLEND, recompute_ratio=1.0, tenant="other"
    )
    results = run_greedy(engine, [full])
    results.update(run_greedy(engine, [ratio_one]))
    assert results[full.request_id][0] == results[ratio_one.request_id][0]
    assert results[full.request_id][1] == 0  # full reused nothing


def test_corrupt_disk_chunk_is_recomputed_not_used(smollm, passages, make_engine, tmp_path):
    engine = engine_with_chunks(make_engine, tmp_path)
    store = engine.blender.store
    tokens = passages[2][1]
    fresh, source = engine.blender.chunk_kv("default", tokens)
    assert source == "computed"
    store.close()
    env = lmdb.open(str(tmp_path), map_size=1 << 31)
    with env.begin(write=True) as txn:
        key = chunk_key("default", tokens).encode()
        record = bytearray(txn.get(key))
        record[-100] ^= 0x01
        txn.put(key, bytes(record))
    env.close()
    reopened = ChunkKVStore("fp", "cpu", 256 << 20, disk_path=tmp_path, disk_bytes=1 << 30)
    reopened.cost.disk_bytes_s = 1e12  # the cost model would load it if it were sound
    engine.blender.store = reopened
    again, source = engine.blender.chunk_kv("default", tokens)
    assert source == "computed" and reopened.disk.refused == 1
    assert torch.equal(again, fresh)


def test_context_variant_is_exact_right_after_its_context(smollm, passages, make_engine, tmp_path):
    """Chunk KV computed after a context and placed right after that same context is the KV
    a plain prefill computes there: naive reuse is then exact."""
    engine = engine_with_chunks(make_engine, tmp_path)
    context = tuple(rag_head(smollm.tokenizer))
    tokens = passages[4][1]
    variant, source = engine.blender.chunk_kv("default", tokens, context)
    alone_kv, _ = engine.blender.chunk_kv("default", tokens)
    assert source == "computed" and engine.blender.stats.chunks_computed == 2
    assert not torch.allclose(variant, alone_kv, atol=1e-3)  # the context changed the KV
    question = smollm.tokenizer.encode("\n\nQuestion: What is this about?")
    prompt = [*context, *tokens, *question]
    span = ChunkSpan(len(context), len(tokens))
    kv = place_chunks(smollm.model, len(prompt), [variant], [span])
    result = blended_prefill(
        smollm.model, torch.tensor(prompt), kv, [span], make_selector(KVReuse.NAIVE)
    )
    assert result.num_chunk_reused == len(tokens)
    plain = prefill_logits(smollm.model, prompt)[-1]
    assert (result.logits - plain).abs().max() <= 1e-3


def test_missing_variant_falls_back_to_the_chunk_alone(smollm, passages, make_engine, tmp_path):
    engine = engine_with_chunks(make_engine, tmp_path)
    tokens = passages[3][1]
    context = tuple(rag_head(smollm.tokenizer))
    assert engine.prewarm("default", [tokens]) == 1  # stored alone
    kv, source = engine.blender.chunk_kv("default", tokens, context)
    assert source != "computed" and engine.blender.stats.variant_fallbacks == 1
    assert engine.prewarm("default", [tokens], context) == 1  # the variant is its own entry
    assert engine.blender.store.contains(chunk_key("default", tokens, context_variant(context)))
    assert engine.prewarm("default", [tokens], context) == 0


def test_rag_prompts_start_with_the_rag_head(smollm, passages):
    head = rag_head(smollm.tokenizer)
    prompt = rag_prompt(smollm, passages, [1, 2])
    assert prompt.token_ids[: len(head)] == head
    assert prompt.spans[0].start > len(head)  # the first label sits between


def test_cachecraft_spends_less_on_a_chunk_whose_context_its_kv_saw(smollm, passages):
    """Prefix overlap: the first chunk's context variant already saw the RAG head, so only
    its label is unseen context, and cachecraft moves budget to the other chunks."""
    order = [1, 4, 2]
    prompt = rag_prompt(smollm, passages, order)
    head = rag_head(smollm.tokenizer)
    cached = []
    for i in order:
        ids = [*head, *passages[i][1]]
        kv = alone(smollm.model, ids)[:, :, len(head) :].clone()
        kv[:, 0] = rerotate(kv[:, 0], -len(head), smollm.model)
        cached.append(kv)

    def first_chunk_share(seen: int) -> int:
        spans = [replace(s, seen=seen) for s in prompt.spans]
        kv = place_chunks(smollm.model, len(prompt.token_ids), cached, spans)
        result = blended_prefill(
            smollm.model,
            torch.tensor(prompt.token_ids),
            kv,
            spans,
            make_selector(KVReuse.CACHECRAFT, 0.2),
        )
        first = spans[0]
        picked = result.recomputed
        return int(((picked >= first.start) & (picked < first.end)).sum())

    assert first_chunk_share(len(head)) < first_chunk_share(0)
