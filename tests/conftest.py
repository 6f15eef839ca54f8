"""Shared fixtures: settings in a temporary data dir, and a real uvicorn server on a free port."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:  # the server stack is imported by the fixtures that start one, so the
    # kernel and engine tests also run where only torch and triton are installed (a GPU box)
    import uvicorn
    from fastapi import FastAPI

    from ragkv.settings import Settings

# Without CUDA the Triton kernels run in Triton's CPU interpreter. Set before any kernel module
# is imported: `triton.jit` reads it when a kernel is defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Batches and prefills on oneDNN where torch has it, as `batched_gemm = auto` chose on the
# machines measured.
BATCHED_GEMM = "onednn" if torch.backends.mkldnn.is_available() else "blas"
TENANT_KEYS = {"sk-tenant-a": "tenant-a", "sk-tenant-b": "tenant-b"}
ADMIN_KEY = "sk-admin"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` cases skip, saying why, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clean_ragkv_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's own RAGKV_* variables."""
    for name in list(os.environ):
        if name.startswith("RAGKV_"):
            monkeypatch.delenv(name, raising=False)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running uvicorn server: its base URL, app and settings."""

    url: str
    app: FastAPI
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(app: FastAPI, settings: Settings) -> LiveServer:
    """Serve `app` with uvicorn in a thread and wait until it answers."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    return LiveServer(f"http://127.0.0.1:{port}", app, settings, server, thread)


def secured_settings(data_dir: Path, **overrides: object) -> Settings:
    """Settings with two tenant keys and an admin key, data under `data_dir`."""
    from ragkv.settings import Settings

    overrides.setdefault("engine", {"kv_cache_mb": 128})
    # A fixed GEMV layout, GEMM library and exact decode: the start-up calibration may pick
    # another layout or float16/bfloat16 decode weights on another machine, and tests compare greedy
    # outputs across servers and with transformers.
    overrides["model"] = {
        "gemm_layout": "blocked", "batched_gemm": BATCHED_GEMM, "decode_dtype": "same",
        "batch_dtype": "same", **overrides.get("model", {}),
    }  # fmt: skip
    return Settings.load(
        data_dir=str(data_dir),
        auth={"api_keys": TENANT_KEYS, "admin_key": ADMIN_KEY},
        **overrides,
    )


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One real gateway with auth on, shared by the HTTP tests of the session."""
    from ragkv.server.app import build_app

    settings = secured_settings(tmp_path_factory.mktemp("ragkv-data"))
    live = start_server(build_app(settings), settings)
    yield live
    live.stop()
