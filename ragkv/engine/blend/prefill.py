"""Blended prefill: reuse cached chunk KV at new positions, recompute only selected tokens.

A RAG prompt is `[prefix][chunk_1 .. chunk_n][question]`. Each chunk's KV was computed with the
chunk alone at positions `0..L-1`. Here it is re-rotated to the chunk's place in the prompt
(RoPE composes: rotating by the position delta equals computing at the new position) and
blended: a selector (`ragkv.engine.blend.selectors`) decides which chunk tokens are recomputed so
that cross-chunk attention is restored. Tokens without cached KV (the question, uncached
prefix) are always computed; tokens of an exact prefix-cache hit are never recomputed.

KV here is dense per request: `kv: [layers, 2, N, KH, D]`. The engine copies the result into
its paged pool afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ragkv.engine.blend.selectors import SelectionInputs, Selector
from ragkv.engine.model import LlamaModel
from ragkv.engine.sequence import ChunkSpan


@dataclass
class BlendResult:
    """What a blended prefill produced.

    logits: fp32 `[vocab]` at the last prompt token (`[n, vocab]` when n were asked);
    kv: `[layers, 2, N, KH, D]` of the whole prompt;
    recomputed: `[A]` positions computed at the late layers (sorted).
    """

    logits: torch.Tensor
    kv: torch.Tensor
    recomputed: torch.Tensor
    num_chunk_tokens: int
    num_chunk_recomputed: int
    selector: str

    @property
    def num_chunk_reused(self) -> int:
        """Chunk tokens whose cached KV was kept at the late layers."""
        return self.num_chunk_tokens - self.num_chunk_recomputed


def rerotate(k: torch.Tensor, delta: int, model: LlamaModel) -> torch.Tensor:
    """Move rotated keys `k: [..., T, KH, D]` by `delta` positions (R(p+d) = R(d) R(p))."""
    if delta == 0:
        return k
    cos, sin = model.rope(torch.tensor([delta], device=k.device))
    flat = k.reshape(-1, *k.shape[-2:])
    return model.ops.apply_rope(flat, cos, sin).view_as(k)


def place_chunks(
    model: LlamaModel,
    num_tokens: int,
    chunk_kv: list[torch.Tensor],
    spans: list[ChunkSpan],
    prefix_kv: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense prompt KV `[layers, 2, N, KH, D]` with each chunk's cached KV (computed at
    positions 0..) re-rotated into its span, and `prefix_kv` (exact, `[layers, 2, P, KH, D]`)
    at positions 0..P-1. Positions covered by neither are left unset: `blended_prefill`
    computes them at every layer and writes their KV before any attention reads it."""
    c = model.config
    kv = torch.empty(
        (c.num_layers, 2, num_tokens, c.num_kv_heads, c.head_dim),
        dtype=model.dtype,
        device=model.device,
    )
    for cached, span in zip(chunk_kv, spans, strict=True):
        kv[:, 0, span.start : span.end] = rerotate(cached[:, 0], span.start, model)
        kv[:, 1, span.start : span.end] = cached[:, 1]
    if prefix_kv is not None:  # last: exact KV wins over a chunk the prefix hit covers
        kv[:, :, : prefix_kv.shape[2]] = prefix_kv
    return kv


@dataclass(frozen=True)
class _Positions:
    """Which prompt positions a blended prefill computes. All `[*]` sorted position tensors:
    `chunk` holds cached chunk KV (the selector's candidates), `always` is computed at every
    layer (neither chunk nor exact prefix); `is_chunk: [N]` marks the chunk positions."""

    all: torch.Tensor
    is_chunk: torch.Tensor
    chunk: torch.Tensor
    always: torch.Tensor
    num_exact: int

    @classmethod
    def of(cls, num_tokens: int, spans: list[ChunkSpan], num_exact: int, device) -> _Positions:
        """Positions of a prompt of `num_tokens` with `spans` and an exact prefix."""
        positions = torch.arange(num_tokens, device=device)
        is_chunk = torch.zeros(num_tokens, dtype=torch.bool, device=device)
        for span in spans:
            is_chunk[max(span.start, num_exact) : span.end] = True
        is_chunk[:num_exact] = False
        always = ~is_chunk & (positions >= num_exact)
        return cls(positions, is_chunk, positions[is_chunk], positions[always], num_exact)

    def first_active(self, selector: Selector, inputs: SelectionInputs, check_layer: int):
        """Positions computed at layer 0: every non-exact one when the selector checks at a
        later layer, else the always-computed ones plus the selector's choice."""
        if check_layer >= 0:
            return self.all[self.num_exact :]
        chosen = selector.select(inputs) if len(self.chunk) else self.chunk
        return _merge(self.always, chosen)


def blended_prefill(
    model: LlamaModel,
    token_ids: torch.Tensor,
    kv: torch.Tensor,
    spans: list[ChunkSpan],
    selector: Selector,
    num_exact: int = 0,
    first_position: int = 0,
    num_logits: int = 1,
) -> BlendResult:
    """Prefill `token_ids: [N]` reusing the chunk KV already placed in `kv` (see
    `place_chunks`); `kv` is updated in place and returned in the result. The whole
    `BlendRun` at once (see there for the arguments)."""
    run = BlendRun(model, token_ids, kv, spans, selector, num_exact, first_position, num_logits)
    while not run.done:
        run.advance(None)
    return run.result()


class BlendRun:
    """A blended prefill advanced a few layers at a time, so that an engine step can bound
    it by a token budget and other sequences decode in between.

    Positions `< num_exact` hold exact KV (a prefix-cache hit) and are never computed. Chunk
    positions hold approximate KV; the selector picks which of them are recomputed. Every
    other position is computed at every layer. With no spans this is a plain prefill.
    `first_position` shifts every RoPE position (a chunk computed alone at an offset).
    `num_logits` > 1 returns logits `[num_logits, vocab]` of the last positions (they must be
    computed tokens; teacher-forced scoring appends an answer to the prompt this way).
    Raises ValueError at construction otherwise.
    """

    @torch.inference_mode()
    def __init__(
        self,
        model: LlamaModel,
        token_ids: torch.Tensor,
        kv: torch.Tensor,
        spans: list[ChunkSpan],
        selector: Selector,
        num_exact: int = 0,
        first_position: int = 0,
        num_logits: int = 1,
    ) -> None:
        num_tokens = token_ids.shape[0]
        pos = _Positions.of(num_tokens, spans, num_exact, kv.device)
        if not bool(torch.isin(pos.all[num_tokens - num_logits :], pos.always).all()):
            raise ValueError("the positions whose logits are returned must be computed tokens")
        self.model, self.kv, self.pos, self.selector = model, kv, pos, selector
        self.num_logits = num_logits
        self.inputs = SelectionInputs(
            spans=spans, chunk_positions=pos.chunk, num_exact=num_exact, topk=model.ops.topk_indices
        )
        num_layers = model.config.num_layers
        self.check_layer = min(selector.full_layers, num_layers) - 1 if len(pos.chunk) else -1
        self.refine_until = (
            self.check_layer + 1 + selector.refine_layers if self.check_layer >= 0 else 0
        )
        self.active = pos.first_active(selector, self.inputs, self.check_layer)
        self.hidden = F.embedding(token_ids.index_select(0, self.active), model.embed)
        self.cos_all, self.sin_all = model.rope(pos.all + first_position)
        self.layer = 0

    @property
    def done(self) -> bool:
        """Every layer has run: `result()` is ready."""
        return self.layer >= self.model.config.num_layers

    @property
    def next_layer_tokens(self) -> int:
        """Tokens the next layer computes (its cost in the engine's token budget)."""
        return len(self.active)

    @torch.inference_mode()
    def advance(self, budget: int | None) -> int:
        """Run layers while their tokens fit in `budget` (token-layers; None: no bound), at
        least one; returns the token-layers spent."""
        spent = 0
        while not self.done and (
            budget is None or spent == 0 or spent + self.next_layer_tokens <= budget
        ):
            spent += self.next_layer_tokens
            self._layer(self.layer)
            self.layer += 1
        return spent

    def _layer(self, index: int) -> None:
        model, pos, inputs, active = self.model, self.pos, self.inputs, self.active
        layer = model.layers[index]
        cos, sin = self.cos_all.index_select(0, active), self.sin_all.index_select(0, active)
        q, k, v = model.qkv(layer, self.hidden, cos, sin)
        keys, values = self.kv[index, 0], self.kv[index, 1]
        kept = None
        if index == self.check_layer:
            inputs.deviation = _deviation(model, k, active, pos.chunk, keys)
        elif self.check_layer < index < self.refine_until:  # gradual filtering narrows again
            chosen = active[pos.is_chunk.index_select(0, active)]
            deviation = _deviation(model, k, active, chosen, keys)
            kept = self.selector.refine(inputs, chosen, deviation, index - self.check_layer)
        keys.index_copy_(0, active, k)
        values.index_copy_(0, active, v)
        hidden = self.hidden
        if index == self.check_layer:
            inputs.attention_probe = _probe(q, active, keys, model)
            kept = self.selector.select(inputs)
        if kept is not None:
            # Every token's fresh KV of this layer is written; only the tokens that go on
            # need the rest of the layer (attention + MLP), so narrow before it.
            narrowed = _merge(pos.always, kept)
            rows = _rows_of(active, narrowed)
            q, hidden, active = q.index_select(0, rows), hidden.index_select(0, rows), narrowed
        attn = model.ops.attention(q, keys, values, active, model.scale, model.config.group_size)
        self.hidden, self.active = model.mlp_residual(layer, hidden, attn), active

    @torch.inference_mode()
    def result(self) -> BlendResult:
        """The logits and KV once `done`."""
        if not self.done:
            raise RuntimeError("the blended prefill has layers left to run")
        logits = self.model.logits(self.hidden[-self.num_logits :])
        pos = self.pos
        return BlendResult(
            logits=logits[0] if self.num_logits == 1 else logits,
            kv=self.kv,
            recomputed=self.active,
            num_chunk_tokens=len(pos.chunk),
            num_chunk_recomputed=int(pos.is_chunk.index_select(0, self.active).sum()),
            selector=self.selector.name,
        )


def _deviation(
    model: LlamaModel,
    k: torch.Tensor,
    active: torch.Tensor,
    subset: torch.Tensor,
    keys: torch.Tensor,
) -> torch.Tensor:
    """`[len(subset)]` fp32 L2 distance between the fresh keys `k` (rows of `active`) and the
    keys held in `keys: [N, KH, D]` at the positions of `subset`."""
    fresh = k.index_select(0, _rows_of(active, subset))
    return model.ops.k_deviation(fresh, keys.index_select(0, subset))


def _merge(always: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Sorted union of two disjoint position sets."""
    return torch.cat([always, chosen]).sort().values


def _rows_of(active: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """Row index in `active` (sorted) of each position of `subset` (a subset of it)."""
    return torch.searchsorted(active, subset)


def _probe(q: torch.Tensor, active: torch.Tensor, keys: torch.Tensor, model: LlamaModel):
    """A callable giving attention probabilities of computed queries at the check layer.

    `q: [A, H, D]` are the queries of the `active` positions, `keys: [N, KH, D]` the layer's
    fresh keys (no later layer writes them, so they are read in place). Selectors that need
    attention statistics call it with a few query positions; computing all N x N
    probabilities up front would cost more than the layer itself.
    """

    def probabilities(query_positions: torch.Tensor) -> torch.Tensor:
        """`[len(query_positions), N]` head-averaged causal attention of the queries at
        `query_positions` (a subset of the active positions) over all keys."""
        queries = q.index_select(0, _rows_of(active, query_positions))
        group = model.config.group_size
        expanded = keys.repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", queries, expanded) * model.scale
        key_pos = torch.arange(keys.shape[0], device=q.device)
        future = key_pos[None, None, :] > query_positions[None, :, None]
        return scores.masked_fill(future, float("-inf")).softmax(-1).mean(0)

    return probabilities
