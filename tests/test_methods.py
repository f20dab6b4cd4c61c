"""RFC 9110's method rules on every path of the live document: `HEAD` answers as `GET` does, without the
body, and a 405 lists in `Allow` every method its path serves (checked too by schemathesis in test_fuzz)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.errors import PROBLEM_JSON

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
UNDOCUMENTED_PAGES = {"/docs": {"GET"}, "/redoc": {"GET"}, "/docs/oauth2-redirect": {"GET"}}


@pytest.fixture(scope="module")
def paths(client: TestClient) -> dict[str, set[str]]:
    """Every concrete path (no templated parameters) with the methods its document declares."""
    document: dict[str, Any] = client.get("/openapi.json").json()
    found = {
        path: {method.upper() for method in operations if method.upper() in HTTP_METHODS}
        for path, operations in document["paths"].items()
        if "{" not in path
    }
    return {**found, "/openapi.json": {"GET"}, **UNDOCUMENTED_PAGES}


def test_a_405_lists_every_method_of_its_path(client: TestClient, paths: dict[str, set[str]]) -> None:
    assert {"GET", "POST"} <= paths["/v1/activations"]  # a path served by two routes, the case that went wrong
    for path, declared in paths.items():
        expected = ", ".join(sorted(declared | ({"HEAD"} if "GET" in declared else set())))
        for method in sorted(set(HTTP_METHODS) - declared):
            response = client.request(method, path)
            assert response.status_code == 405, (method, path, response.status_code)
            assert response.headers["allow"] == expected, (method, path)
            assert response.headers["content-type"] == PROBLEM_JSON
            assert response.json()["status"] == 405


def test_static_assets_allow_get_and_head(client: TestClient) -> None:
    response = client.post("/docs/assets/favicon.png")
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"


def test_head_answers_wherever_get_does(client: TestClient, paths: dict[str, set[str]]) -> None:
    heads = 0
    for path, declared in [*paths.items(), ("/docs/assets/favicon.png", {"GET"})]:
        if "GET" not in declared:
            head = client.head(path)
            assert head.status_code == 405 and head.content == b"", path
            continue
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        if path != "/metrics":  # the metrics text grows with every request, this HEAD's included
            assert int(head.headers["content-length"]) == len(get.content), path
        heads += 1
    assert heads >= 8, heads


def test_head_of_an_unknown_path_is_a_404_without_a_body(client: TestClient) -> None:
    response = client.head("/v1/nothing-here")
    assert response.status_code == 404 and response.content == b""
    assert response.headers["content-type"] == PROBLEM_JSON
