"""A live ragkv gateway for benchmarks: uvicorn in a thread of this process, on a free
127.0.0.1 port, returned once `/ready` says the model is loaded."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx


def start_server(settings) -> tuple[str, Callable[[], None]]:
    """Serve `settings` (a `ragkv.settings.Settings`); returns (base URL, stop)."""
    import uvicorn

    from ragkv.server.app import build_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(build_app(settings), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while httpx.get(f"{url}/ready", timeout=10).status_code != 200:  # the model loads first
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not get ready in 10 minutes")
        time.sleep(0.5)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=60)

    return url, stop
