"""Every RagkvError class answers with its status and the OpenAI error envelope."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from ragkv.errors import ALL_ERRORS, Overloaded, RagkvError
from ragkv.server.app import build_app
from ragkv.settings import Settings

EXPECTED_STATUS = {
    "InvalidRequest": 400,
    "Unauthorized": 401,
    "Forbidden": 403,
    "NotFound": 404,
    "Conflict": 409,
    "PayloadTooLarge": 413,
    "UnsupportedMediaType": 415,
    "Unprocessable": 422,
    "RateLimited": 429,
    "Overloaded": 503,
    "ModelError": 500,
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    data_dir = str(tmp_path_factory.mktemp("data"))
    app = build_app(Settings.load(data_dir=data_dir, server={"demo_documents": 0}))
    by_name = {cls.__name__: cls for cls in ALL_ERRORS}

    @app.get("/raise/{name}")
    async def raise_error(name: str) -> None:
        raise by_name[name](f"{name} happened", param="field_x")

    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize("error_class", ALL_ERRORS, ids=lambda cls: cls.__name__)
def test_error_class_maps_to_status_and_envelope(
    client: TestClient, error_class: type[RagkvError]
) -> None:
    response = client.get(f"/raise/{error_class.__name__}")
    assert response.status_code == EXPECTED_STATUS[error_class.__name__]
    error = response.json()["error"]
    assert error == {
        "message": f"{error_class.__name__} happened",
        "type": error_class.error_type,
        "param": "field_x",
        "code": error_class.default_code,
    }


def test_every_error_class_is_covered() -> None:
    assert {cls.__name__ for cls in ALL_ERRORS} == set(EXPECTED_STATUS)


def test_overloaded_carries_retry_after(client: TestClient) -> None:
    response = client.get("/raise/Overloaded")
    assert response.headers["retry-after"] == "1"
    assert Overloaded("busy", retry_after_s=7).headers["Retry-After"] == "7"


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    wrong_method = client.delete("/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
