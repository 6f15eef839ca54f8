"""Retrieval fixtures: the serving model's real tokenizer, one MiniLM, a real PostgreSQL."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragkv.assets import generation_model_path
from ragkv.retrieval.embedder import Embedder
from ragkv.retrieval.tokenizer import HFTokenizer, load_model_tokenizer
from ragkv.settings import EmbeddingSettings
from tests.conftest import free_port

POSTGRES_URL_ENV = "RAGKV_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def serving_tokenizer() -> HFTokenizer:
    """SmolLM2's tokenizer, read from the bundled GGUF file."""
    return load_model_tokenizer(generation_model_path())


@pytest.fixture(scope="session")
def minilm() -> Embedder:
    """One MiniLM embedder for the whole session."""
    return Embedder(EmbeddingSettings())


def _run_as(user: str | None, *command: str) -> None:
    prefix = ["runuser", "-u", user, "--"] if user else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL: `$RAGKV_TEST_POSTGRES_URL`, else a throwaway cluster started here."""
    url = os.environ.get(POSTGRES_URL_ENV)
    if url:
        yield url
        return
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.skip(
            f"PostgreSQL is not installed (apt-get install postgresql) and {POSTGRES_URL_ENV} "
            "is not set: the PostgreSQL store test cannot run"
        )
    bindir = Path(found[-1]).parent
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        user = "postgres"
    datadir = Path(tempfile.mkdtemp(prefix="ragkv-pg-"))
    if user:
        shutil.chown(datadir, user)
    port = free_port()
    pg_ctl = str(bindir / "pg_ctl")
    try:
        _run_as(user, str(bindir / "initdb"), "-D", str(datadir / "db"), "-U", "postgres",
                "--auth=trust", "-E", "UTF8")  # fmt: skip
        options = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run_as(user, pg_ctl, "-D", str(datadir / "db"), "-o", options, "-w",
                "-l", str(datadir / "log"), "start")  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL cluster: {exc}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run_as(user, pg_ctl, "-D", str(datadir / "db"), "-m", "immediate", "stop")
        shutil.rmtree(datadir, ignore_errors=True)
