"""Turn a scheduled batch into the `ForwardBatch` tensors the model runs."""

from __future__ import annotations

import torch

from ragkv.engine.kv_pool import KVPool, page_table_csr
from ragkv.engine.model import ForwardBatch
from ragkv.engine.scheduler import ScheduledBatch


def build_forward_batch(batch: ScheduledBatch, pool: KVPool) -> ForwardBatch:
    """Flatten `[(sequence, num_new_tokens)]` into token ids, positions, slots and page tables.

    Logits are taken at each sequence's last new token.
    """
    token_ids: list[int] = []
    positions: list[torch.Tensor] = []
    slots: list[torch.Tensor] = []
    qo_indptr = [0]
    kv_lens: list[int] = []
    for seq, num_tokens in batch:
        start, end = seq.num_computed, seq.num_computed + num_tokens
        token_ids.extend(seq.token_ids[start:end])
        positions.append(torch.arange(start, end))
        slots.append(pool.slots(seq.pages, start, end))
        qo_indptr.append(qo_indptr[-1] + num_tokens)
        kv_lens.append(end)
    kv_indptr, kv_indices = page_table_csr([seq.pages for seq, _ in batch])
    device = pool.kv.device
    return ForwardBatch(
        token_ids=torch.tensor(token_ids, dtype=torch.long, device=device),
        positions=torch.cat(positions).to(device),
        write_slots=torch.cat(slots).to(device),
        qo_indptr=qo_indptr,
        kv_indptr=kv_indptr.to(device),
        kv_indices=kv_indices.to(device),
        kv_lens=kv_lens,
        logits_rows=torch.tensor(qo_indptr[1:], device=device) - 1,
    )
