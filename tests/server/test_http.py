"""HTTP behaviour against a real uvicorn server: auth, body limits, models, request ids."""

from __future__ import annotations

import httpx
import pytest
import torch

from tests.conftest import ADMIN_KEY, LiveServer


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_health_and_ready(live_server: LiveServer) -> None:
    assert httpx.get(f"{live_server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{live_server.url}/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_models_lists_bundled_smollm2(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/v1/models", headers=auth("sk-tenant-a"))
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    (card,) = body["data"]
    assert card["id"].startswith("SmolLM2-135M-Instruct")
    assert card["context_length"] == 8192
    on_gpu = torch.cuda.is_available()  # auto: the Triton kernels on CUDA, torch on the CPU
    runtime = (
        {"backend": "triton", "device": "cuda"} if on_gpu else {"backend": "torch", "device": "cpu"}
    )
    # the test servers decode exactly (`decode_dtype = same`): float32 on the torch path
    assert card["ragkv"] == {
        **runtime,
        "dtype": "float32",
        "decode": "torch",
        "decode_dtype": "float32",
    }
    one = httpx.get(f"{live_server.url}/v1/models/{card['id']}", headers=auth("sk-tenant-a"))
    assert one.json()["id"] == card["id"]
    missing = httpx.get(f"{live_server.url}/v1/models/gpt-17", headers=auth("sk-tenant-a"))
    assert missing.status_code == 404
    assert "GET /v1/models" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    "headers",
    [{}, auth("sk-wrong"), {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}],
    ids=["no-key", "bad-key", "wrong-scheme", "empty-token"],
)
def test_missing_or_bad_key_is_401(live_server: LiveServer, headers: dict[str, str]) -> None:
    response = httpx.get(f"{live_server.url}/v1/models", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_admin_key_works_on_tenant_routes(live_server: LiveServer) -> None:
    response = httpx.get(f"{live_server.url}/v1/models", headers=auth(ADMIN_KEY))
    assert response.status_code == 200


def test_oversized_body_is_413(live_server: LiveServer) -> None:
    limit = live_server.settings.server.max_body_bytes
    response = httpx.post(
        f"{live_server.url}/v1/models", content=b"x" * (limit + 1), headers=auth("sk-tenant-a")
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_request_id_is_echoed_or_made(live_server: LiveServer) -> None:
    echoed = httpx.get(f"{live_server.url}/health", headers={"x-request-id": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    made = httpx.get(f"{live_server.url}/health")
    assert len(made.headers["x-request-id"]) == 32
