"""Small helpers for engine tests: run one prefill with all logits, collect greedy tokens."""

from __future__ import annotations

import itertools

import torch

from ragkv.engine.engine import LLMEngine
from ragkv.engine.kv_pool import KVPool, page_table_csr
from ragkv.engine.model import ForwardBatch, LlamaModel
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request

_ids = itertools.count()


def prefill_logits(model: LlamaModel, token_ids: list[int], page_size: int = 16) -> torch.Tensor:
    """Logits at every position `[len, vocab]` from one plain prefill through the paged pool."""
    num_tokens = len(token_ids)
    pool = KVPool(model.config, -(-num_tokens // page_size) + 1, page_size, model.dtype)
    pages = pool.alloc(pool.pages_for(num_tokens))
    kv_indptr, kv_indices = page_table_csr([pages])
    batch = ForwardBatch(
        token_ids=torch.tensor(token_ids),
        positions=torch.arange(num_tokens),
        write_slots=pool.slots(pages, 0, num_tokens),
        qo_indptr=[0, num_tokens],
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        kv_lens=[num_tokens],
        logits_rows=torch.arange(num_tokens),
    )
    return model.forward(batch, pool)


def greedy_request(prompt_ids: list[int], max_tokens: int, **fields: object) -> Request:
    """A greedy request that ignores EOS, so every run produces `max_tokens` tokens."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return Request(f"req-{next(_ids)}", list(prompt_ids), params, **fields)


def run_greedy(engine: LLMEngine, requests: list[Request]) -> dict[str, tuple[list[int], int]]:
    """Run requests to the end: per id, (generated token ids, cached prompt tokens)."""
    results = engine.generate(requests)
    return {
        rid: ([t for o in outs for t in o.token_ids], outs[-1].cached_tokens)
        for rid, outs in results.items()
    }
