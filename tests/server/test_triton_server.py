"""The gateway on the Triton backend (Triton's interpreter on a CPU machine) answers a chat
exactly as the torch backend does, and says which backend it runs."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
import torch

from tests.conftest import ADMIN_KEY, LiveServer, secured_settings, start_server

# A second server on the Triton interpreter (~55 s); the kernels and the engine on it are
# tested in tests/kernels and tests/engine/test_triton_backend.py within `make test`.
pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Which ocean lies west of Portugal?"}]


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    from ragkv.server.app import build_app

    settings = secured_settings(
        tmp_path_factory.mktemp("triton-server"),
        model={"backend": "triton"},
        semantic_cache={"enabled": False},
    )
    live = start_server(build_app(settings), settings)
    yield live
    live.stop()


def answer(server: LiveServer) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="sk-tenant-a", max_retries=0)
    response = client.chat.completions.create(
        model="default",
        messages=MESSAGES,
        max_tokens=6,
        temperature=0,
        extra_body={"ragkv": {"semantic_cache": False}},
    )
    return response.choices[0].message.content


def test_triton_backend_answers_like_torch(triton_server: LiveServer, live_server: LiveServer):
    client = openai.OpenAI(base_url=f"{triton_server.url}/v1", api_key="sk-tenant-a")
    (card,) = client.models.list().data
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert card.model_extra["ragkv"] == {
        "backend": "triton",
        "device": device,
        "dtype": "float32",
        "decode": "torch",  # the native CPU step replaces the torch ops only
        "decode_dtype": "float32",  # the test servers decode exactly
    }
    assert answer(triton_server) == answer(live_server)


def test_stats_report_the_levels_that_are_on(triton_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    response = httpx.get(f"{triton_server.url}/admin/cache/stats", headers=headers)
    assert response.status_code == 200  # the semantic cache is off here: null, not a 409
    stats = response.json()
    assert stats["semantic"] is None and stats["prefix"]["requests"] >= 1
