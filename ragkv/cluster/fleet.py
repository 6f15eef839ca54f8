"""`EngineFleet`: the gateway's engine when the engines are Ray Serve replicas. It has the
`AsyncEngine` surface the pipeline and the routes use, so they do not know whether they talk
to a local engine or to a fleet behind a handle.

Every call carries a `RouteHint` for the cache-affinity router. A stream whose replica dies
before it produced a token is retried on another replica (the dead one avoided); a stream
that already produced tokens ends with a retriable 503. Admin calls (stats, flushes) go to
every live replica, addressed one by one, and are summed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from ray.serve.request_router import ReplicaID

from ragkv.cluster.affinity import RouteHint, chunk_hash, prompt_pages
from ragkv.cluster.engine_replica import Hello
from ragkv.cluster.owners import unwrap
from ragkv.engine.async_engine import DISCONNECT_POLL_S
from ragkv.engine.sequence import Request, RequestOutput
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import ModelError, Overloaded, RagkvError

log = logging.getLogger("ragkv.cluster")

REPLICA_GONE = (RayActorError, ReplicaUnavailableError)
LOAD_FIGURES = (
    "waiting", "running", "blends_in_flight", "blend_steps", "steps", "step_tokens",
    "failed_requests", "pool_pages", "free_pages", "drain_per_s",
)  # fmt: skip
FIGURES = LOAD_FIGURES + (
    "engine_requests", "prompt_tokens", "cached_tokens", "generated_tokens",
    "chunk_requests", "chunk_tokens", "chunk_tokens_reused",
)  # fmt: skip
PAGE_FIGURES = tuple(
    f"{state}_pages" for state in ("cached", "evictable", "locked", "pinned", "approx")
)
ADMIN_TIMEOUT_S = 10.0
LOAD_POLL_S = 2.0


class EngineFleet:
    """Engine replicas behind one deployment handle (`cluster/app.py` builds it)."""

    def __init__(
        self,
        handle: DeploymentHandle,
        tokenizer: Tokenizer,
        context_length: int,
        chunk_cache_enabled: bool,
        page_size: int,
        max_num_seqs: int,
        retries: int = 2,
    ) -> None:
        self.handle = handle
        self._tokenizer = tokenizer
        self._context_length = context_length
        self._chunk_cache_enabled = chunk_cache_enabled
        self.page_size = page_size
        self.max_num_seqs = max_num_seqs
        self.retries = retries
        self.last_figures: dict[str, dict[str, float | None]] = {}  # replica -> figures()
        self.last_prefix: dict[str, dict[str, Any]] = {}  # replica -> prefix_stats()
        self._poller: asyncio.Task[None] | None = None

    # -- the AsyncEngine surface ------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The serving model's tokenizer (loaded in the gateway, no weights)."""
        return self._tokenizer

    @property
    def context_length(self) -> int:
        """The model's context window in tokens."""
        return self._context_length

    @property
    def chunk_cache_enabled(self) -> bool:
        """Whether the replicas run the chunk KV cache."""
        return self._chunk_cache_enabled

    @property
    def alive(self) -> bool:
        """True while the load poller runs (the replicas' health is Ray's business)."""
        return self._poller is not None and not self._poller.done()

    def start(self) -> None:
        """Start polling the replicas' load (the semantic cache adapts to it)."""
        self._poller = asyncio.create_task(self._poll_load(), name="ragkv-fleet-load")

    @property
    def load(self) -> float:
        """0..1: requests running and queued over the replicas' capacity (last poll)."""
        figures = self.figures()
        busy = (figures["running"] or 0) + (figures["waiting"] or 0)
        return min(1.0, busy / (self.max_num_seqs * max(1, len(self.last_figures))))

    def figures(self) -> dict[str, float | None]:
        """The replicas' `AsyncEngine.figures()` summed (last poll, never waits); a counter
        no replica has (the chunk cache off) stays None."""
        total: dict[str, float | None] = dict.fromkeys(FIGURES, 0.0)
        for figures in self.last_figures.values():
            for name, value in figures.items():
                total[name] = None if value is None else (total.get(name) or 0.0) + value
        return total

    def figures_by_replica(self) -> dict[str, dict[str, float | None]]:
        """Each replica's figures (last poll), for `/metrics` labelled by replica."""
        return dict(self.last_figures)

    def load_info(self) -> dict[str, float]:
        """The replicas' load figures summed (last poll); `replicas`: how many answered."""
        figures = self.figures()
        info = {name: float(figures.get(name) or 0.0) for name in LOAD_FIGURES}
        info["replicas"] = float(len(self.last_figures))
        return info

    def prefix_figures(self) -> dict[str, Any]:
        """The replicas' prefix stats summed (last poll, never waits)."""
        return {**dict.fromkeys(PAGE_FIGURES, 0), **summed(self.last_prefix)}

    async def stream(
        self,
        request: Request,
        is_disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs from the replica the router picks (see the module doc)."""
        failed: list[str] = []
        for _attempt in range(self.retries + 1):
            hint = RouteHint.of(request, self.page_size, avoid=failed)
            responses = self.handle.options(stream=True).generate.remote(hint, request)
            replica, produced, finished = "", False, False
            try:
                async for item in polled(responses, is_disconnected):
                    if isinstance(item, Hello):
                        replica = item.replica
                        continue
                    produced, finished = True, item.finished
                    item.replica = replica
                    yield item
                    if finished:
                        return
                if is_disconnected is not None and await is_disconnected():
                    return
                raise ModelError("the engine replica ended the stream early")
            except REPLICA_GONE as exc:
                if produced:
                    raise Overloaded(
                        f"the engine replica serving this request failed mid-stream ({exc}); "
                        "retry the request", retry_after_s=1,
                    ) from None  # fmt: skip
                log.warning("engine replica %s failed before the first token; retrying",
                            replica or "?")  # fmt: skip
                failed.append(replica)
            except BackPressureError:
                raise Overloaded(
                    "every engine replica is at capacity and the queue is full; retry later",
                    retry_after_s=2,
                ) from None
            except RayTaskError as exc:
                raise unwrap(exc) from None
            finally:
                if not finished:
                    responses.cancel()
        raise Overloaded("no engine replica could serve the request; retry", retry_after_s=2)

    async def pin_tool_turn(
        self, tenant: str, token_ids: list[int], ttl_s: float, due_s: float | None = None
    ) -> int:
        """Pin the conversation on the replica its prefix routes to (where it ran)."""
        hint = RouteHint(tenant, prompt_pages(token_ids, self.page_size))
        admin = self.handle.admin
        return await admin.remote(hint, "pin_tool_turn", tenant, token_ids, ttl_s, due_s)

    async def flush_prefix(self, tenant: str | None = None) -> int:
        """Drop the prefix cache of one tenant (or all) on every replica; pages released."""
        return sum((await self.each("flush_prefix", tenant)).values())

    async def flush_chunks(self, tenant: str | None = None) -> int:
        """Drop cached chunk KV of one tenant (or all) on every replica; entries dropped."""
        return sum((await self.each("flush_chunks", tenant)).values())

    async def prefix_stats(self) -> dict[str, object]:
        """Every replica's prefix stats summed, and each under `replicas`."""
        return summed(await self.each("prefix_stats"))

    async def chunk_stats(self) -> dict[str, object] | None:
        """Every replica's chunk stats summed (None when the chunk cache is off)."""
        if not self._chunk_cache_enabled:
            return None
        return summed(await self.each("chunk_stats"))

    def prewarm(self, tenant: str, chunks: list[list[int]], context: tuple[int, ...]) -> int:
        """Blocking (a worker thread): compute `chunks`' KV on the replica the router picks
        for them, so that RAG requests over them go there."""
        request_hint = RouteHint(
            tenant, chunks=tuple((chunk_hash(tenant, c), len(c)) for c in chunks)
        )
        return self.handle.prewarm.remote(request_hint, tenant, chunks, context).result()

    async def close(self) -> None:
        """Stop the load poller (the replicas belong to Ray Serve)."""
        if self._poller is not None:
            self._poller.cancel()

    # -- helpers ----------------------------------------------------------------------------

    def replica_ids(self) -> list[str]:
        """Ids of the engine deployment's live replicas (Ray's named replica actors)."""
        deployment = self.handle.deployment_id
        ids = []
        for actor in ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"] if isinstance(actor, dict) else actor
            if not ReplicaID.is_full_id_str(name):
                continue
            with_id = ReplicaID.from_full_id_str(name)
            if with_id.deployment_id == deployment:
                ids.append(with_id.unique_id)
        return sorted(ids)

    async def each(self, call: str, *args: Any) -> dict[str, Any]:
        """`call` on every live replica: {replica id: result}; a replica that does not answer
        within `ADMIN_TIMEOUT_S` (it is going away) is left out."""
        ids = await asyncio.to_thread(self.replica_ids)

        async def one(replica: str) -> Any:
            return await self.handle.admin.remote(RouteHint.to(replica), call, *args)

        results = await asyncio.gather(
            *(asyncio.wait_for(one(r), ADMIN_TIMEOUT_S) for r in ids), return_exceptions=True
        )
        answers = {}
        for replica, result in zip(ids, results, strict=True):
            if isinstance(result, RagkvError):
                raise result
            if isinstance(result, BaseException):
                log.warning("engine replica %s did not answer %s: %s", replica, call, result)
                continue
            answers[replica] = result
        return answers

    async def _poll_load(self) -> None:
        while True:
            try:
                self.last_figures = await self.each("figures")
                self.last_prefix = await self.each("prefix_stats")
            except Exception:  # the poller must outlive a bad moment of the cluster
                log.exception("polling the engine replicas' load failed")
            await asyncio.sleep(LOAD_POLL_S)


async def polled(
    responses: AsyncIterator[Any], is_disconnected: Callable[[], Awaitable[bool]] | None
) -> AsyncIterator[Any]:
    """The items of `responses`; ends early (without cancelling a pending read: a cancelled
    read would cancel the replica's stream) when `is_disconnected()` turns true."""
    iterator = aiter(responses)
    while True:
        pending = asyncio.ensure_future(anext(iterator))
        while not pending.done():
            await asyncio.wait({pending}, timeout=DISCONNECT_POLL_S)
            if not pending.done() and is_disconnected is not None and await is_disconnected():
                pending.cancel()
                return
        try:
            yield pending.result()
        except StopAsyncIteration:
            return


SAME_ON_EVERY_REPLICA = frozenset({"page_size", "bytes_per_page"})
PER_REPLICA_ONLY = frozenset({"cost_model", "token_hit_rate"})  # rates: not additive


def summed(per_replica: dict[str, Any]) -> dict[str, object]:
    """Numbers summed across replicas, nested groups (tiers, counters, tool pins) too;
    constants of the model (page size, bytes per page) taken once; the hit rate recomputed;
    every replica's own figures under `replicas`."""
    total: dict[str, object] = {}
    for stats in per_replica.values():
        add_into(total, stats or {})
    if total.get("prompt_tokens"):
        total["token_hit_rate"] = total.get("cached_tokens", 0) / total["prompt_tokens"]  # type: ignore[operator]
    total["replicas"] = per_replica
    return total


def add_into(total: dict[str, Any], stats: dict[str, Any]) -> None:
    for name, value in stats.items():
        if name in PER_REPLICA_ONLY:
            continue
        if name in SAME_ON_EVERY_REPLICA:
            total.setdefault(name, value)
        elif isinstance(value, dict):
            add_into(total.setdefault(name, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            total[name] = total.get(name, 0) + value
