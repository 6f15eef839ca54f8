"""API-key auth: `Authorization: Bearer <key>` maps to a tenant; the admin key opens /admin/*."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request

from ragkv.errors import Forbidden, Unauthorized
from ragkv.settings import AuthSettings

DEFAULT_TENANT = "default"
TENANT_HEADER = "x-ragkv-tenant"


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _auth(request: Request) -> AuthSettings:
    return request.app.state.settings.auth


def _is_admin_key(auth: AuthSettings, key: str) -> bool:
    return auth.admin_key is not None and secrets.compare_digest(
        key.encode(), auth.admin_key.get_secret_value().encode()
    )


def tenant_of(request: Request) -> str:
    """The tenant a request acts for. With auth off every request is the default tenant.

    The admin key may act for any tenant named in the `x-ragkv-tenant` header.
    """
    auth = _auth(request)
    if not auth.enabled:
        return DEFAULT_TENANT
    key = _bearer(request)
    if key is None:
        raise Unauthorized("missing API key; send the header 'Authorization: Bearer <key>'")
    if _is_admin_key(auth, key):
        return request.headers.get(TENANT_HEADER) or DEFAULT_TENANT
    for known, tenant in auth.api_keys.items():
        if secrets.compare_digest(key.encode(), known.encode()):
            return tenant
    raise Unauthorized("the API key is not valid")


def require_admin(request: Request) -> None:
    """Allow only the admin key (or anyone when auth is off)."""
    auth = _auth(request)
    if not auth.enabled:
        return
    key = _bearer(request)
    if key is None:
        raise Unauthorized("missing admin key; send the header 'Authorization: Bearer <key>'")
    if _is_admin_key(auth, key):
        return
    if any(secrets.compare_digest(key.encode(), known.encode()) for known in auth.api_keys):
        raise Forbidden("this endpoint needs the admin key; tenant keys cannot use /admin")
    raise Unauthorized("the API key is not valid")


Tenant = Annotated[str, Depends(tenant_of)]
Admin = Annotated[None, Depends(require_admin)]
