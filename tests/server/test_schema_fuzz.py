"""Schemathesis over /openapi.json of a live server: no request a client can send gets a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import LiveServer

ADMIN_HEADERS = {"Authorization": "Bearer sk-admin"}


def limit_generation(case) -> None:
    """Keep generated requests cheap: a fuzzed max_tokens of 10^6 would run the model for long.

    Validation of large values is still exercised: values over the context stay over it.
    """
    if isinstance(case.body, dict):
        for field in ("max_tokens", "max_completion_tokens"):
            value = case.body.get(field)
            if isinstance(value, int) and 8 < value < 8192:
                case.body[field] = 8
        if "messages" in case.body or "prompt" in case.body:
            case.body.setdefault("max_tokens", 4)


def test_no_server_errors(live_server: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 4
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            derandomize=True,  # the same cases on every run and machine; wider runs: a script
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[
                Phase.explicit,
                Phase.reuse,
                Phase.generate,
            ],  # shrinking re-runs the model: report as is
        )
        def check(case) -> None:
            limit_generation(case)
            response = case.call(headers=ADMIN_HEADERS, timeout=120)
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text[:300]}"
            if response.status_code >= 400:
                assert "error" in response.json(), f"{where}: errors use the OpenAI envelope"

        check()
