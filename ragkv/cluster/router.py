"""The engine deployment's Ray Serve request router: cache affinity (prefix pages and chunk KV,
`cluster/affinity.py`) with a load fallback.

Ray builds one router per deployment handle, in the process that holds the handle (here each
gateway replica), and calls `choose_replicas` for every engine call. What a replica holds comes
from two sources: its own report (`EngineReplica.record_routing_stats`, every
`cluster.stats_period_s`, the authoritative view) and what this router sent it since that
report (the request's pages and chunks: it will hold them once the request ran), the way
SGLang's router keeps an approximate tree of what it routed. Load is the requests this router
has in flight on each replica, or the replica's reported queue when that is larger (other
gateways' requests)."""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any, NamedTuple

from ray.serve._private.common import RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from ragkv.cluster.affinity import AffinityPolicy, ReplicaView, RouteHint, rank_replicas

SESSION_TTL_S = 600.0  # a session id sticks to its replica this long after its last request
MAX_RANKED = 4096  # pending requests remembered at most before the done ones are dropped
ROUTED_TTL_S = 30.0  # what was routed counts as held this long; replica reports cover it after


class Routed(NamedTuple):
    """A request sent to a replica: the pages and chunks it will leave there."""

    at: float
    tenant: str
    pages: tuple[int, ...]
    chunks: tuple[str, ...]


class CacheAffinityRouter(RequestRouter):
    """Ranks engine replicas by the prompt tokens they can reuse (see `cluster/affinity.py`);
    a call whose hint names a replica goes to that replica only."""

    def initialize_state(
        self,
        page_size: int = 16,
        chunk_credit: float = 0.85,
        tokens_per_queued: float = 128.0,
        balance_abs_threshold: float = 4.0,
        balance_rel_threshold: float = 1.5,
    ) -> None:
        """Called by Ray with the deployment's `request_router_kwargs`."""
        self.page_size = page_size
        self.policy = AffinityPolicy(
            chunk_credit, tokens_per_queued, balance_abs_threshold, balance_rel_threshold
        )
        self.in_flight: Counter[str] = Counter()
        self.ranked: dict[int, PendingRequest] = {}  # id(request metadata) -> its request
        self.routed: dict[str, deque[Routed]] = {}  # replica -> what was sent there lately
        self.sessions: dict[str, tuple[str, float]] = {}  # tenant/session -> (replica, until)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Ranks of candidates, most preferred first (Ray tries them in order)."""
        if pending_request is not None:  # every candidate is ranked: back off between rounds
            pending_request.routing_context.should_backoff = True
            self.remember(pending_request)
        hint = hint_of(pending_request)
        if hint is None:
            return [candidate_replicas]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        if hint.replica is not None:
            return [[by_id[hint.replica]]] if hint.replica in by_id else []
        views = [self.view(r) for r in candidate_replicas]
        ranks = rank_replicas(hint, views, self.page_size, self.policy, self.sticky(hint))
        return [[by_id[replica_id] for replica_id in rank] for rank in ranks]

    def _get_pending_request_matching_internal_request_id(
        self, request_metadata: RequestMetadata | None = None
    ) -> PendingRequest | None:
        """The replica chosen for a request's hint goes to that very request. Ray matches by
        internal request id, but every handle call made while serving one HTTP request
        shares that id: the calls of a stats request to each replica (or a prefix meant for
        one replica) would be crossed, and one of them never routed."""
        if request_metadata is None:
            return None
        pending = self.ranked.pop(id(request_metadata), None)
        return pending if pending is not None and not pending.future.done() else None

    def remember(self, pending_request: PendingRequest) -> None:
        """Note the request whose hint is being ranked (see the method above)."""
        if len(self.ranked) > MAX_RANKED:  # requests cancelled before they were routed
            self.ranked = {k: p for k, p in self.ranked.items() if not p.future.done()}
        self.ranked[id(pending_request.metadata)] = pending_request

    def view(self, replica: RunningReplica) -> ReplicaView:
        """What `replica` holds (report plus routed since) and its load."""
        replica_id = replica.replica_id.unique_id
        stats: dict[str, Any] = replica.routing_stats or {}
        prefix = {t: set(d) for t, d in (stats.get("prefix") or {}).items()}
        chunks = {t: set(h) for t, h in (stats.get("chunks") or {}).items()}
        routed = self.routed.get(replica_id, deque())
        while routed and routed[0].at < time.monotonic() - ROUTED_TTL_S:
            routed.popleft()
        for entry in routed:
            prefix.setdefault(entry.tenant, set()).update(entry.pages)
            chunks.setdefault(entry.tenant, set()).update(entry.chunks)
        load = stats.get("load") or {}
        queued = float(load.get("waiting", 0) + load.get("running", 0))
        pool = float(load.get("pool_pages", 0)) or 1.0
        kv_use = 1.0 - float(load.get("free_pages", pool)) / pool
        return ReplicaView(replica_id, prefix, chunks, max(self.in_flight[replica_id], queued),
                           kv_use)  # fmt: skip

    def sticky(self, hint: RouteHint) -> str | None:
        """The replica the hint's session last ran on, while the session is fresh."""
        if hint.session_id is None:
            return None
        entry = self.sessions.get(f"{hint.tenant}/{hint.session_id}")
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: Any) -> None:  # fmt: skip
        """Count the request in flight and remember what the replica will hold after it."""
        replica = replica_id.unique_id
        self.in_flight[replica] += 1
        hint = hint_of(pending_request)
        if hint is None or hint.replica is not None:
            return
        entry = Routed(time.monotonic(), hint.tenant, hint.pages, tuple(c for c, _ in hint.chunks))
        self.routed.setdefault(replica, deque()).append(entry)
        if hint.session_id is not None:
            until = time.monotonic() + SESSION_TTL_S
            self.sessions[f"{hint.tenant}/{hint.session_id}"] = (replica, until)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        """One request fewer in flight on the replica."""
        replica = replica_id.unique_id
        if self.in_flight[replica] > 0:
            self.in_flight[replica] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        """Forget a dead replica's routed state and sessions."""
        super().on_replica_actor_died(replica_id)
        replica = replica_id.unique_id
        self.routed.pop(replica, None)
        self.in_flight.pop(replica, None)
        self.sessions = {k: v for k, v in self.sessions.items() if v[0] != replica}


def hint_of(pending_request: PendingRequest | None) -> RouteHint | None:
    """The `RouteHint` an engine call carries as its first argument, if any."""
    if pending_request is None or not pending_request.args:
        return None
    first = pending_request.args[0]
    return first if isinstance(first, RouteHint) else None
