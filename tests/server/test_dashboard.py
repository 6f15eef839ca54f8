"""The dashboard's data endpoint over real HTTP (auth, contents, time series) and the time
series itself: its bound, percentiles from histogram buckets, and the sampler task."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram

from ragkv.server.routes.dashboard import level_summary, tenant_rows
from ragkv.server.timeseries import (
    MAX_POINTS,
    SAMPLE_INTERVAL_S,
    LatencyWindow,
    Sampler,
    ServerProbe,
    TimeSeries,
    histogram_buckets,
    quantile,
)
from tests.conftest import LiveServer

TENANT = {"Authorization": "Bearer sk-tenant-b"}
ADMIN = {"Authorization": "Bearer sk-admin"}


def get(live_server: LiveServer, path: str, headers: dict[str, str] | None = None, **params):
    return httpx.get(f"{live_server.url}{path}", headers=headers, params=params, timeout=60)


def wait_for(condition, what: str, timeout_s: float = 30.0):
    """Poll `condition()` until it returns a truthy value; fail with `what` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.fixture(scope="module")
def traffic(live_server: LiveServer) -> None:
    """A chat the engine serves and a warmed question answered by the semantic cache."""
    url = live_server.url
    question = "What is the dashboard test's favourite colour?"
    warm = {"entries": [{"query": question, "response": "Blue."}]}
    assert (
        httpx.post(f"{url}/v1/cache/entries", json=warm, headers=TENANT, timeout=120).status_code
        == 200
    )
    for content in ("Say hello to the dashboard.", question):
        body = {
            "messages": [{"role": "user", "content": content}],
            "max_tokens": 2,
            "temperature": 0,
        }
        response = httpx.post(f"{url}/v1/chat/completions", json=body, headers=TENANT, timeout=120)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [(None, 401), ({"Authorization": "Bearer sk-wrong"}, 401), (TENANT, 403)],
)
def test_data_needs_the_admin_key(live_server: LiveServer, headers, status: int) -> None:
    response = get(live_server, "/admin/dashboard/data", headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] and error["type"]


def test_page_loads_without_a_key_with_local_assets(live_server: LiveServer) -> None:
    page = get(live_server, "/admin/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for asset in ("dashboard.js", "dashboard.css", "vendor/uplot/uPlot.iife.min.js"):
        assert asset in page.text
        served = get(live_server, f"/static/ragkv/{asset}")
        assert served.status_code == 200, asset
    assert "MIT" in get(live_server, "/static/ragkv/vendor/uplot/LICENSE").text
    script = get(live_server, "/static/ragkv/dashboard.js").text
    assert "sessionStorage" in script and "Authorization" in script


def test_data_has_the_stats_and_the_series(live_server: LiveServer, traffic) -> None:
    data = get(live_server, "/admin/dashboard/data", ADMIN).json()
    stats = get(live_server, "/admin/cache/stats", ADMIN).json()
    assert data["stats"].keys() == stats.keys() == {"semantic", "prefix", "chunk"}
    assert data["stats"]["semantic"]["totals"] == stats["semantic"]["totals"]
    assert data["stats"]["prefix"]["requests"] == stats["prefix"]["requests"] >= 1
    levels = data["levels"]
    assert levels["semantic"]["hits"] >= 1 and levels["semantic"]["unit"] == "questions"
    assert levels["prefix"]["looked_up"] == stats["prefix"]["prompt_tokens"]
    assert levels["prefix"]["tokens_saved"] == stats["prefix"]["cached_tokens"]
    assert {row["category"] for row in data["categories"]} >= set(stats["semantic"]["categories"])
    assert any(row["tenant"] == "tenant-b" and row["hits"] >= 1 for row in data["tenants"])
    assert data["engine"]["pool_pages"] == stats["prefix"]["pool_pages"]
    assert {"collections", "documents", "chunks", "largest"} <= data["retrieval"].keys()
    assert data["retrieval"]["search"].keys() == {"searches", "p50_ms", "p95_ms"}
    series = data["series"]
    assert series["interval_s"] == SAMPLE_INTERVAL_S and series["max_points"] == MAX_POINTS
    assert series["points"], "the sampler takes its first point at start"


def test_since_returns_only_newer_points(live_server: LiveServer) -> None:
    sampler: Sampler = live_server.app.state.sampler
    assert sampler.running
    points = get(live_server, "/admin/dashboard/data", ADMIN).json()["series"]["points"]
    newest = points[-1]["t"]
    later = get(live_server, "/admin/dashboard/data", ADMIN, since=newest).json()
    assert all(point["t"] > newest for point in later["series"]["points"])
    bad = get(live_server, "/admin/dashboard/data", ADMIN, since="-1")
    assert bad.status_code == 422 and "error" in bad.json()


def test_probe_reads_the_live_components(live_server: LiveServer, traffic) -> None:
    parts = live_server.app.state.components
    point = ServerProbe(parts)()
    load = parts.llm.load_info()
    assert point["pool_pages"] == load["pool_pages"]
    assert point["engine_requests"] == parts.llm.stats.requests >= 1
    assert point["semantic_lookups"] >= point["semantic_hits"] >= 1
    assert point["chunk_tokens"] is not None  # the chunk cache is on by default
    assert point["ttft_p50_ms"] is not None and point["ttft_p95_ms"] >= point["ttft_p50_ms"]


def test_docs_pages_use_local_assets(live_server: LiveServer) -> None:
    for path, assets in (
        ("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")),
        ("/redoc", ("redoc.standalone.js",)),
    ):
        page = get(live_server, path).text
        assert "cdn." not in page and "fonts.googleapis" not in page
        for asset in assets:
            assert f"/static/apidocs/{asset}" in page
            assert get(live_server, f"/static/apidocs/{asset}").status_code == 200
    openapi = get(live_server, "/openapi.json").json()
    assert "/admin/dashboard/data" in openapi["paths"]
    assert "/admin/dashboard" not in openapi["paths"] and "/docs" not in openapi["paths"]


# -- the time series on its own -----------------------------------------------------------


def test_series_keeps_the_newest_points_only() -> None:
    series = TimeSeries(max_points=720)
    for i in range(1000):
        series.append({"t": float(i), "value": float(i)})
    points = series.points()
    assert len(series) == len(points) == 720
    assert points[0]["t"] == 280.0 and points[-1]["t"] == 999.0
    assert [p["t"] for p in series.points(since=996.0)] == [997.0, 998.0, 999.0]
    assert series.latest() == {"t": 999.0, "value": 999.0}
    assert TimeSeries(max_points=1).latest() is None


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.5, 40.0), (float("inf"), 40.0)]
    assert quantile(0.25, buckets) == pytest.approx(0.1)
    assert quantile(0.5, buckets) == pytest.approx(0.15)
    assert quantile(1.0, buckets) == pytest.approx(0.5)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 5.0)]) == 0.1  # past the last bound


def test_latency_window_forgets_old_observations() -> None:
    histogram = Histogram("t_seconds", "t", ["mode"], registry=CollectorRegistry(), buckets=(1, 2))
    window = LatencyWindow(histogram, window=2)
    assert window.sample() == (None, None)
    histogram.labels("a").observe(0.5)
    histogram.labels("b").observe(0.5)
    assert dict(histogram_buckets(histogram))[1.0] == 2.0  # summed over label values
    assert window.sample() == (500.0, 950.0)
    histogram.labels("a").observe(1.5)
    assert window.sample() == (750.0, 1850.0)
    assert window.sample() == (1500.0, 1950.0)  # the 0.5 s ones left the 2-sample window
    assert window.sample() == (None, None)


def test_sampler_samples_until_stopped() -> None:
    reads = {"n": 0}

    def read() -> dict[str, float | None]:
        reads["n"] += 1
        if reads["n"] == 2:
            raise RuntimeError("one bad read is skipped, not fatal")
        return {"n": float(reads["n"])}

    async def scenario() -> Sampler:
        sampler = Sampler(read, interval_s=0.001, max_points=3)
        sampler.start()
        deadline = time.monotonic() + 10
        while reads["n"] < 6:
            assert time.monotonic() < deadline, "the sampler stopped sampling"
            await asyncio.sleep(0.001)
        await sampler.stop()
        assert not sampler.running
        return sampler

    sampler = asyncio.run(scenario())
    values = [point["n"] for point in sampler.series.points()]
    assert len(values) == 3 and 2.0 not in values and values == sorted(values)
    assert sampler.to_json()["max_points"] == 3


def test_level_summary_without_semantic_or_chunk_levels() -> None:
    prefix = {"requests": 4, "prompt_tokens": 400, "cached_tokens": 100, "generated_tokens": 40}
    levels = level_summary({"semantic": None, "prefix": prefix, "chunk": None}, 200.0)
    assert levels["semantic"] is None and levels["chunk"] is None
    assert levels["prefix"]["hit_rate"] == 0.25
    assert levels["prefix"]["prefill_s_saved"] == 0.5
    assert (
        level_summary({"semantic": None, "prefix": prefix, "chunk": None}, None)["prefix"][
            "prefill_s_saved"
        ]
        is None
    )
    assert tenant_rows(None) == []
