"""`cache.scope = user`: each user of a tenant (the `user` field or the x-ragkv-user header)
has caches of its own at every level; under the default `tenant` scope they share."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer

AUTH = {"Authorization": "Bearer sk-tenant-a"}


@pytest.fixture
def user_scoped(live_server: LiveServer) -> Iterator[LiveServer]:
    parts = live_server.app.state.components
    saved = parts.settings
    cache = saved.cache.model_copy(update={"scope": "user"})
    parts.settings = saved.model_copy(update={"cache": cache})
    yield live_server
    parts.settings = saved


def ask(live: LiveServer, question: str, user: str | None = None, header: str | None = None):
    # A stop string ends the answer early with finish_reason "stop": only complete answers
    # go into the semantic cache.
    body = {"messages": [{"role": "user", "content": question}], "max_tokens": 48,
            "temperature": 0, "stop": [".", "\n"]}  # fmt: skip
    if user is not None:
        body["user"] = user
    headers = {**AUTH, **({"x-ragkv-user": header} if header else {})}
    response = httpx.post(f"{live.url}/v1/chat/completions", json=body, headers=headers,
                          timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.headers["x-ragkv-cache"], response.json()["ragkv"]


def test_users_do_not_share_any_cache_level(user_scoped: LiveServer) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
    # A fixed question (asked by no other test): a random suffix changed the model's answer,
    # and once in a while the answer ran past max_tokens without a stop string, which the
    # semantic cache does not store (only complete answers), failing the hit below.
    question = "Which planet is known as the red planet? (cache scope: users)"
    assert ask(user_scoped, question, user=alice)[0] == "miss"
    status, info = ask(user_scoped, question, user=bob)
    assert status == "miss" and info["prefix_tokens_reused"] == 0  # not even the chat head
    assert ask(user_scoped, question, user=alice)[0] == "semantic-hit"
    assert ask(user_scoped, question, header=bob)[0] == "semantic-hit"  # bob's own entry


def test_tenant_scope_shares_between_users(live_server: LiveServer) -> None:
    question = "Which planet has the largest moons? (cache scope: tenant)"  # fixed, as above
    # carol's answer may reuse the tenant's cached chat head (kv-hit), never a semantic hit
    assert ask(live_server, question, user="carol")[0] != "semantic-hit"
    assert ask(live_server, question, user="dave")[0] == "semantic-hit"
