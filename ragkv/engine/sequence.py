"""The request contract the layers above hand in (`Request`, `ChunkSpan`, `KVReuse`), and a
request's life inside the engine (`Sequence`) and what it produces (`RequestOutput`)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ragkv.cache.kv.radix import RadixNode
from ragkv.engine.sampling import SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from xgrammar import GrammarMatcher


class KVReuse(enum.Enum):
    """How a request may reuse cached KV; parsed once at the API edge.

    `full`: no cached KV at all (a plain prefill, the exactness reference); `prefix`: radix
    prefix hits only; `naive`, `cacheblend`, `cachecraft`, `lego`: chunk KV blended with that
    selector; `auto`: the configured default selector.
    """

    AUTO = "auto"
    FULL = "full"
    PREFIX = "prefix"
    NAIVE = "naive"
    CACHEBLEND = "cacheblend"
    CACHECRAFT = "cachecraft"
    LEGO = "lego"

    @property
    def uses_prefix_cache(self) -> bool:
        """Every mode but `full` reads and writes the radix prefix cache."""
        return self is not KVReuse.FULL

    @property
    def blends_chunks(self) -> bool:
        """Modes that reuse cached chunk KV (all but `full` and `prefix`)."""
        return self not in (KVReuse.FULL, KVReuse.PREFIX)


@dataclass(frozen=True)
class ChunkSpan:
    """A chunk's place in the prompt: token positions `[start, start + length)`. `seen`: how
    many leading prompt tokens its cached KV was computed after (0: the chunk alone), the
    part of its real context it already reflects."""

    start: int
    length: int
    seen: int = 0

    @property
    def end(self) -> int:
        """One past the chunk's last position."""
        return self.start + self.length


class SeqStatus(enum.Enum):
    """Where a sequence is: waiting for admission, being blended (admitted, its prompt's KV
    assembled over several steps), running, or done."""

    WAITING = "waiting"
    BLENDING = "blending"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(frozen=True)
class Constraint:
    """A grammar the output must follow (grammar-constrained decoding, `engine/grammar.py`).

    kind: `json_schema` (value: the JSON schema as text), `json_object` (any JSON object;
    value unused), `regex` (value: the pattern) or `ebnf` (value: the grammar, root rule
    `root`). Generation stops when the grammar is complete. `strict` (json_schema): objects
    hold only the properties the schema names, even where it does not say
    `additionalProperties: false` (OpenAI's `strict`); False follows JSON Schema's default.
    """

    kind: str
    value: str = ""
    strict: bool = True


@dataclass(frozen=True)
class Request:
    """What a caller asks the engine for: prompt token ids plus sampling and cache options.

    `chunk_spans`: where the context chunks sit in the prompt (ordered, disjoint, before the
    last token); `chunk_context`: the tokens chunk KV is computed after (its cache variant).
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    tenant: str = "default"
    kv_reuse: KVReuse = KVReuse.AUTO
    pin_ttl_s: float | None = None
    session_id: str | None = None
    chunk_spans: tuple[ChunkSpan, ...] = ()
    chunk_context: tuple[int, ...] = ()
    recompute_ratio: float | None = None
    constraint: Constraint | None = None

    @property
    def use_prefix_cache(self) -> bool:
        """Whether the radix prefix cache serves and stores this request."""
        return self.kv_reuse.uses_prefix_cache

    @property
    def wants_blend(self) -> bool:
        """Chunks to reuse and a mode that reuses them (not `full`, not `prefix`)."""
        return bool(self.chunk_spans) and self.kv_reuse.blends_chunks


def spans_valid(spans: tuple[ChunkSpan, ...], num_prompt: int) -> bool:
    """Spans are in order, disjoint, inside the prompt, and end before its last token."""
    end = 0
    for span in spans:
        if span.start < end or span.length < 0 or span.end > num_prompt - 1:
            return False
        end = span.end
    return True


@dataclass
class Sequence:
    """Engine-side state of one request. `token_ids` = prompt + generated so far; `matcher`:
    the grammar state of a constrained request (its accepted tokens are `output_ids`), None
    without a constraint and once the sequence finished or was aborted."""

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
    # Incremental detokenisation: `text` holds output_ids[:read_offset]; the window decoded
    # again each token starts at prefix_offset (a few tokens of context for the tokenizer).
    prefix_offset: int = 0
    read_offset: int = 0
    finish_reason: str | None = None
    arrival_s: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    num_preemptions: int = 0
    blend_pending: bool = False
    chunk_tokens_reused: int = 0
    tokens_recomputed: int | None = None
    selector: str | None = None
    matcher: GrammarMatcher | None = None
    # First token whose KV in `pages` is approximate (a blend's, or attended to one's);
    # None: all exact. The radix tree labels the pages stored back from there on.
    approx_from: int | None = None
    num_approx_cached: int = 0  # prompt tokens reused from approximate radix pages

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
    approx_tokens_reused: int = 0
    replica: str | None = None  # the engine replica that ran it (a Ray Serve cluster only)
