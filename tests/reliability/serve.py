"""A real `ragkv serve` process on a data directory: started, killed with SIGKILL, restarted.

Also builds the small random-weight Llama (SmolLM2's tokenizer, 2 layers) the reduced campaign
serves so that a restart costs the process start, not a 135M-parameter model load.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

TENANT = "crash"
TENANT_KEY = "sk-crash"
ADMIN_KEY = "sk-crash-admin"
READY_TIMEOUT_S = 600.0


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_small_model(folder: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer and chat template in `folder` (an HF
    folder `model.hf_dir` can name); built once, reused when `folder` already holds it."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    import transformers

    from ragkv.assets import generation_model_path, load_hf_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = load_hf_tokenizer(generation_model_path())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    transformers.LlamaForCausalLM(config).float().eval().save_pretrained(folder)
    return folder


def config_toml(data_dir: Path, model_dir: Path | None, threads: int) -> str:
    """The server's settings: auth on (one tenant, an admin key), quiet logs, no demo data,
    a small KV pool, the fixed GEMV layout and GEMM library the tests use, `threads` torch
    threads (one keeps a shared machine's cores from fighting over OpenMP teams);
    `model_dir` None: SmolLM2."""
    gemm = "onednn" if torch.backends.mkldnn.is_available() else "blas"  # as tests/conftest.py
    model = f'hf_dir = "{model_dir}"\n' if model_dir is not None else ""
    return (
        f'data_dir = "{data_dir}"\n'
        '[server]\ndemo_documents = 0\naccess_log = false\nlog_level = "warning"\n'
        f'[auth]\napi_keys = {{"{TENANT_KEY}" = "{TENANT}"}}\nadmin_key = "{ADMIN_KEY}"\n'
        "[engine]\nkv_cache_mb = 64\n"
        f'[model]\ngemm_layout = "blocked"\nbatched_gemm = "{gemm}"\ndecode_dtype = "same"\n'
        'batch_dtype = "same"\n'
        f"num_threads = {threads}\n{model}"
    )


class ServeProcess:
    """`python -m ragkv.cli.main serve` on `root/data`, one process at a time; each start
    listens on a new free port and logs to `root/serve-<n>.log`."""

    def __init__(self, root: Path, model_dir: Path | None, threads: int = 1) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.config_path = root / "ragkv.toml"
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_toml(self.data_dir, model_dir, threads))
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> float:
        """Start the server and wait until `/ready` answers 200; returns the seconds taken.

        Raises `RuntimeError` with the log's tail if it exits or is not ready in 10 minutes."""
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAGKV_")}
        env.update(RAGKV_CONFIG=str(self.config_path), RAGKV_SERVER__PORT=str(port))
        self.starts += 1
        log_path = self.root / f"serve-{self.starts}.log"
        started = time.perf_counter()
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ragkv.cli.main", "serve"],
                env=env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{port}"
        while not self._ready():
            if self.process.poll() is not None or time.perf_counter() - started > READY_TIMEOUT_S:
                self.kill()
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"ragkv serve did not get ready (start {self.starts}):\n{tail}")
            time.sleep(0.1)
        return time.perf_counter() - started

    def kill(self) -> None:
        """SIGKILL the server (no shutdown code runs) and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=60)

    def stop(self) -> None:
        """Ask the server to shut down (SIGTERM: indexes saved, stores closed); kill after 60 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False
