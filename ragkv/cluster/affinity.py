"""Cache-affinity scoring: which engine replica can reuse most of a request's prompt.

A replica is credited with the prompt tokens it holds for the request's tenant: the cached
prefix pages (compared by chained page digests, `cache/kv/digest.py`) count in full, and the
chunk KV it holds for the request's chunks counts for the share of their tokens that blending
does not recompute (`chunk_credit`). No router in the field credits that second part: a RAG
request over the same chunks in another order shares no prefix with the first.

Load comes first, as in SGLang's router: when replicas' loads diverge past both an absolute
and a relative threshold, the least loaded wins whatever it holds. Otherwise the best score
(reused tokens minus a per-queued-request penalty) wins, ties to the less loaded, then to the
one holding less (new tenants spread out). An agent
session (`session_id`) sticks to the replica it last ran on while that replica lives. Pure
functions over plain data: the Ray router (`cluster/router.py`) feeds them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ragkv.cache.kv.chunk_store import chunk_key
from ragkv.cache.kv.digest import page_digests
from ragkv.engine.cache_report import CHUNK_HASH_CHARS
from ragkv.engine.sequence import Request


@dataclass(frozen=True)
class RouteHint:
    """What the router needs to know of one engine call, passed as its first argument.

    `pages`: chained digests of the prompt's full pages (the last token excluded, as the
    engine matches); `chunks`: (chunk token hash prefix, num_tokens) per chunk span.
    `replica`: address one replica by its id (admin calls); `avoid`: replicas that already
    failed this request."""

    tenant: str = "default"
    pages: tuple[int, ...] = ()
    chunks: tuple[tuple[str, int], ...] = ()
    session_id: str | None = None
    replica: str | None = None
    avoid: tuple[str, ...] = ()

    @classmethod
    def of(cls, request: Request, page_size: int, avoid: Sequence[str] = ()) -> RouteHint:
        """The hint of an engine request (its prompt, its chunk spans, its tenant)."""
        prompt = request.prompt_ids
        chunks = tuple(
            (chunk_hash(request.tenant, prompt[span.start : span.start + span.length]), span.length)
            for span in request.chunk_spans
        )
        return cls(
            request.tenant,
            prompt_pages(prompt, page_size),
            chunks,
            request.session_id,
            avoid=tuple(avoid),
        )

    @classmethod
    def to(cls, replica: str) -> RouteHint:
        """A hint that addresses one replica."""
        return cls(replica=replica)


def prompt_pages(token_ids: Sequence[int], page_size: int) -> tuple[int, ...]:
    """The page digests a prompt is matched by (the last token excluded, as the engine does)."""
    return tuple(page_digests(token_ids[:-1], page_size))


def chunk_hash(tenant: str, token_ids: Sequence[int]) -> str:
    """How replicas name a chunk in their reports (`engine/cache_report.py`)."""
    return chunk_key(tenant, token_ids).token_hash[:CHUNK_HASH_CHARS]


@dataclass
class ReplicaView:
    """One replica as the router sees it: what it reported holding (plus what was routed to
    it since), and its load (requests in flight from this router, or queued as reported)."""

    replica_id: str
    prefix: dict[str, set[int]] = field(default_factory=dict)
    chunks: dict[str, set[str]] = field(default_factory=dict)
    load: float = 0.0
    kv_use: float = 0.0


@dataclass(frozen=True)
class AffinityPolicy:
    """Weights and thresholds (see the module docstring); settings `cluster.*`."""

    chunk_credit: float = 0.85
    tokens_per_queued: float = 128.0
    balance_abs_threshold: float = 4.0
    balance_rel_threshold: float = 1.5


def reusable_tokens(hint: RouteHint, view: ReplicaView, page_size: int, credit: float) -> float:
    """Prompt tokens `view`'s replica can skip for `hint`: its longest run of the prompt's
    page digests from the start, plus `credit` x the tokens of the chunks it holds."""
    held_pages = view.prefix.get(hint.tenant, set())
    matched = 0
    for digest in hint.pages:
        if digest not in held_pages:
            break
        matched += 1
    held_chunks = view.chunks.get(hint.tenant, set())
    chunk_tokens = sum(n for chunk, n in hint.chunks if chunk in held_chunks)
    return matched * page_size + credit * chunk_tokens


def imbalanced(loads: Iterable[float], policy: AffinityPolicy) -> bool:
    """SGLang's rule: the spread exceeds the absolute threshold and the busiest exceeds the
    idlest by the relative factor."""
    values = list(loads)
    if len(values) < 2:
        return False
    high, low = max(values), min(values)
    return high - low > policy.balance_abs_threshold and high > policy.balance_rel_threshold * low


def held(view: ReplicaView) -> int:
    """Pages and chunks a replica holds: among equals, new work goes to the emptier one."""
    return sum(map(len, view.prefix.values())) + sum(map(len, view.chunks.values()))


def rank_replicas(
    hint: RouteHint,
    views: Sequence[ReplicaView],
    page_size: int,
    policy: AffinityPolicy,
    sticky: str | None = None,
) -> list[list[str]]:
    """Replica ids in order of preference, one per rank (Ray tries ranks in order).
    `sticky`: the replica the request's session last ran on (first if it is a candidate)."""
    views = [v for v in views if v.replica_id not in hint.avoid] or list(views)
    if not views:
        return []
    if imbalanced((v.load for v in views), policy):
        order = sorted(views, key=lambda v: (v.load, v.kv_use, v.replica_id))
    else:

        def score(view: ReplicaView) -> float:
            reused = reusable_tokens(hint, view, page_size, policy.chunk_credit)
            return reused - policy.tokens_per_queued * view.load

        order = sorted(views, key=lambda v: (-score(v), v.load, held(v), v.kv_use, v.replica_id))
        if sticky is not None:
            order.sort(key=lambda v: v.replica_id != sticky)  # stable: the rest keep order
    return [[v.replica_id] for v in order]
