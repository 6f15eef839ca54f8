"""Sampling parameters and the sampler: greedy, temperature, top-k, top-p, seeds, logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ragkv.errors import InvalidRequest

MIN_TEMPERATURE = 1e-4


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if self.temperature < 0:
            raise InvalidRequest("temperature must be >= 0", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]", param="top_p")
        if self.top_k < 0:
            raise InvalidRequest("top_k must be >= 0", param="top_k")
        if not 0 <= self.top_logprobs <= 20:
            raise InvalidRequest("top_logprobs must be in [0, 20]", param="top_logprobs")

    @property
    def greedy(self) -> bool:
        """Temperature 0 (or one so small that logits / T overflows) means argmax."""
        return self.temperature < MIN_TEMPERATURE


@dataclass
class TokenLogprob:
    """Log probability of the chosen token and of the `top` alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[int, TokenLogprob | None]:
    """Pick the next token from `logits: [vocab]` (fp32); logprobs from the raw distribution."""
    if params.greedy:
        token = int(torch.argmax(logits))
    else:
        scaled = logits / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scaled, min(params.top_k, scaled.shape[-1])).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
            filtered = torch.zeros_like(probs)
            filtered[order[keep]] = sorted_probs[keep]
            probs = filtered / filtered.sum()
        if not bool(torch.isfinite(probs).all()):
            token = int(torch.argmax(logits))  # overflow at extreme settings: fall back, never fail
        else:
            token = int(torch.multinomial(probs, 1, generator=generator))
    if not params.logprobs:
        return token, None
    logprobs = torch.log_softmax(logits, dim=-1)
    top: list[tuple[int, float]] = []
    if params.top_logprobs:
        values, ids = torch.topk(logprobs, params.top_logprobs)
        top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return token, TokenLogprob(token, float(logprobs[token]), top)


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded per request (None: the global RNG)."""
    if seed is None:
        return None
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
