"""A blended prefill runs over several steps next to the batch: running sequences decode in
every step of it, a blend split into layers equals one run whole, several RAG prompts blend at
once, an aborted blend frees its pages, and a failed blend falls back to a plain prefill."""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from ragkv.cache.kv.chunk_store import ChunkKVStore
from ragkv.engine.blend.prefill import BlendRun, blended_prefill, place_chunks
from ragkv.engine.blend.selectors import make_selector
from ragkv.engine.sequence import KVReuse
from ragkv.settings import ChunkCacheSettings
from tests.engine.blend.test_blend import alone, passages, rag_prompt
from tests.engine.helpers import greedy_request, run_greedy

__all__ = ["passages"]  # the module fixture, shared with test_blend


def engine_with_chunks(make_engine, tmp_path, **engine_settings):
    store = ChunkKVStore("fp", "cpu", 256 << 20, disk_path=tmp_path, disk_bytes=1 << 30)
    return make_engine(chunk_store=store, chunk_settings=ChunkCacheSettings(), **engine_settings)


def tokens_of(outputs) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def test_blend_in_layer_steps_equals_the_blend_whole(smollm, passages) -> None:
    order = [0, 1, 2]
    prompt = rag_prompt(smollm, passages, order)
    cached = [alone(smollm.model, passages[i][1]) for i in order]
    ids = torch.tensor(prompt.token_ids)

    def placed() -> torch.Tensor:
        return place_chunks(smollm.model, len(ids), cached, prompt.spans)

    whole = blended_prefill(
        smollm.model, ids, placed(), prompt.spans, make_selector(KVReuse.CACHEBLEND)
    )
    run = BlendRun(smollm.model, ids, placed(), prompt.spans, make_selector(KVReuse.CACHEBLEND))
    calls = 0
    while not run.done:
        cost = run.next_layer_tokens
        assert run.advance(1) == cost  # one layer a call, its active tokens spent
        calls += 1
    assert calls == smollm.config.num_layers
    stepped = run.result()
    assert torch.equal(stepped.logits, whole.logits)
    assert torch.equal(stepped.kv, whole.kv)
    assert torch.equal(stepped.recomputed, whole.recomputed)


def test_decodes_advance_in_every_step_of_a_blend(smollm, passages, make_engine, tmp_path):
    # A small budget spreads the blend (three new chunks, then 30 layers) over many steps.
    engine = engine_with_chunks(make_engine, tmp_path, max_concurrent_blends=1, max_batch_tokens=64)
    chat = smollm.tokenizer.apply_chat_template([{"role": "user", "content": "Count to ten."}])
    plain = greedy_request(chat, 48)
    prompt = rag_prompt(smollm, passages, [3, 4, 5])
    rag = greedy_request(
        prompt.token_ids, 6, chunk_spans=tuple(prompt.spans), kv_reuse=KVReuse.CACHEBLEND
    )
    outputs = {plain.request_id: [], rag.request_id: []}
    engine.add_request(plain)
    while not outputs[plain.request_id]:  # the plain request is decoding
        for output in engine.step():
            outputs[output.request_id].append(output)
    engine.add_request(rag)
    steps_in_blend = decoded_in_blend = 0
    while engine.has_work():
        produced = engine.step()
        for output in produced:
            outputs[output.request_id].append(output)
        if engine.blends.jobs:  # the blend is still in flight after this step
            steps_in_blend += 1
            decoded_in_blend += any(o.request_id == plain.request_id for o in produced)
    assert steps_in_blend >= 3
    assert decoded_in_blend == steps_in_blend  # no step of the blend stalled the decode
    # Splitting changed when the work ran, not what it computed.
    alone_engine = engine_with_chunks(make_engine, tmp_path / "alone")
    alone_results = run_greedy(alone_engine, [replace_id(rag)])
    assert tokens_of(outputs[rag.request_id]) == next(iter(alone_results.values()))[0]
    assert len(tokens_of(outputs[plain.request_id])) == 48
    assert outputs[rag.request_id][0].chunk_tokens_reused > 0


def replace_id(request):
    return replace(request, request_id=request.request_id + "-alone")


def test_two_rag_prompts_blend_at_once_and_match_one_at_a_time(
    smollm, passages, make_engine, tmp_path
):
    requests = [
        greedy_request(
            rag_prompt(smollm, passages, order).token_ids,
            6,
            chunk_spans=tuple(rag_prompt(smollm, passages, order).spans),
            kv_reuse=KVReuse.CACHEBLEND,
        )
        for order in ([0, 1, 2], [2, 1, 0])
    ]
    sequential = [
        run_greedy(engine_with_chunks(make_engine, tmp_path / f"s{i}"), [replace_id(r)])
        for i, r in enumerate(requests)
    ]
    # A small budget keeps both blends unfinished after the first step, whatever it costs.
    engine = engine_with_chunks(
        make_engine, tmp_path / "together", max_concurrent_blends=2, max_batch_tokens=128
    )
    for request in requests:
        engine.add_request(request)
    results = {r.request_id: [] for r in requests}

    def step() -> None:
        for output in engine.step():
            results[output.request_id].append(output)

    step()
    assert len(engine.blends.jobs) == 2
    while engine.has_work():
        step()
    for request, alone_result in zip(requests, sequential, strict=True):
        assert tokens_of(results[request.request_id]) == next(iter(alone_result.values()))[0]


def test_aborting_a_blend_in_flight_frees_its_pages(smollm, passages, make_engine, tmp_path):
    engine = engine_with_chunks(make_engine, tmp_path, max_batch_tokens=32)
    prompt = rag_prompt(smollm, passages, [0, 4])
    request = greedy_request(prompt.token_ids, 4, chunk_spans=tuple(prompt.spans))
    engine.add_request(request)
    engine.step()
    assert engine.blends.jobs and engine.pool.num_free < engine.pool.num_pages
    engine.abort(request.request_id)
    engine.step()
    assert not engine.blends.jobs and not engine.has_work()
    assert engine.pool.num_free + engine.radix.size_info().total_pages == engine.pool.num_pages


def test_a_failing_blend_falls_back_to_a_plain_prefill(smollm, passages, make_engine, tmp_path):
    engine = engine_with_chunks(make_engine, tmp_path)
    prompt = rag_prompt(smollm, passages, [1, 2])
    request = greedy_request(prompt.token_ids, 5, chunk_spans=tuple(prompt.spans))
    reference = greedy_request(prompt.token_ids, 5, tenant="reference")

    engine.blender.store.close()  # a real failure: the chunk store can no longer be read
    results = run_greedy(engine, [request])
    assert engine.blender.stats.fallbacks == 1
    assert (
        results[request.request_id][0] == run_greedy(engine, [reference])[reference.request_id][0]
    )


def test_after_a_restart_queued_chunks_are_prefetched_from_disk(
    smollm, passages, make_engine, tmp_path
):
    prompt = rag_prompt(smollm, passages, [0, 3, 5])
    first = engine_with_chunks(make_engine, tmp_path)
    spans = tuple(prompt.spans)
    expected = run_greedy(first, [greedy_request(prompt.token_ids, 4, chunk_spans=spans)])
    first.close()  # the chunks' KV is on disk; memory is gone with the engine
    engine = engine_with_chunks(make_engine, tmp_path)
    store = engine.blender.store
    store.cost.disk_bytes_s = 1e12  # loading beats recomputing on any disk
    request = greedy_request(prompt.token_ids, 4, chunk_spans=spans)
    engine.add_request(request)  # queues the disk reads before any step runs
    deadline = time.monotonic() + 30
    while store.counts["prefetched"] < 3:
        assert time.monotonic() < deadline, "the prefetch did not finish"
        time.sleep(0.01)
    results = {}  # the blend finds every chunk in memory
    while engine.has_work():
        for output in engine.step():
            results.setdefault(output.request_id, []).extend(output.token_ids)
    assert store.counts["hits_cpu"] == 3 and store.counts["hits_disk"] == 0
    assert results[request.request_id] == next(iter(expected.values()))[0]


def test_blended_kv_is_never_served_to_prefix_mode(smollm, passages, make_engine, tmp_path):
    prompt = rag_prompt(smollm, passages, [1, 4, 2])
    spans = tuple(prompt.spans)
    engine = engine_with_chunks(make_engine, tmp_path)

    def run(kv_reuse: KVReuse):
        request = greedy_request(prompt.token_ids, 6, chunk_spans=spans, kv_reuse=kv_reuse)
        return run_greedy(engine, [request])[request.request_id], request

    run(KVReuse.CACHEBLEND)  # stored back: approximate pages from the 1st chunk
    assert engine.radix.size_info().approx_pages > 0
    (exact_tokens, cached), _ = run(KVReuse.PREFIX)
    assert cached <= spans[0].start  # only the exact head was reused
    full_engine = engine_with_chunks(make_engine, tmp_path / "full")
    (full_tokens, _), _ = run_full(full_engine, prompt, spans)
    assert exact_tokens == full_tokens
    outputs = engine.generate(
        [greedy_request(prompt.token_ids, 2, chunk_spans=spans, kv_reuse=KVReuse.AUTO)]
    )
    final = next(iter(outputs.values()))[-1]
    assert final.approx_tokens_reused > 0  # auto may reuse blended pages, and says so
    assert final.approx_tokens_reused <= final.cached_tokens


def run_full(engine, prompt, spans):
    request = greedy_request(prompt.token_ids, 6, chunk_spans=spans, kv_reuse=KVReuse.FULL)
    return run_greedy(engine, [request])[request.request_id], request


def test_eight_mixed_requests_together_match_each_run_alone(
    smollm, passages, make_engine, tmp_path
):
    """Plain chats, blended RAG prompts and prefix-cached chats in one engine at once give
    the greedy tokens each gives alone on a fresh engine."""
    tokenizer = smollm.tokenizer
    system = {"role": "system", "content": " ".join(title for title, _ in passages) * 3}

    def chat(*turns: str) -> list[int]:
        return tokenizer.apply_chat_template([system, *({"role": "user", "content": t}
                                                        for t in turns)])  # fmt: skip

    def rag(order: list[int]):
        prompt = rag_prompt(smollm, passages, order)
        return greedy_request(prompt.token_ids, 6, chunk_spans=tuple(prompt.spans),
                              kv_reuse=KVReuse.CACHEBLEND)  # fmt: skip

    seed = greedy_request(chat("Name a colour."), 4)
    requests = [
        greedy_request(tokenizer.apply_chat_template([{"role": "user", "content": q}]), 8)
        for q in ("Count to five.", "Name a fruit.", "What is ice?")
    ] + [rag(order) for order in ([0, 1, 2], [2, 3, 4], [5, 0, 3])] + [
        greedy_request(chat(q), 8) for q in ("Name a planet.", "Name a river.")
    ]  # fmt: skip
    alone_tokens = [
        next(iter(run_greedy(engine_with_chunks(make_engine, tmp_path / f"a{i}"),
                             [replace_id(r)]).values()))[0]
        for i, r in enumerate(requests)
    ]  # fmt: skip
    engine = engine_with_chunks(
        make_engine, tmp_path / "together", max_concurrent_blends=2, max_batch_tokens=128
    )
    run_greedy(engine, [seed])  # the system prompt's pages are now in the radix tree
    together = run_greedy(engine, requests)
    assert [together[r.request_id][0] for r in requests] == alone_tokens
    assert all(together[r.request_id][1] > 0 for r in requests[-2:])  # prefix-cached
    assert engine.pool.num_free + engine.radix.size_info().total_pages == engine.pool.num_pages


def test_new_chunks_are_computed_before_held_ones_are_fetched(
    smollm, passages, make_engine, tmp_path
):
    """A prompt mixing disk-held and new chunks: the new ones are computed first, while the
    prefetch worker reads the held ones, and the blend equals the one over all-new chunks."""
    order = [0, 3, 5]
    prompt = rag_prompt(smollm, passages, order)
    spans = tuple(prompt.spans)
    expected = run_greedy(
        engine_with_chunks(make_engine, tmp_path / "cold"),
        [greedy_request(prompt.token_ids, 4, chunk_spans=spans)],
    )
    first = engine_with_chunks(make_engine, tmp_path / "warm")
    first.blender.prewarm("default", passages[0][1])  # the first chunk only, then to disk
    first.close()
    engine = engine_with_chunks(make_engine, tmp_path / "warm")
    engine.blender.store.cost.disk_bytes_s = 1e12  # loading beats recomputing on any disk
    request = greedy_request(prompt.token_ids, 4, chunk_spans=spans)
    engine.add_request(request)
    fetched: list[str] = []
    engine.blender.fetch = recording(engine.blender.fetch, fetched)
    results = run_greedy_steps(engine)
    assert fetched == ["computed", "computed", fetched[2]] and fetched[2] in ("cpu", "disk")
    assert results[request.request_id] == next(iter(expected.values()))[0]


def recording(fetch, sources: list[str]):
    """`fetch` as it is, noting where each chunk's KV came from."""

    def fetch_and_note(*args):
        result = fetch(*args)
        sources.append(result[1])
        return result

    return fetch_and_note


def run_greedy_steps(engine) -> dict[str, list[int]]:
    results: dict[str, list[int]] = {}
    while engine.has_work():
        for output in engine.step():
            results.setdefault(output.request_id, []).extend(output.token_ids)
    return results
