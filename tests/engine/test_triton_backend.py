"""Whole models on the Triton backend (the interpreter on CPU) against the torch backend:
prefill, prefix-cached extend in a batch with decodes, 8 decode steps and a blended prefill,
logits within 1e-4 and greedy tokens identical."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from ragkv.engine.blend.prefill import blended_prefill, place_chunks
from ragkv.engine.blend.selectors import make_selector
from ragkv.engine.forward_batch import build_forward_batch
from ragkv.engine.kv_pool import KVPool
from ragkv.engine.model import LlamaModel
from ragkv.engine.sequence import ChunkSpan, KVReuse
from tests.engine.random_model import llama_config, qwen2_config, random_model

TOLERANCE = 1e-4
PAGE = 16


@dataclass
class Seq:
    """What `build_forward_batch` reads of a sequence: tokens, pages, how many have KV."""

    token_ids: list[int]
    pages: list[int]
    num_computed: int = 0


class Driver:
    """Runs forward steps of one model over its own paged pool."""

    def __init__(self, model: LlamaModel) -> None:
        self.model = model
        self.pool = KVPool(model.config, 32, PAGE, model.dtype, model.device)

    def new_seq(self, tokens: list[int], share: Seq | None = None, shared: int = 0) -> Seq:
        """A sequence of `tokens`; with `share`, its first `shared` tokens' pages (whole
        pages) are `share`'s, their KV already computed (a prefix-cache hit)."""
        pages = share.pages[: shared // PAGE] if share else []
        self.pool.incref(pages)
        pages = pages + self.pool.alloc(self.pool.pages_for(len(tokens) + 16) - len(pages))
        return Seq(list(tokens), pages, shared)

    def step(self, work: list[tuple[Seq, int]], all_rows: bool = False) -> torch.Tensor:
        """Compute `n` new tokens of each `(seq, n)`; logits of each sequence's last new
        token, or of every new token with `all_rows`."""
        batch = build_forward_batch(work, self.pool)
        if all_rows:
            rows = torch.arange(batch.token_ids.shape[0], device=self.model.device)
            batch = replace(batch, logits_rows=rows)
        for seq, count in work:
            seq.num_computed += count
        return self.model.forward(batch, self.pool).cpu()


def assert_same_greedy(expected: torch.Tensor, got: torch.Tensor) -> list[int]:
    """Logits within TOLERANCE and the same argmax per row (each row's top-2 margin is far
    above the tolerance, so the check never rests on a near-tie). Returns the tokens."""
    torch.testing.assert_close(got, expected, atol=TOLERANCE, rtol=TOLERANCE)
    top2 = expected.topk(2, dim=-1).values
    assert bool(((top2[:, 0] - top2[:, 1]) > 10 * TOLERANCE).all()), "a near-tie: reseed"
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    return expected.argmax(-1).tolist()


@pytest.fixture(scope="module", params=[llama_config, qwen2_config], ids=["llama", "qwen2"])
def models(request) -> tuple[LlamaModel, LlamaModel]:
    config = request.param()
    return random_model(config, "torch", seed=3), random_model(config, "triton", seed=3)


def extend_and_decode(model: LlamaModel, fed: list[int] | None) -> list[torch.Tensor]:
    """Logits of each step: a 40-token prefill (every row); an extend of 20 tokens after a
    cached 32-token prefix batched with the first decode; 8 steps of both decoding. Tokens fed
    back are `fed` (the reference run's greedy tokens) or, when None, this run's own."""
    gen = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, model.config.vocab_size, (40,), generator=gen).tolist()
    other = prompt[:32] + torch.randint(0, model.config.vocab_size, (20,), generator=gen).tolist()
    driver = Driver(model)
    first = driver.new_seq(prompt)
    steps = [driver.step([(first, len(prompt))], all_rows=True)]
    second = driver.new_seq(other, share=first, shared=32)
    feed = iter(fed) if fed is not None else None
    for index in range(9):
        tokens = steps[-1][-1:] if index == 0 else steps[-1]
        for seq, token in zip([first, second][: len(tokens)], tokens.argmax(-1), strict=True):
            seq.token_ids.append(next(feed) if feed else int(token))
        work = [(first, 1), (second, 20)] if index == 0 else [(first, 1), (second, 1)]
        steps.append(driver.step(work))
    return steps


def test_prefill_extend_and_decode_match_the_torch_backend(models) -> None:
    reference, triton_model = models
    expected = extend_and_decode(reference, None)
    fed = expected[0].argmax(-1)[-1:].tolist() + [
        t for step in expected[1:-1] for t in step.argmax(-1).tolist()
    ]
    got = extend_and_decode(triton_model, fed)
    for want, have in zip(expected, got, strict=True):
        assert_same_greedy(want, have)


def alone(model: LlamaModel, tokens: list[int]) -> torch.Tensor:
    """KV `[layers, 2, L, KH, D]` of `tokens` prefilled alone at positions 0.."""
    kv = place_chunks(model, len(tokens), [], [])
    ids = torch.tensor(tokens, device=model.device)
    return blended_prefill(model, ids, kv, [], make_selector(KVReuse.FULL)).kv


def test_blended_prefill_matches_the_torch_backend(models) -> None:
    gen = torch.Generator().manual_seed(5)
    chunks = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (30, 25)]
    head, question = [1, 2, 3, 4, 5], torch.randint(0, 512, (6,), generator=gen).tolist()
    prompt = head + chunks[0] + chunks[1] + question
    spans = [ChunkSpan(5, 30), ChunkSpan(35, 25)]
    results = []
    for model in models:
        kv = place_chunks(model, len(prompt), [alone(model, c) for c in chunks], spans)
        selector = make_selector(KVReuse.CACHEBLEND, 0.3)
        ids = torch.tensor(prompt, device=model.device)
        results.append(blended_prefill(model, ids, kv, spans, selector))
    expected, got = results
    assert torch.equal(got.recomputed.cpu(), expected.recomputed.cpu())
    assert 0 < expected.num_chunk_recomputed < expected.num_chunk_tokens
    assert_same_greedy(expected.logits[None].cpu(), got.logits[None].cpu())
    torch.testing.assert_close(got.kv.cpu(), expected.kv.cpu(), atol=TOLERANCE, rtol=TOLERANCE)
