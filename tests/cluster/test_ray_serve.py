"""ragkv on a local Ray Serve instance sized for 2 cores: 2 engine replicas behind the
cache-affinity router, 2 gateway replicas, the shared semantic-cache and retrieval owners.
Real model, real HTTP through Serve's proxy. Skips where ray[serve] is not installed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, BATCHED_GEMM, LiveServer, free_port

ray = pytest.importorskip("ray", reason="ray[serve] is not installed: pip install 'ragkv[ray]'")
serve = pytest.importorskip("ray.serve")

pytestmark = pytest.mark.cluster

TENANTS = {f"sk-cluster-{name}": f"cluster-{name}" for name in "abcdef"}
PROPAGATE_S = 4.0  # replica cache reports (every 0.5 s) reach the gateways' routers by then
TOPICS = ("lighthouses and the sea", "alpine glaciers", "desert caravans", "coral reefs")


@dataclass
class Cluster:
    url: str
    settings: Any

    def chat(self, key: str, body: dict[str, Any], retries: int = 0) -> httpx.Response:
        """A chat completion; a 503 is retried after its Retry-After, `retries` times."""
        for _ in range(retries + 1):
            response = httpx.post(
                f"{self.url}/v1/chat/completions",
                json={"model": "default", "temperature": 0, **body},
                headers={"Authorization": f"Bearer {key}"},
                timeout=600,
            )
            if response.status_code != 503:
                return response
            time.sleep(float(response.headers.get("retry-after", "1")))
        return response

    def admin(self, path: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120
        )
        response.raise_for_status()
        return response.json()

    def computed_chunks(self) -> dict[str, int]:
        """Chunk KVs each engine replica has computed so far."""
        replicas = self.admin("/admin/cache/stats")["chunk"]["replicas"]
        return {replica: stats["chunks_computed"] for replica, stats in replicas.items()}

    def engine_replicas(self) -> list[str]:
        return sorted(self.admin("/admin/cache/stats")["prefix"]["replicas"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    from ragkv.cluster.app import run_cluster
    from ragkv.settings import Settings

    settings = Settings.load(
        data_dir=str(tmp_path_factory.mktemp("ragkv-cluster")),
        auth={"api_keys": TENANTS, "admin_key": ADMIN_KEY},
        engine={"kv_cache_mb": 128},
        model={  # as conftest's server
            "gemm_layout": "blocked",
            "batched_gemm": BATCHED_GEMM,
            "decode_dtype": "same",
            "batch_dtype": "same",
        },
        server={"port": free_port(), "demo_documents": 0},
        cluster={
            "replicas": 2,
            "gateway_replicas": 2,
            "engine_num_cpus": 0.5,
            "stats_period_s": 0.5,
            "balance_abs_threshold": 2,
        },
    )
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False,
             log_to_driver=False)  # fmt: skip
    try:
        run_cluster(settings, "127.0.0.1", blocking=False)
        live = Cluster(f"http://127.0.0.1:{settings.server.port}", settings)
        deadline = time.monotonic() + 120
        while len(live.engine_replicas()) < 2 and time.monotonic() < deadline:
            time.sleep(1)  # the gateways' routers learn both replicas
        yield live
    finally:
        serve.shutdown()
        ray.shutdown()


def system_prompt(topic: str) -> str:
    return (
        f"You are a patient guide who knows everything about {topic}. Answer in one short "
        f"sentence, plainly, and never invent facts about {topic}. " * 6
    )


def ask(topic: str, question: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system_prompt(topic)},
            {"role": "user", "content": question},
        ],
        "max_tokens": 10,
        "ragkv": {"semantic_cache": False},
    }


def test_each_tenant_lands_where_its_prefix_is_and_answers_match_one_process(
    cluster: Cluster, live_server: LiveServer
) -> None:
    keys = list(TENANTS)[:4]
    seen: dict[str, list[tuple[str, int, str]]] = {key: [] for key in keys}
    for round_ in range(3):
        for key, topic in zip(keys, TOPICS, strict=True):
            response = cluster.chat(key, ask(topic, f"Question {round_}: what is it like?"))
            assert response.status_code == 200, response.text
            body = response.json()
            cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
            text = body["choices"][0]["message"]["content"]
            seen[key].append((body["ragkv"]["replica"], cached, text))
        if round_ == 0:
            time.sleep(PROPAGATE_S)
    for key, runs in seen.items():
        replicas = {replica for replica, _, _ in runs}
        assert len(replicas) == 1, f"{key} moved between replicas: {runs}"
        assert all(cached >= 64 for _, cached, _ in runs[1:]), runs
    assert len({runs[0][0] for runs in seen.values()}) == 2  # new tenants spread out
    single = httpx.Client(base_url=live_server.url, timeout=300)
    for key, topic in zip(keys, TOPICS, strict=True):
        for round_ in (0, 2):
            body = {"model": "default", "temperature": 0,
                    **ask(topic, f"Question {round_}: what is it like?")}  # fmt: skip
            alone = single.post("/v1/chat/completions", json=body,
                                headers={"Authorization": "Bearer sk-tenant-a"})  # fmt: skip
            assert alone.json()["choices"][0]["message"]["content"] == seen[key][round_][2]


DOCUMENTS = [
    {"id": name, "text": f"{name.title()} notes. " + text * 4}
    for name, text in (
        ("kestrel", "The kestrel hovers over fields and drops onto voles and beetles. "),
        ("heron", "The grey heron stands still in shallow water and spears passing fish. "),
        ("swift", "The common swift eats, drinks and sleeps on the wing for months. "),
    )
]


def rag(order: list[int], question: str = "Which bird never lands?") -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "documents": [DOCUMENTS[i] for i in order],
        "max_tokens": 6,
        "ragkv": {"semantic_cache": False},
    }


def test_chunks_pull_requests_in_any_order_unless_their_replica_is_overloaded(
    cluster: Cluster,
) -> None:
    from ragkv.cluster.affinity import RouteHint
    from ragkv.cluster.app import APP_NAME, ENGINE
    from ragkv.engine.sampling import SamplingParams
    from ragkv.engine.sequence import Request

    key = "sk-cluster-e"
    first = cluster.chat(key, rag([0, 1, 2])).json()
    holder = first["ragkv"]["replica"]
    computed = cluster.computed_chunks()
    assert computed[holder] >= 3
    time.sleep(PROPAGATE_S)
    again = cluster.chat(key, rag([2, 0, 1])).json()
    assert again["ragkv"]["replica"] == holder
    assert cluster.computed_chunks() == computed  # fetched where they were, not computed
    # Load the holder with long requests sent straight to it (past the absolute threshold).
    engine = serve.get_deployment_handle(ENGINE, app_name=APP_NAME)
    params = SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True)
    streams = [
        engine.options(stream=True).generate.remote(
            RouteHint.to(holder), Request(f"busy-{i}", list(range(100, 140)), params, tenant="x")
        )
        for i in range(3)
    ]
    try:
        time.sleep(PROPAGATE_S)
        moved = cluster.chat(key, rag([1, 2, 0])).json()
        assert moved["ragkv"]["replica"] != holder
        assert cluster.computed_chunks()[moved["ragkv"]["replica"]] >= 3  # computed there
    finally:
        for stream in streams:
            stream.cancel()


def test_a_semantic_entry_stored_through_one_gateway_hits_through_another(
    cluster: Cluster,
) -> None:
    headers = {"Authorization": "Bearer sk-cluster-f"}
    question = "Which planet has the brightest rings?"
    stored = httpx.post(
        f"{cluster.url}/v1/cache/entries",
        json={"entries": [{"query": question, "response": "Saturn, by far."}]},
        headers=headers,
        timeout=120,
    )
    assert stored.status_code == 200 and stored.json()["entries"][0]["stored"], stored.text
    writer = stored.headers["x-ragkv-instance"]
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 8}
    for _ in range(40):  # Serve's proxy spreads requests over the gateways at random
        hit = cluster.chat("sk-cluster-f", body)
        if hit.headers["x-ragkv-instance"] != writer:
            break
    assert hit.headers["x-ragkv-instance"] != writer
    assert hit.headers["x-ragkv-cache"] == "semantic-hit"
    assert content(hit) == "Saturn, by far."


def content(response: httpx.Response) -> str:
    return response.json()["choices"][0]["message"]["content"]


def test_stats_and_metrics_show_every_engine_replica(cluster: Cluster) -> None:
    replicas = cluster.engine_replicas()
    assert len(replicas) == 2
    stats = cluster.admin("/admin/cache/stats")
    per_replica = stats["prefix"]["replicas"]
    assert stats["prefix"]["pool_pages"] == sum(r["pool_pages"] for r in per_replica.values())
    one = next(iter(per_replica.values()))
    assert stats["prefix"]["bytes_per_page"] == one["bytes_per_page"]  # not times replicas
    time.sleep(2.5)  # the gateways poll the replicas' figures every 2 s
    metrics = httpx.get(f"{cluster.url}/metrics", timeout=60).text
    for replica in replicas:
        assert f'ragkv_engine_running_by_replica{{replica="{replica}"}}' in metrics


def test_killing_an_engine_replica_loses_no_request(cluster: Cluster) -> None:
    from ragkv.cluster.app import APP_NAME, ENGINE

    before = cluster.engine_replicas()
    results: list[httpx.Response] = []

    def one(i: int) -> None:
        body = ask(TOPICS[i % 4], f"Tell me fact number {i}.") | {"max_tokens": 24}
        results.append(cluster.chat(list(TENANTS)[i % 4], body, retries=3))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    victim = before[0]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#{ENGINE}#{victim}", namespace="serve"),
             no_restart=True)  # fmt: skip
    for thread in threads:
        thread.join(timeout=600)
    assert [r.status_code for r in results] == [200] * 6, [r.text for r in results]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now = cluster.engine_replicas()
        if len(now) == 2 and victim not in now:
            break
        time.sleep(2)
    assert len(now) == 2 and victim not in now  # Serve started a replacement
    assert cluster.chat("sk-cluster-a", ask(TOPICS[0], "And now?")).status_code == 200
