"""A request's life inside the engine: its tokens, KV pages, and output so far."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from ragkv.cache.kv.radix import RadixNode
from ragkv.engine.blend.prefill import ChunkSpan
from ragkv.engine.sampling import SamplingParams, TokenLogprob


class SeqStatus(enum.Enum):
    """Where a sequence is: waiting for admission, running, or done."""

    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    """What a caller asks the engine for: prompt token ids plus sampling and cache options."""

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    tenant: str = "default"
    use_prefix_cache: bool = True
    pin_ttl_s: float | None = None
    session_id: str | None = None
    chunk_spans: tuple[ChunkSpan, ...] = ()
    chunk_context: tuple[int, ...] = ()
    kv_reuse: str = "auto"
    recompute_ratio: float | None = None

    @property
    def wants_blend(self) -> bool:
        """Chunks to reuse and a mode that reuses them (not `full`, not `prefix`)."""
        return bool(self.chunk_spans) and self.kv_reuse not in ("full", "prefix")


@dataclass
class Sequence:
    """Engine-side state of one request. `token_ids` = prompt + generated so far."""

    request: Request
    namespace: str
    token_ids: list[int]
    generator: torch.Generator | None
    status: SeqStatus = SeqStatus.WAITING
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0
    num_cached_prompt: int = 0
    locked_node: RadixNode | None = None
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    num_text_sent: int = 0
    finish_reason: str | None = None
    arrival_s: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    num_preemptions: int = 0
    blend_pending: bool = False
    chunk_tokens_reused: int = 0
    tokens_recomputed: int | None = None
    selector: str | None = None

    @property
    def request_id(self) -> str:
        """Id of the request this sequence serves."""
        return self.request.request_id

    @property
    def num_prompt(self) -> int:
        """Prompt length in tokens."""
        return len(self.request.prompt_ids)

    @property
    def num_uncomputed(self) -> int:
        """Tokens whose KV is not in the pool yet (the last sampled token included)."""
        return len(self.token_ids) - self.num_computed

    @property
    def in_prefill(self) -> bool:
        """True until every prompt token has its KV."""
        return self.num_computed < len(self.token_ids) - 1 or not self.output_ids


@dataclass
class RequestOutput:
    """What one engine step produced for one request (a delta, plus totals when finished)."""

    request_id: str
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finished: bool
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float | None
    error: str | None = None
    chunk_tokens_reused: int = 0
    tokens_recomputed: int | None = None
    selector: str | None = None
