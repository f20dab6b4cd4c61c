"""The networks route is a `DirectRoute`: FastAPI's generic request handler is skipped, and nothing a client
or an app configuration can see differs from it. Every answer is compared, byte for byte, with the answer
the generic handler gives the same request on the same app (it takes over while a dependency override is
set), and the route's OpenAPI with that of a plain `APIRoute`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from schemas.networks import SEED_REQUEST
from service.app import create_app
from service.deps import get_worker
from service.http import DirectRoute
from service.routes import networks
from service.settings import Settings
from tests import direct_answers
from tests.conftest import wait_ready
from tests.direct_answers import Answer, BrokenWorker, Delegate, answer

GRADIENTS = "/v1/networks/gradients"
PLAIN = {key: value for key, value in SEED_REQUEST.items() if key != "include"}
JSON = {"content-type": "application/json"}
REQUESTS: list[tuple[str, bytes, dict[str, str]]] = [
    ("seed with every include", json.dumps(SEED_REQUEST).encode(), JSON),
    ("seed", json.dumps(PLAIN).encode(), JSON),
    ("b64 answer", json.dumps({**PLAIN, "response_encoding": "b64"}).encode(), JSON),
    ("labels and features disagree (422)", json.dumps({**PLAIN, "labels": [0, 1]}).encode(), JSON),
    ("a field of the wrong type (422)", json.dumps({**PLAIN, "layers": "dense"}).encode(), JSON),
    ("not JSON (400)", b'{"features": [', JSON),
    ("an empty body (400)", b"", JSON),
    ("not declared as JSON (415)", json.dumps(PLAIN).encode(), {"content-type": "text/plain"}),
]


@pytest.fixture(scope="module")
def app() -> Iterator[FastAPI]:
    app = create_app(Settings(cpu_logical_devices=2))
    with TestClient(app) as client:
        wait_ready(client)
        yield app


def both_ways(app: FastAPI, path: str, root_path: str = "") -> Iterator[tuple[str, Answer, Answer]]:
    """Each request's answer from the direct route and from FastAPI's generic handler on the same app."""
    return direct_answers.both_ways(app, [(name, path, body, headers) for name, body, headers in REQUESTS], root_path)


def test_the_networks_route_is_called_directly(app: FastAPI) -> None:
    route = next(route for route in app.routes if getattr(route, "path", None) == GRADIENTS)
    assert isinstance(route, DirectRoute) and route.direct


def test_every_answer_is_the_generic_handlers_byte_for_byte(app: FastAPI) -> None:
    statuses = set()
    for name, direct, generic in both_ways(app, GRADIENTS):
        assert direct == generic, name
        statuses.add(direct[0])
    assert statuses == {200, 400, 415, 422}


def test_behind_a_root_path_too(app: FastAPI) -> None:
    plain = TestClient(app)
    for (name, direct, generic), (_, body, headers) in zip(
        both_ways(app, "/tapeserve" + GRADIENTS, root_path="/tapeserve"), REQUESTS, strict=True
    ):
        assert direct == generic, name
        # the answer (problems included) does not depend on where a proxy mounts the service
        assert direct[2] == answer(plain, GRADIENTS, body, headers)[2], name


def test_an_unexpected_error_is_the_same_500_problem(app: FastAPI) -> None:
    worker = app.state.worker
    app.state.worker = BrokenWorker(worker)
    try:
        answers = list(both_ways(app, GRADIENTS))
    finally:
        app.state.worker = worker
    for name, direct, generic in answers:
        assert direct == generic, name
    assert answers[0][1][0] == 500 and b"secret internal state" not in answers[0][1][2]
    assert answers[0][1][1]["content-type"] == "application/problem+json"


def test_dependency_overrides_are_honoured(app: FastAPI) -> None:
    """An override set after start-up, as tests set them, is called for every request while it is set."""
    client = TestClient(app)
    delegate = Delegate()
    app.dependency_overrides[get_worker] = delegate
    try:
        for _ in range(3):
            assert client.post(GRADIENTS, json=PLAIN).status_code == 200
    finally:
        app.dependency_overrides.clear()
    assert delegate.calls == 3
    assert client.post(GRADIENTS, json=PLAIN).status_code == 200
    assert delegate.calls == 3


def test_openapi_is_that_of_an_ordinary_route() -> None:
    direct, plain = FastAPI(), FastAPI()
    networks.install(direct)
    networks.install(plain, route_class=APIRoute)
    assert isinstance(direct.routes[-1], DirectRoute) and type(plain.routes[-1]) is APIRoute
    assert direct.openapi() == plain.openapi()


def test_endpoints_of_other_shapes_keep_fastapis_handler() -> None:
    async def with_a_query(request: Request, limit: int) -> Response:
        return JSONResponse({"limit": limit})

    async def answering_a_document(request: Request) -> dict[str, str]:
        return {"status": "ok"}

    async def with_route_dependencies(request: Request) -> Response:
        return JSONResponse({"route": "dependencies"})

    seen: list[str] = []

    async def route_dependency(request: Request) -> None:
        seen.append(request.url.path)

    app = FastAPI()
    app.router.add_api_route("/q", with_a_query, route_class_override=DirectRoute)
    app.router.add_api_route("/d", answering_a_document, route_class_override=DirectRoute)
    app.router.add_api_route(
        "/r", with_route_dependencies, route_class_override=DirectRoute, dependencies=[Depends(route_dependency)]
    )
    assert [getattr(route, "direct", None) for route in app.routes[-3:]] == [False, False, False]
    client = TestClient(app)
    assert client.get("/q", params={"limit": 3}).json() == {"limit": 3}
    assert client.get("/q").status_code == 422
    assert client.get("/d").json() == {"status": "ok"}
    assert client.get("/r").json() == {"route": "dependencies"} and seen == ["/r"]
