"""The ragkv application on Ray Serve: a gateway (the FastAPI app as ingress), N engine
replicas behind the cache-affinity router, and one shared owner each for the semantic cache
and retrieval. `ragkv serve --replicas N` runs it (`run_cluster`); `build_cluster` gives the
Serve application for `serve.run` or a Serve config of your own."""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray import serve
from ray.serve.config import HTTPOptions, RequestRouterConfig

from ragkv.assets import generation_model_path
from ragkv.cluster.engine_replica import EngineReplica
from ragkv.cluster.fleet import EngineFleet
from ragkv.cluster.owners import Owner, Remote
from ragkv.cluster.router import CacheAffinityRouter
from ragkv.engine.config import load_config
from ragkv.engine.tokenizer import Tokenizer
from ragkv.server.app import build_app
from ragkv.server.components import Attached
from ragkv.settings import Settings

log = logging.getLogger("ragkv.cluster")

APP_NAME = "ragkv"
ENGINE, SEMANTIC, RETRIEVAL, GATEWAY = "Engine", "SemanticCache", "Retrieval", "Gateway"
OWNER_CPUS = 0.1  # the owners mostly wait on lmdb, SQL and FAISS; the engines need the cores


class Gateway:
    """The ingress deployment: the gateway app of `server/app.py`, its engine a fleet of the
    engine replicas and its semantic cache and retriever stand-ins for the shared owners."""

    def __init__(self, settings: Settings, *deployments: Any) -> None:
        self.settings = settings  # `deployments` only make Serve deploy them first

    def __serve_build_asgi_app__(self) -> Any:
        instance = serve.get_replica_context().replica_tag
        return build_app(self.settings, attach=self.attach, instance=instance)

    async def attach(self) -> Attached:
        """Handles to the other deployments, dressed as the local components."""
        settings = self.settings
        model = generation_model_path(settings.model.gguf_path, settings.model.hf_dir)
        engine = serve.get_deployment_handle(ENGINE, app_name=APP_NAME)
        fleet = EngineFleet(
            engine,
            Tokenizer(model),
            load_config(model).context_length,
            settings.chunk_cache.enabled,
            settings.engine.page_size,
            settings.engine.max_num_seqs,
        )
        semantic = admin = None
        if settings.semantic_cache.enabled:
            owner = serve.get_deployment_handle(SEMANTIC, app_name=APP_NAME)
            semantic, admin = Remote(owner, "cache"), Remote(owner, "admin")
        retrieval = serve.get_deployment_handle(RETRIEVAL, app_name=APP_NAME)
        retriever = Remote(retrieval, "retriever", local={"settings": settings.retrieval})
        return Attached(fleet, semantic, admin, retriever, by_replica=fleet.figures_by_replica)


def affinity_router(settings: Settings) -> RequestRouterConfig:
    """The engine deployment's router: `CacheAffinityRouter` with the cluster settings."""
    cluster = settings.cluster
    return RequestRouterConfig(
        request_router_class=CacheAffinityRouter,
        request_router_kwargs={
            "page_size": settings.engine.page_size,
            "chunk_credit": cluster.chunk_credit,
            "tokens_per_queued": cluster.tokens_per_queued,
            "balance_abs_threshold": cluster.balance_abs_threshold,
            "balance_rel_threshold": cluster.balance_rel_threshold,
        },
        request_routing_stats_period_s=cluster.stats_period_s,
        request_routing_stats_timeout_s=max(10.0, 5 * cluster.stats_period_s),
    )


def build_cluster(settings: Settings) -> serve.Application:
    """The Serve application: gateway -> engine replicas (cache-affinity router), semantic
    cache owner, retrieval owner."""
    cluster = settings.cluster
    if cluster.router == "pow2":  # Ray's default, for comparison (benchmarks/bench_cluster.py)
        router = RequestRouterConfig(request_routing_stats_period_s=cluster.stats_period_s)
    else:
        router = affinity_router(settings)
    engine = serve.deployment(EngineReplica).options(
        name=ENGINE,
        num_replicas=cluster.replicas,
        ray_actor_options={
            "num_cpus": cluster.engine_num_cpus,
            "num_gpus": cluster.engine_num_gpus,
        },  # fmt: skip
        request_router_config=router,
        max_ongoing_requests=settings.engine.max_num_seqs + settings.engine.max_waiting,
        max_queued_requests=settings.engine.max_waiting,  # past it: 503 (BackPressureError)
        graceful_shutdown_timeout_s=settings.server.shutdown_drain_s,
    )
    owner = serve.deployment(Owner).options(
        num_replicas=1, ray_actor_options={"num_cpus": OWNER_CPUS}, max_ongoing_requests=256
    )
    semantic = None
    if settings.semantic_cache.enabled:
        semantic = owner.options(name=SEMANTIC).bind("semantic", settings)
    retrieval = owner.options(name=RETRIEVAL).bind("retrieval", settings, semantic)
    gateway = serve.deployment(serve.ingress()(Gateway)).options(
        name=GATEWAY,
        num_replicas=cluster.gateway_replicas,
        ray_actor_options={"num_cpus": OWNER_CPUS},
        max_ongoing_requests=1024,
    )
    # The gateway finds the others by name; binding them here makes Serve deploy them.
    return gateway.bind(settings, engine.bind(settings), retrieval)


def run_cluster(settings: Settings, host: str, blocking: bool = True) -> None:
    """Start (or join, `cluster.ray_address`) Ray, deploy the application with its HTTP
    proxy on `host:server.port`, and wait until interrupted (unless not `blocking`)."""
    address = settings.cluster.ray_address
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    serve.start(http_options=HTTPOptions(host=host, port=settings.server.port))
    serve.run(build_cluster(settings), name=APP_NAME, route_prefix="/")
    log.info("ragkv cluster ready: %d engine replicas, http://%s:%d", settings.cluster.replicas,
             host, settings.server.port)  # fmt: skip
    if not blocking:
        return
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
