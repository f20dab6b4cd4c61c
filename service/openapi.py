"""The OpenAPI document as client generators need it (openapi-python-client, openapi-typescript, ...).

Each route declares its own answers; what any operation can answer is added here, once for all of them:
a 500 problem for a bug, and a 404 problem for an operation with path parameters (nothing found under
them). Operation ids are the route functions' names (`network_gradients`, `tape`, ...), so a generated
client's functions read like this service's own client's instead of `..._v1_networks_gradients_post`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from schemas.problems import PROBLEM_DESCRIPTIONS, Problem
from service.errors import PROBLEM_JSON, extend_openapi
from service.http import BODY_MODELS

PROBLEM_REF = "#/components/schemas/Problem"
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})


def operation_id(route: APIRoute) -> str:
    """FastAPI's `generate_unique_id_function`: the route function's name (unique, checked by the tests)."""
    return route.name


def problem_response(status: int) -> dict[str, Any]:
    return {"description": PROBLEM_DESCRIPTIONS[status], "content": {PROBLEM_JSON: {"schema": {"$ref": PROBLEM_REF}}}}


def _with_problem_schema(document: dict[str, Any]) -> None:
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" in schemas:
        return
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(schema.pop("$defs", {}))
    schemas["Problem"] = schema


def _with_body_schemas(document: dict[str, Any]) -> None:
    """The component of every body a route reads itself (`JSONBody`) that no other model brought in."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, model in BODY_MODELS.items():
        if name not in schemas:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for inner, definition in schema.pop("$defs", {}).items():
                schemas.setdefault(inner, definition)
            schemas[name] = schema


def add_common_responses(document: dict[str, Any]) -> None:
    """Every operation: 500 problem+json; with a path parameter, 404 problem+json too."""
    _with_problem_schema(document)
    _with_body_schemas(document)
    for operations in document.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in _HTTP_METHODS or not isinstance(operation, dict):
                continue
            responses = operation.setdefault("responses", {})
            if any(parameter.get("in") == "path" for parameter in operation.get("parameters", [])):
                responses.setdefault("404", problem_response(404))
            responses.setdefault("500", problem_response(500))


def install_openapi(app: FastAPI) -> None:
    """Add `add_common_responses` to the app's document (call after the other document customisations)."""
    extend_openapi(app, add_common_responses)
