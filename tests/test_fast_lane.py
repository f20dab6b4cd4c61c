"""The fast lane for POST /v1/networks/gradients answers exactly as the full FastAPI stack would."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.networks import SEED_REQUEST
from service.app import create_app
from service.http import TapeserveAPI
from service.settings import Settings
from tests.conftest import wait_ready

GRADIENTS = "/v1/networks/gradients"
PLAIN = {key: value for key, value in SEED_REQUEST.items() if key != "include"}

ROWS = 4_000
LARGE = {**PLAIN, "features": [[76.5, 120.5, 37.5]] * ROWS, "labels": [0, 1] * (ROWS // 2)}
# (body bytes, content type): answers, good and bad, that both ways must give byte for byte
CASES: list[tuple[bytes, str]] = [
    (orjson.dumps(SEED_REQUEST), "application/json"),
    (orjson.dumps({**PLAIN, "dtype": "float64", "response_encoding": "b64"}), "application/json"),
    (orjson.dumps({**PLAIN, "features": [[1.0, 2.0, 3.0], [4.0, 5.0]]}), "application/json"),  # ragged
    (orjson.dumps({**PLAIN, "labels": [0, 1]}), "application/json"),  # labels for two samples, one given
    (orjson.dumps({**PLAIN, "layers": []}), "application/json"),
    (orjson.dumps({**PLAIN, "loss": "hinge"}), "application/json"),
    (orjson.dumps({**PLAIN, "layers": [[0.5]]}), "application/json"),  # a non-object where a layer belongs
    (b'{"features": [NaN, 1, 2]}', "application/json"),
    (b'{"features": [1, 2', "application/json"),
    (b"", "application/json"),
    (orjson.dumps(SEED_REQUEST), "text/plain"),
    (orjson.dumps(SEED_REQUEST), ""),
    (orjson.dumps(SEED_REQUEST), "application/problem+json; charset=utf-8"),
    # bodies past 64 KiB, whose arrays the fast lane reads straight into numpy (codec.parse)
    (orjson.dumps(LARGE), "application/json"),
    (orjson.dumps({**LARGE, "labels": None, "targets": [[0.0, 1.0]] * ROWS, "dtype": "float64"}), "application/json"),
    (orjson.dumps({**LARGE, "include": ["input_gradients"], "reduction": "mean"}), "application/json"),
    (orjson.dumps(LARGE).replace(b"[76.5,120.5,37.5]", b"[76.5,120.5]", 1), "application/json"),  # ragged
    (orjson.dumps(LARGE).replace(b"[76.5,120.5,37.5]", b"[76.5,true,37.5]", 1), "application/json"),
    (orjson.dumps({**LARGE, "labels": [0.0] + [1] * (ROWS - 1)}), "application/json"),  # not a class index
    (orjson.dumps({**LARGE, "labels": [[1]] * ROWS}), "application/json"),  # labels of rank 2
    (orjson.dumps({**LARGE, "labels": [2] * ROWS}), "application/json"),  # no such class
    (
        orjson.dumps({**LARGE, "layers": 0}).replace(b'"layers":0', b'"layers":' + b"[" * 1000 + b"]" * 1000),
        "application/json",
    ),
]


def answers(app: TapeserveAPI) -> list[tuple[int, str, Any]]:
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        out = []
        for body, content_type in CASES:
            headers = {"content-type": content_type} if content_type else {}
            response = client.post(GRADIENTS, content=body, headers=headers)
            out.append((response.status_code, response.headers["content-type"], response.content))
        return out


def test_the_fast_lane_answers_as_the_full_stack_does() -> None:
    settings = Settings(cpu_logical_devices=2)
    fast = create_app(settings)
    assert isinstance(fast, TapeserveAPI) and fast.hot_routes
    full = create_app(settings)
    assert isinstance(full, TapeserveAPI)
    full.hot_routes.clear()  # every request through routing, dependencies and FastAPI's validation
    fast_answers, full_answers = answers(fast), answers(full)
    statuses = [200, 200, 422, 422, 422, 422, 422, 400, 400, 422, 415, 415, 200, 200, 200, 200]
    statuses += [422, 422, 422, 422, 422, 422]
    assert [status for status, _, _ in fast_answers] == statuses
    assert fast_answers == full_answers


def test_other_methods_and_a_trailing_slash_go_through_the_router(client: TestClient) -> None:
    assert client.get(GRADIENTS).status_code == 405
    assert client.put(GRADIENTS, json=SEED_REQUEST).status_code == 405
    redirected = client.post(GRADIENTS + "/", json=SEED_REQUEST, follow_redirects=False)
    assert redirected.status_code == 307 and redirected.headers["location"].endswith(GRADIENTS)


def test_an_unexpected_error_in_the_fast_lane_is_a_logged_500_problem(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(cpu_logical_devices=2, warmup=False))
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.INFO):

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("secret internal state")

        app.state.worker.network_gradients = broken
        response = client.post(GRADIENTS, json=SEED_REQUEST, headers={"X-Request-ID": "incident-9"})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == "incident-9" == response.headers["x-request-id"]
    assert "secret internal state" not in response.text
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(record.__dict__.get("request_id") == "incident-9" and record.exc_info for record in errors)
    assert f'tapeserve_http_requests_total{{method="POST",route="{GRADIENTS}",status="500"}} 1.0' in metrics


def test_a_client_that_leaves_mid_body_gets_no_answer_and_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(cpu_logical_devices=2, warmup=False))
    messages = [{"type": "http.request", "body": b'{"features": [', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": GRADIENTS,
        "raw_path": GRADIENTS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))
    assert sent == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
