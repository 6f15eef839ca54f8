"""Client side of `bench_load.py`: a streamed chat request that records every token's
arrival, readers of `/metrics`, `/admin/cache/stats` and the server process, and a server
(re)start on a kept data dir (the disk tier survives it)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from http_stream import READY_TIMEOUT_S, free_port

METRIC_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")
LOST = (
    "timeout",
    "timeout_in_stream",
    "transport_error",
    "truncated",
)  # requests that got no answer and no 503


def client_for(url: str) -> httpx.AsyncClient:
    """An async client with no connection cap (open-loop arrivals must not queue here)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=32)
    return httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600, connect=30), limits=limits)


@dataclass
class Outcome:
    """One streamed request as the client saw it (filled in while it runs)."""

    kind: str = ""
    status: int | None = None
    result: str = "pending"  # ok, http_<status>, stream_error, or one of LOST
    started: float = 0.0
    ended: float = 0.0
    ttft_s: float | None = None
    arrivals: list[float] = field(default_factory=list)
    text: str = ""
    usage: dict = field(default_factory=dict)
    ragkv: dict = field(default_factory=dict)
    cache: str | None = None
    retry_after: str | None = None
    error: str | None = None


async def stream_into(client: httpx.AsyncClient, body: dict, out: Outcome, timeout_s: float):
    """POST a streamed chat completion, recording into `out` as events arrive: TTFT (the
    first event with choices leaves once the first token is sampled), each content event's
    arrival, the final usage and `ragkv` object, and how it ended."""
    out.started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                out.status, out.cache = response.status_code, response.headers.get("x-ragkv-cache")
                if response.status_code != 200:
                    out.retry_after = response.headers.get("retry-after")
                    out.error = (await response.aread()).decode(errors="replace")[:300]
                    out.result = f"http_{response.status_code}"
                    return out
                out.result = "truncated"  # until [DONE] or an error event arrives
                async for line in response.aiter_lines():
                    _event(line, out)
    except TimeoutError:
        out.result = "timeout" if out.status is None else "timeout_in_stream"
    except httpx.HTTPError as exc:
        out.result, out.error = "transport_error", repr(exc)
    finally:
        out.ended = time.perf_counter()
    return out


def _event(line: str, out: Outcome) -> None:
    if not line.startswith("data: "):
        return
    if line == "data: [DONE]":
        out.result = "ok" if out.result == "truncated" else out.result
        return
    now, event = time.perf_counter(), json.loads(line[6:])
    if "error" in event:
        out.result, out.error = "stream_error", json.dumps(event["error"])[:300]
    elif event.get("choices"):
        if out.ttft_s is None:
            out.ttft_s = now - out.started
        content = event["choices"][0].get("delta", {}).get("content")
        if content:
            out.arrivals.append(now)
            out.text += content
    if event.get("usage"):
        out.usage, out.ragkv = event["usage"], event.get("ragkv") or {}


async def send(client: httpx.AsyncClient, body: dict, timeout_s: float, kind: str = "") -> Outcome:
    """One streamed request to its end."""
    return await stream_into(client, body, Outcome(kind=kind), timeout_s)


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank, q in 0..100) or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def median(values: list[float]) -> float | None:
    """The median or None for no values."""
    return statistics.median(values) if values else None


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments skipped)."""
    values = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and not line.startswith("#"):
            values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


async def metrics(client: httpx.AsyncClient) -> dict[str, float]:
    """`/metrics` parsed."""
    return parse_metrics((await client.get("/metrics")).text)


async def cache_counts(client: httpx.AsyncClient) -> dict[str, float]:
    """Hit counters of the three cache levels from `/admin/cache/stats`, flattened."""
    stats = (await client.get("/admin/cache/stats")).json()
    semantic = (stats.get("semantic") or {}).get("totals") or {}
    prefix, chunk = stats.get("prefix") or {}, stats.get("chunk") or {}
    counters = chunk.get("counters") or {}
    flat = {f"semantic_{k}": semantic.get(k, 0) for k in ("lookups", "hits", "misses")}
    flat |= {f"prefix_{k}": prefix.get(k, 0) for k in ("requests", "prompt_tokens")}
    flat["prefix_cached_tokens"] = prefix.get("cached_tokens", 0)
    for name in ("lookups", "hits_device", "hits_cpu", "hits_disk", "misses",
                 "decided_load", "decided_recompute", "refused"):  # fmt: skip
        flat[f"chunk_{name}"] = counters.get(name, 0)
    flat["chunk_tokens_reused"] = chunk.get("chunk_tokens_reused", 0)
    return flat


def diff(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """after - before, key by key."""
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


async def flush_prefix(client: httpx.AsyncClient) -> None:
    """Drop the radix prefix cache (chunk KV and semantic entries stay)."""
    (await client.post("/admin/cache/flush", json={"level": "prefix"})).raise_for_status()


async def wait_idle(client: httpx.AsyncClient, timeout_s: float) -> bool:
    """Poll `/metrics` until nothing is waiting or running; False if it never gets there."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        values = await metrics(client)
        if values["ragkv_engine_waiting"] + values["ragkv_engine_running"] == 0:
            return True
        await asyncio.sleep(0.5)
    return False


def serve_at(data_dir: str, threads: int, extra_env: dict[str, str] | None = None):
    """`ragkv serve` on `data_dir` (kept: a restart finds the disk tier), settings as
    `http_stream.start_serve`; returns (base URL, process)."""
    port = free_port()
    env = dict(os.environ)
    env.update(RAGKV_DATA_DIR=data_dir, RAGKV_SERVER__PORT=str(port),
               RAGKV_SERVER__DEMO_DOCUMENTS="0", RAGKV_SERVER__ACCESS_LOG="false",
               RAGKV_SERVER__LOG_LEVEL="warning", RAGKV_MODEL__NUM_THREADS=str(threads),
               **(extra_env or {}))  # fmt: skip
    process = subprocess.Popen([str(Path(sys.executable).with_name("ragkv")), "serve"], env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ragkv serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_process(process)
    raise RuntimeError("ragkv serve did not get ready in 10 minutes")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a server we started (kill it if it does not stop in 60 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def process_sample(pid: int) -> dict[str, float]:
    """RSS (MiB) and open file handles of a process (psutil if installed, else /proc)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        return {"rss_mb": proc.memory_info().rss / 2**20, "fds": proc.num_fds()}
    except ImportError:
        pass
    rss_kb = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = float(line.split()[1])
    return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def idle_state(client, pid: int) -> dict:
    """Server process RSS and handles, KV pool pages free and held by the prefix cache, at
    idle; `unaccounted_pages` (neither free nor in the prefix cache) should stay 0."""
    prefix = (await client.get("/admin/cache/stats")).json()["prefix"]
    pages = {k: prefix[k] for k in ("free_pages", "cached_pages", "evictable_pages",
                                    "locked_pages", "pinned_pages")}  # fmt: skip
    pages["unaccounted_pages"] = (
        prefix["pool_pages"] - prefix["free_pages"] - prefix["cached_pages"]
    )
    return process_sample(pid) | pages


async def sample_process(pid: int, stop: asyncio.Event, out: list[dict], every_s: float):
    """RSS and open handles of the server every `every_s` until `stop`."""
    started = time.perf_counter()
    while not stop.is_set():
        out.append({"t_s": time.perf_counter() - started} | process_sample(pid))
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
