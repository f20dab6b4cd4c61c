"""The model verbs are `DirectRoute`s on the app's own router: FastAPI's generic request handler is skipped,
and nothing a client or an app configuration can see differs from it. Every answer of the example model's
`:predict`, `:gradients`, `:jacobian` and `:explain` (both paths, 200s and problems with TF Serving's `error`
member) is compared, byte for byte, with the answer the generic handler gives the same request on the same
app (it takes over while a dependency override is set), and the routes' OpenAPI with that of the same routes
in an included `APIRouter`, as they were registered before."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.app import create_app
from service.routes import models
from service.settings import Settings
from tests import direct_answers
from tests.conftest import wait_ready
from tests.direct_answers import Answer, BrokenWorker

PATIENT = [[76.0, 120.0, 37.5]]
JSON = {"content-type": "application/json"}
PATHS = ("/v1/models/diabetes", "/v1/models/diabetes/versions/1")
REQUESTS: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("predict", "instances", json.dumps({"instances": PATIENT}).encode(), JSON),
    ("predict", "columns", json.dumps({"inputs": {"vitals": PATIENT * 3}}).encode(), JSON),
    ("predict", "no content type, as TF Serving's curl calls", json.dumps({"instances": PATIENT}).encode(), {}),
    ("predict", "a wrong shape (422)", json.dumps({"instances": [[1.0, 2.0]]}).encode(), JSON),
    ("predict", "an unknown field (422)", json.dumps({"instances": PATIENT, "extra": 1}).encode(), JSON),
    ("predict", "an unknown signature (422)", json.dumps({"instances": PATIENT, "signature_name": "x"}).encode(), JSON),
    ("predict", "not JSON (400)", b'{"instances": [', JSON),
    (
        "predict",
        "not declared as JSON (415)",
        json.dumps({"instances": PATIENT}).encode(),
        {"content-type": "text/plain"},
    ),
    ("gradients", "class 1", json.dumps({"instances": PATIENT, "class_index": 1}).encode(), JSON),
    ("gradients", "b64", json.dumps({"instances": PATIENT, "response_encoding": "b64"}).encode(), JSON),
    (
        "gradients",
        "a loss, and the variables",
        json.dumps(
            {"instances": PATIENT, "loss": {"kind": "cross_entropy", "labels": [1]}, "sources": ["variables"]}
        ).encode(),
        JSON,
    ),
    ("gradients", "an unknown output (422)", json.dumps({"instances": PATIENT, "output": "x"}).encode(), JSON),
    ("jacobian", "every class", json.dumps({"instances": PATIENT * 2}).encode(), JSON),
    ("jacobian", "class 0", json.dumps({"instances": PATIENT, "class_index": 0}).encode(), JSON),
    ("explain", "integrated gradients", json.dumps({"instances": PATIENT, "steps": 8}).encode(), JSON),
]
ELSEWHERE: list[tuple[str, bytes]] = [
    ("/v1/models/nope:predict", json.dumps({"instances": PATIENT}).encode()),  # 404
    ("/v1/models/diabetes/versions/7:gradients", json.dumps({"instances": PATIENT}).encode()),  # 404
    ("/v1/models/diabetes/versions/0:jacobian", json.dumps({"instances": PATIENT}).encode()),  # 404
    ("/v1/models/diabetes/versions/one:predict", json.dumps({"instances": PATIENT}).encode()),  # 422
]


@pytest.fixture(scope="module")
def app() -> Iterator[FastAPI]:
    app = create_app(Settings(cpu_logical_devices=2, warmup=False))
    with TestClient(app) as client:
        wait_ready(client)
        yield app


def both_ways(
    app: FastAPI, requests: list[tuple[str, bytes, dict[str, str]]], root_path: str = ""
) -> Iterator[tuple[str, Answer, Answer]]:
    """Each request's answer from the direct route and from FastAPI's generic handler on the same app."""
    labelled = [(path, root_path + path, body, headers) for path, body, headers in requests]
    return direct_answers.both_ways(app, labelled, root_path)


def every_request() -> list[tuple[str, bytes, dict[str, str]]]:
    verbs = [(f"{base}:{verb}", body, headers) for base in PATHS for verb, _, body, headers in REQUESTS]
    return verbs + [(path, body, JSON) for path, body in ELSEWHERE]


def test_the_verbs_are_called_directly(app: FastAPI) -> None:
    verbs = [
        route
        for route in app.routes
        if isinstance(route, APIRoute) and route.path.startswith("/v1/models/") and route.methods == {"POST"}
    ]
    assert len(verbs) == 2 * len(models.VERBS)
    assert all(isinstance(route, models.TFServingRoute) and route.direct for route in verbs)


def test_every_answer_is_the_generic_handlers_byte_for_byte(app: FastAPI) -> None:
    statuses = set()
    for path, direct, generic in both_ways(app, every_request()):
        assert direct == generic, path
        statuses.add(direct[0])
        if direct[0] != 200:
            problem = json.loads(direct[2])
            assert problem["error"] == problem["detail"], path  # TF Serving's member, on the direct path too
    assert statuses == {200, 400, 404, 415, 422}


def test_behind_a_root_path_too(app: FastAPI) -> None:
    requests = [(f"{PATHS[1]}:{verb}", body, headers) for verb, _, body, headers in REQUESTS[:8]]
    for path, direct, generic in both_ways(app, requests, root_path="/tapeserve"):
        assert direct == generic, path


def test_an_unexpected_error_is_the_same_500_problem(app: FastAPI) -> None:
    worker = app.state.worker
    app.state.worker = BrokenWorker(worker)
    try:
        answers = list(both_ways(app, [(f"{PATHS[0]}:{verb}", body, JSON) for verb, _, body, _ in REQUESTS[:1]]))
    finally:
        app.state.worker = worker
    for path, direct, generic in answers:
        assert direct == generic, path
        assert direct[0] == 500 and b"secret internal state" not in direct[2]
        assert direct[1]["content-type"] == "application/problem+json"
        problem = json.loads(direct[2])  # a bug's problem is the one handler's, in TF Serving's form on its paths
        assert problem["error"] == problem["detail"] and problem["request_id"]


def test_openapi_is_that_of_the_routes_in_an_included_router() -> None:
    direct, plain = FastAPI(), FastAPI()
    models.install(direct)
    router = APIRouter()
    for path, endpoint, options in models.ROUTES:
        router.add_api_route(path, endpoint, tags=["models"], **options)
    plain.include_router(router)
    assert direct.openapi() == plain.openapi()
    assert json.dumps(direct.openapi()) == json.dumps(plain.openapi())  # the order of the paths too
