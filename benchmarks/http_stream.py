"""Decode speed as a user of the HTTP API sees it: a live `ragkv serve` in its own process
(as deployed), one streamed `/v1/completions` at a time, tokens per second between the
first and the last streamed token (the prefill and first token excluded, as in the engine
row of `bench_engine.py`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

READY_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(threads: int, extra_env: dict[str, str] | None = None):
    """`ragkv serve` in a subprocess on a free port with a throwaway data dir; returns
    (base URL, process, data dir handle). Raises if it is not ready in 10 minutes."""
    data = tempfile.TemporaryDirectory(prefix="ragkv-bench-")
    port = free_port()
    env = dict(os.environ)
    env.update(
        RAGKV_DATA_DIR=data.name,
        RAGKV_SERVER__PORT=str(port),
        RAGKV_SERVER__DEMO_DOCUMENTS="0",
        RAGKV_SERVER__ACCESS_LOG="false",
        RAGKV_SERVER__LOG_LEVEL="warning",
        RAGKV_MODEL__NUM_THREADS=str(threads),
        **(extra_env or {}),
    )
    ragkv = Path(sys.executable).with_name("ragkv")
    process = subprocess.Popen([str(ragkv), "serve"], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"ragkv serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return url, process, data
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("ragkv serve did not get ready in 10 minutes")
        time.sleep(0.5)


def stream_decode_tps(url: str, prompt: str, num_tokens: int) -> float:
    """One streamed completion of exactly `num_tokens` tokens (ignore_eos); decode tok/s."""
    body = {
        "prompt": prompt,
        "max_tokens": num_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "ragkv": {"semantic_cache": False},
    }
    arrivals, usage = [], None
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            # The client shares the server's two cores here: a token's event is timed by a
            # substring, and only events that may carry usage or an error are parsed (a
            # json.loads per token was CPU time taken from the server, which a remote client
            # would not take).
            if '"choices": [{' in line:
                arrivals.append(time.perf_counter())
            if '"usage": {' not in line and '"error"' not in line:
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                raise RuntimeError(f"stream failed: {event['error']}")
            usage = event.get("usage") or usage
    if usage is None or usage["completion_tokens"] != num_tokens:
        raise RuntimeError(f"expected {num_tokens} tokens, the stream reported {usage}")
    # Every token is one event (the holdback of half a character can merge two: then the
    # token count over the span of events still holds).
    return (num_tokens - 1) / (arrivals[-1] - arrivals[0])
