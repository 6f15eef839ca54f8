"""The `ragkv` command line, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragkv import __version__

RAGKV = [sys.executable, "-m", "ragkv.cli.main"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGKV_")}
    env["RAGKV_ENGINE__KV_CACHE_MB"] = "32"
    return subprocess.run(
        [*RAGKV, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ragkv {__version__}"


def test_ask_streams_an_answer(tmp_path: Path) -> None:
    result = run("ask", "What is the capital of France?", "--max-tokens", "6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "generated tokens" in result.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    result = run("ask", "hi", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


@pytest.mark.slow  # loads the model and the embedder in-process (~60 s)
def test_ask_collection_without_a_server_answers_locally(tmp_path: Path) -> None:
    (tmp_path / "otters.txt").write_text(
        "Sea otters hold hands while they sleep so that they do not drift apart. "
        "They live along the coasts of the northern Pacific Ocean."
    )
    ingest = run("ingest", str(tmp_path / "otters.txt"), "--collection", "notes", cwd=tmp_path)
    assert ingest.returncode == 0, ingest.stderr
    result = run(
        "ask", "Why do sea otters hold hands?", "--collection", "notes",
        "--url", "http://127.0.0.1:9", "--max-tokens", "12", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "answering locally" in result.stderr
    assert "[1] otters" in result.stderr  # the source, by its document id
