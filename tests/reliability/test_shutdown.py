"""Graceful shutdown of a real `ragkv serve`: SIGTERM lets a running stream finish, the
process exits on its own, and the restart finds the semantic index saved (nothing replayed, nothing
rebuilt) with every acknowledged entry in it."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.serve import ADMIN_KEY, TENANT_KEY, ServeProcess, build_small_model

AUTH = {"Authorization": f"Bearer {TENANT_KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
STREAM_TOKENS = 300  # the small model streams these for seconds: SIGTERM lands mid-stream
DRAIN_S = 600  # the bound on the drain, far above the stream's time on a loaded machine
ENTRIES = [
    {"query": f"What is the opening time of museum number {n}?", "response": f"{n} o'clock."}
    for n in range(1, 6)
]


def stream_tokens(url: str, first_token: threading.Event, times: list[float]) -> list[str]:
    """Stream a completion; every content chunk's arrival time goes into `times`."""
    body = {"prompt": "Once upon a time", "max_tokens": STREAM_TOKENS, "ignore_eos": True,
            "temperature": 0, "stream": True}  # fmt: skip
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=AUTH,
                      timeout=300) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: ") :])
                times.append(time.monotonic())
                first_token.set()
    return events


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServeProcess:
    model_dir = build_small_model(tmp_path_factory.mktemp("shutdown-model"))
    server = ServeProcess(Path(tmp_path_factory.mktemp("shutdown")), model_dir)
    config = server.config_path.read_text()
    server.config_path.write_text(
        config.replace("[server]\n", f"[server]\nshutdown_drain_s = {DRAIN_S}\n")
    )
    return server


def test_sigterm_drains_the_running_stream_and_saves_the_semantic_index(
    server: ServeProcess,
) -> None:
    server.start()
    warmed = httpx.post(f"{server.url}/v1/cache/entries", json={"entries": ENTRIES},
                        headers=AUTH, timeout=60)  # fmt: skip
    assert warmed.status_code == 200 and all(e["stored"] for e in warmed.json()["entries"])

    first_token, times, result = threading.Event(), [], {}
    reader = threading.Thread(
        target=lambda: result.update(events=stream_tokens(server.url, first_token, times))
    )
    reader.start()
    assert first_token.wait(120), "the stream did not start"
    assert server.process is not None
    server.process.terminate()  # SIGTERM
    terminated_at = time.monotonic()
    reader.join(timeout=300)
    # uvicorn re-raises the signal once it has shut down: the exit status says SIGTERM
    assert server.process.wait(timeout=DRAIN_S + 60) in (0, -signal.SIGTERM)

    events = result["events"]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] == STREAM_TOKENS
    assert times[-1] > terminated_at, "the stream kept going after SIGTERM"

    server.start()
    stats = httpx.get(f"{server.url}/admin/cache/stats", headers=ADMIN, timeout=30).json()
    start = stats["semantic"]["start"]
    assert start["entries"] == len(ENTRIES)
    assert start["rebuilt"] == 0 and start["replayed_ops"] == 0 and start["loaded"] >= 1
    for entry in ENTRIES:
        found = httpx.post(f"{server.url}/v1/cache/lookup", json={"query": entry["query"]},
                           headers=AUTH, timeout=60).json()  # fmt: skip
        assert found["hit"] and found["response"] == entry["response"]
    server.stop()
    assert server.process.returncode in (0, -signal.SIGTERM)
