"""Schemathesis stateful run over the collection routes of a live server: sequences that
create a collection, add documents, search, read and delete them never get a 5xx, and errors
come in the OpenAI envelope.

The links between the steps are those schemathesis infers from the OpenAPI schema (a created
collection's `name`, an ingest's `document_ids`); no links are declared. Documents and searches
are drawn as a client would write them (see `as_a_client_writes`): random ones are refused
before a sequence gets anywhere, and test_schema_fuzz already sends malformed bodies.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase

from tests.conftest import LiveServer
from tests.fuzz import fuzz_settings

AUTH = {"Authorization": "Bearer sk-tenant-b"}
DOCUMENTS = "/v1/collections/{name}/documents"
WORKFLOW = {  # (method, path template) -> step of the create -> add -> search -> delete chain
    ("POST", "/v1/collections"): "create",
    ("POST", DOCUMENTS): "add documents",
    ("POST", "/v1/collections/{name}/search"): "search",
    ("DELETE", "/v1/collections/{name}"): "delete",
}


def as_a_client_writes(raw: dict[str, Any]) -> dict[str, Any]:
    """The schema with documents and searches narrowed to what the retriever accepts:
    JSON documents (no uploads) with non-blank text and a plain id, a non-blank query and
    a `top_k` within the limit."""
    content = raw["paths"][DOCUMENTS]["post"]["requestBody"]["content"]
    content.pop("multipart/form-data")
    documents = content["application/json"]["schema"]["properties"]["documents"]
    documents.update(minItems=1, maxItems=4)
    fields = documents["items"]["properties"]
    fields["text"].update(pattern=r"\S", maxLength=300)
    fields["id"] = {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,40}\Z"}
    search = raw["components"]["schemas"]["SearchRequest"]["properties"]
    search["query"].update(pattern=r"\S", maxLength=200)
    search["top_k"].update(minimum=1, maximum=20)
    return raw


def test_collection_workflows_have_no_server_errors(live_server: LiveServer) -> None:
    raw = httpx.get(f"{live_server.url}/openapi.json").json()
    schema = schemathesis.openapi.from_dict(as_a_client_writes(raw))
    schema.config.update(base_url=live_server.url)
    machine = schema.include(path_regex="^/v1/collections").as_state_machine()
    succeeded: Counter[str] = Counter()

    class Collections(machine):  # type: ignore[misc, valid-type]
        def setup(self) -> None:
            """Each sequence starts from no collections: a sequence replayed must meet the
            same server answers (hypothesis refuses generation that depends on outside state)."""
            url = f"{live_server.url}/v1/collections"
            for collection in httpx.get(url, headers=AUTH).json()["data"]:
                httpx.delete(f"{url}/{collection['name']}", headers=AUTH)

        def get_call_kwargs(self, case) -> dict:
            return {"headers": AUTH, "timeout": 120}

        def validate_response(self, response, case, **kwargs) -> None:
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.text[:300]}"
            if response.status_code >= 400:
                assert "error" in response.json(), f"{where}: errors use the OpenAI envelope"
            elif (case.method, case.path) in WORKFLOW:
                succeeded[WORKFLOW[case.method, case.path]] += 1

    Collections.run(  # derandomized; benchmarks/fuzz_campaign.py --server runs it wider
        settings=fuzz_settings(
            40,
            stateful_step_count=10,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],  # shrinking replays whole sequences: report as found
        )
    )
    # The inferred links were followed: every step of the chain succeeded at least once.
    assert set(succeeded) == set(WORKFLOW.values()), succeeded
