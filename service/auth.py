"""API keys: `Authorization: Bearer <key>` on `/v1/*` and `/metrics` when `TAPESERVE_API_KEYS` is set.

A pure ASGI middleware rather than a route dependency, so that a request without a valid key is answered 401
before its body is read or parsed, and unknown `/v1/` paths reveal nothing either.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import PROBLEM_JSON, Unauthorized, problem_response
from service.middleware import route_path

BEARER_SCHEME = "HTTPBearer"
PROTECTED_PREFIXES = ("/v1/", "/metrics")
"""Paths that need a key; /healthz, /readyz, /docs, /redoc and /openapi.json stay open for probes and people."""


def is_protected(path: str) -> bool:
    return path == "/v1" or path.startswith(PROTECTED_PREFIXES)


def bearer_token(authorization: bytes) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive), else None."""
    scheme, _, token = authorization.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def key_matches(token: bytes, keys: Sequence[bytes]) -> bool:
    """Constant-time over every key: no early exit, so timing tells neither which key nor how much matched."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class ApiKeyMiddleware:
    """Answers 401 problem+json (`WWW-Authenticate: Bearer`) to protected paths without a configured key."""

    def __init__(self, app: ASGIApp, api_keys: Sequence[str]) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in api_keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys or scope["type"] != "http" or not is_protected(path := route_path(scope)):
            await self.app(scope, receive, send)
            return
        authorization = next((value for name, value in scope["headers"] if name.lower() == b"authorization"), None)
        token = None if authorization is None else bearer_token(authorization)
        if token is not None and key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        if token is None:
            error = Unauthorized(
                "This endpoint needs an API key: send `Authorization: Bearer <key>`.",
                headers={"WWW-Authenticate": 'Bearer realm="tapeserve"'},
            )
        else:
            error = Unauthorized(
                "The API key is not valid.",
                headers={"WWW-Authenticate": 'Bearer realm="tapeserve", error="invalid_token"'},
            )
        request_id = scope.get("state", {}).get("request_id")
        await problem_response(error, request_id, path)(scope, receive, send)


UNAUTHORIZED_RESPONSE: dict[str, Any] = {
    "description": "API keys are configured and the request has none that is valid",
    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}


def document_security(app: FastAPI, keys_required: bool) -> None:
    """Declare the HTTPBearer scheme in the OpenAPI document, so Swagger UI shows "Authorize".

    Protected operations require it when keys are configured, and list it as optional (`{}` alternative)
    when the service is open.
    """
    generate = app.openapi

    def openapi_with_security() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "One of the keys in TAPESERVE_API_KEYS; needed on /v1/* and /metrics when keys are set.",
        }
        requirement: list[dict[str, list[str]]] = [{BEARER_SCHEME: []}] if keys_required else [{BEARER_SCHEME: []}, {}]
        for path, operations in schema.get("paths", {}).items():
            if is_protected(path):
                for operation in operations.values():
                    if isinstance(operation, dict):
                        operation["security"] = requirement
                        operation.setdefault("responses", {}).setdefault("401", UNAUTHORIZED_RESPONSE)
        return schema

    # FastAPI's documented way to customise the schema is to replace the bound method
    app.openapi = openapi_with_security  # type: ignore[method-assign]


def install_auth(app: FastAPI, api_keys: Sequence[str]) -> None:
    """Add the key check (call before the request-context middleware, so 401s carry a request id)."""
    app.add_middleware(ApiKeyMiddleware, api_keys=api_keys)
    document_security(app, keys_required=bool(api_keys))
