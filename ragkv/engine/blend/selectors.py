"""Which cached chunk tokens a blended prefill recomputes (`ragkv.engine.blend.prefill`).

A selector either chooses up front (`full_layers == 0`: naive, lego, full) or once every
token's KV of the first `full_layers` layers is fresh, using the KV deviation measured at the
last of them (the check layer) and, for cachecraft, attention statistics there. Only the
chosen tokens go through the rest of the check layer (its attention and MLP).

Budgets are fractions of the chunk tokens (`ratio`); the question and uncached tokens are
always computed on top and never count against the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from ragkv.engine.sequence import ChunkSpan, KVReuse
from ragkv.kernels import ops


@dataclass
class SelectionInputs:
    """What a selector sees. `chunk_positions: [C]` sorted prompt positions of chunk tokens
    (minus any exact prefix hit); after the check layer `deviation: [C]` is the L2 distance
    between fresh and cached K per token, and `attention_probe(positions: [q]) -> [q, N]`
    gives head-averaged attention probabilities of the queries at those (computed) prompt
    positions over all N keys. `topk(scores, k)` gives the indices of the k largest scores
    (the model's backend: a Triton kernel on GPU)."""

    spans: list[ChunkSpan]
    chunk_positions: torch.Tensor
    num_exact: int = 0
    deviation: torch.Tensor | None = None
    attention_probe: Callable[[torch.Tensor], torch.Tensor] | None = None
    topk: Callable[[torch.Tensor, int], torch.Tensor] = ops.topk_indices_ref

    def span_rows(self) -> list[torch.Tensor]:
        """For each span, the rows of `chunk_positions` inside it."""
        rows = []
        for span in self.spans:
            lo = int(torch.searchsorted(self.chunk_positions, span.start))
            hi = int(torch.searchsorted(self.chunk_positions, span.end))
            rows.append(torch.arange(lo, hi, device=self.chunk_positions.device))
        return rows


class Selector(Protocol):
    """Chooses the chunk positions to recompute.

    `full_layers` 0: `select` runs once, before layer 0. Otherwise every token goes through
    layers `0..full_layers-1`, `select` runs at the last of them (the check layer, with
    `deviation` and `attention_probe` set), and each of the next `refine_layers` layers
    calls `refine` to narrow the chosen set again (gradual filtering; 0: never called).
    """

    name: str
    full_layers: int
    refine_layers: int

    def select(self, inputs: SelectionInputs) -> torch.Tensor:
        """Sorted subset of `inputs.chunk_positions` to recompute."""
        ...

    def refine(
        self, inputs: SelectionInputs, chosen: torch.Tensor, deviation: torch.Tensor, step: int
    ) -> torch.Tensor:
        """Gradual filtering step `step` (1..refine_layers): the sorted subset of `chosen`
        kept, given each one's K `deviation: [len(chosen)]` at this layer."""
        ...


class _NoRefine:
    """For selectors that choose once: no gradual filtering."""

    refine_layers: int = 0

    def refine(
        self, inputs: SelectionInputs, chosen: torch.Tensor, deviation: torch.Tensor, step: int
    ) -> torch.Tensor:
        return chosen


@dataclass
class NaiveSelector(_NoRefine):
    """Reuse every cached chunk token as is (fastest, least faithful)."""

    name: str = "naive"
    full_layers: int = 0

    def select(self, inputs: SelectionInputs) -> torch.Tensor:
        return inputs.chunk_positions[:0]


@dataclass
class FullSelector(_NoRefine):
    """Recompute every chunk token: a plain prefill that happens to start from chunk KV."""

    name: str = "full"
    full_layers: int = 0

    def select(self, inputs: SelectionInputs) -> torch.Tensor:
        return inputs.chunk_positions


@dataclass
class LegoSelector(_NoRefine):
    """EPIC's LegoLink: recompute the first `num_tokens` tokens of each chunk at all layers
    (they turned into attention sinks when the chunk was prefilled alone)."""

    num_tokens: int = 16
    name: str = "lego"
    full_layers: int = 0

    def select(self, inputs: SelectionInputs) -> torch.Tensor:
        picked = [rows[: self.num_tokens] for rows in inputs.span_rows()]
        return inputs.chunk_positions[torch.cat(picked).sort().values]


@dataclass
class CacheBlendSelector:
    """CacheBlend: every token through layers `0..check_layer`, then the chunk tokens whose
    K deviates most at the check layer are recomputed in the later layers.

    `ratio` is the fixed budget; `adaptive` instead keeps the fewest tokens holding
    `deviation_mass` of the total squared deviation, within `[min_ratio, max_ratio]`.
    `sink_tokens` first tokens of each chunk are always taken (inside the budget): a chunk
    prefilled alone made them attention sinks, and they must not stay so.

    `refine_layers` > 0 is CacheBlend's gradual filtering: the check layer keeps
    `refine_start` x the budget, and each of the next `refine_layers` layers keeps the most
    deviating of those (measured at that layer), shrinking linearly to the budget.
    """

    ratio: float = 0.15
    check_layer: int = 1
    adaptive: bool = False
    deviation_mass: float = 0.7
    min_ratio: float = 0.05
    max_ratio: float = 0.5
    sink_tokens: int = 0
    refine_layers: int = 0
    refine_start: float = 2.0
    name: str = "cacheblend"

    @property
    def full_layers(self) -> int:
        return self.check_layer + 1

    def budget(self, inputs: SelectionInputs) -> int:
        """How many chunk tokens to recompute."""
        num_chunk = len(inputs.chunk_positions)
        ratio = self.ratio
        if self.adaptive and inputs.deviation is not None and num_chunk:
            ratio = min(max(self._needed(inputs) / num_chunk, self.min_ratio), self.max_ratio)
        return min(num_chunk, round(ratio * num_chunk))

    def _needed(self, inputs: SelectionInputs) -> int:
        """Adaptive budget: the chunk-first tokens plus the fewest other chunk tokens holding
        `deviation_mass` of the others' squared K deviation.

        A chunk prefilled alone made its first token an attention sink whose deviation is
        orders of magnitude above the rest; counted in, it alone holds most of the mass and
        the budget would always fall to `min_ratio`.
        """
        firsts = self._firsts(inputs, max(1, self.sink_tokens), inputs.chunk_positions)
        energy = inputs.deviation[~firsts].double().pow(2).sort(descending=True).values
        if not len(energy):
            return int(firsts.sum())
        share = energy.cumsum(0) / energy.sum().clamp_min(1e-30)
        needed = min(int(torch.searchsorted(share, self.deviation_mass)) + 1, len(energy))
        return needed + int(firsts.sum())

    def select(self, inputs: SelectionInputs) -> torch.Tensor:
        if inputs.deviation is None:
            raise ValueError("cacheblend selects after its check layer; no deviation given")
        budget = self.budget(inputs)
        if self.refine_layers:
            budget = min(len(inputs.chunk_positions), round(budget * self.refine_start))
        score = inputs.deviation.clone()
        self._keep_sinks(inputs, inputs.chunk_positions, score)
        picked = inputs.topk(score, budget)
        return inputs.chunk_positions[picked.sort().values]

    def refine(
        self, inputs: SelectionInputs, chosen: torch.Tensor, deviation: torch.Tensor, step: int
    ) -> torch.Tensor:
        """Gradual filtering step `step` (1..refine_layers): the subset of the `chosen`
        chunk positions (sorted) kept, by their `deviation: [len(chosen)]` at this layer."""
        budget = self.budget(inputs)
        share = self.refine_start - (self.refine_start - 1.0) * step / self.refine_layers
        keep = min(len(chosen), round(budget * share))
        score = deviation.clone()
        self._keep_sinks(inputs, chosen, score)
        return chosen[inputs.topk(score, keep).sort().values]

    def _keep_sinks(
        self, inputs: SelectionInputs, positions: torch.Tensor, score: torch.Tensor
    ) -> None:
        """Raise the score of each chunk's first `sink_tokens` tokens among `positions`."""
        if self.sink_tokens:
            score[self._firsts(inputs, self.sink_tokens, positions)] = float("inf")

    @staticmethod
    def _firsts(inputs: SelectionInputs, count: int, positions: torch.Tensor) -> torch.Tensor:
        """Mask over `positions`: the first `count` tokens of each chunk."""
        firsts = torch.cat(
            [torch.arange(s.start, min(s.end, s.start + count)) for s in inputs.spans]
        ).to(positions.device)
        return torch.isin(positions, firsts)


@dataclass
class CacheCraftSelector(_NoRefine):
    """Cache-Craft: a per-chunk budget from its cache-context impact, then deviation within.

    The impact of a chunk is the share of its tokens' attention (at the check layer, fresh)
    that goes to the context before the chunk which its cached KV never saw: all of it for a
    chunk computed alone, less the prefix it was computed after for a context variant
    (prefix overlap, `ChunkSpan.seen`). Later chunks see more context, so order is in the
    statistic. The total budget (`ratio`)
    is split across chunks in proportion to impact x length; within a chunk the most
    deviating tokens are taken.
    """

    ratio: float = 0.15
    check_layer: int = 1
    probe_queries: int = 16
    name: str = "cachecraft"

    @property
    def full_layers(self) -> int:
        return self.check_layer + 1

    def impacts(self, inputs: SelectionInputs) -> list[float]:
        """Per span: mean attention share its queries give to the positions before the span
        that its cached KV did not see."""
        if inputs.attention_probe is None:
            raise ValueError("cachecraft needs attention statistics from the check layer")
        spans_rows = inputs.span_rows()
        picks, owners = [], []
        for owner, rows in enumerate(spans_rows):
            if len(rows) == 0:
                continue
            step = max(1, len(rows) // self.probe_queries)
            sample = rows[step - 1 :: step][: self.probe_queries]
            picks.append(sample)
            owners.extend([owner] * len(sample))
        impacts = [0.0] * len(spans_rows)
        if not picks:
            return impacts
        probs = inputs.attention_probe(inputs.chunk_positions[torch.cat(picks)])
        for row, owner in enumerate(owners):
            span = inputs.spans[owner]
            before = float(probs[row, span.seen : span.start].sum())
            impacts[owner] += before / sum(1 for o in owners if o == owner)
        return impacts

    def select(self, inputs: SelectionInputs) -> torch.Tensor:
        if inputs.deviation is None:
            raise ValueError("cachecraft selects after its check layer; no deviation given")
        spans_rows = inputs.span_rows()
        total = round(self.ratio * len(inputs.chunk_positions))
        weights = [
            imp * len(rows) for imp, rows in zip(self.impacts(inputs), spans_rows, strict=True)
        ]
        weight_sum = sum(weights) or 1.0
        picked = []
        for weight, rows in zip(weights, spans_rows, strict=True):
            take = min(len(rows), round(total * weight / weight_sum))
            if take:
                picked.append(rows[inputs.topk(inputs.deviation[rows], take)])
        if not picked:
            return inputs.chunk_positions[:0]
        return inputs.chunk_positions[torch.cat(picked).sort().values]


def make_selector(
    kind: KVReuse,
    ratio: float | None = None,
    *,
    default_ratio: float = 0.15,
    check_layer: int = 1,
    lego_tokens: int = 16,
    sink_tokens: int = 1,
    adaptive: bool = False,
    refine_layers: int = 0,
    refine_start: float = 2.0,
) -> Selector:
    """The selector of a chunk-reusing `kind` (`full` recomputes every chunk token); `ratio`
    None takes `default_ratio`. Raises ValueError for `auto` and `prefix` (no selector)."""
    ratio = default_ratio if ratio is None else ratio
    if kind is KVReuse.NAIVE:
        return NaiveSelector()
    if kind is KVReuse.FULL:
        return FullSelector()
    if kind is KVReuse.LEGO:
        return LegoSelector(num_tokens=lego_tokens)
    if kind is KVReuse.CACHEBLEND:
        return CacheBlendSelector(
            ratio=ratio,
            check_layer=check_layer,
            adaptive=adaptive,
            sink_tokens=sink_tokens,
            refine_layers=refine_layers,
            refine_start=refine_start,
        )
    if kind is KVReuse.CACHECRAFT:
        return CacheCraftSelector(ratio=ratio, check_layer=check_layer)
    raise ValueError(f"'{kind.value}' names no selector; resolve 'auto' to one first")
