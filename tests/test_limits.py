"""Limits and overload: nesting depth, body size (declared and streamed, over a real server), 429 and 504.

Every case ends by checking the service still answers the seed request with the right numbers.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.networks import SEED_FEATURES, SEED_REQUEST, SEED_WEIGHTS
from service.worker import Worker
from tests.blocking import BlockedWorker, wait_until
from tests.conftest import make_client
from tests.live_server import live_server

PROBLEM_JSON = "application/problem+json"
SMALL_LIMIT = 64 * 1024
Answer = httpx.Response | httpx2.Response  # the TestClient answers with httpx2


def seed_closed_form() -> tuple[float, np.ndarray]:
    """Loss and dL/dW of the seed's softmax layer: CE = −log a₁, dL/dW = (a − y) x_Bᵀ."""
    x_b = np.array([*SEED_FEATURES, 1.0])
    z = np.asarray(SEED_WEIGHTS) @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    y = np.array([0.0, 1.0])
    return float(-np.log(a[1])), np.outer(a - y, x_b)


def assert_seed_answered(response: Answer) -> None:
    assert response.status_code == 200, response.text
    loss, gradient = seed_closed_form()
    document = response.json()
    assert document["loss"]["values"] == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(document["gradients"][0]["weights"]["values"], gradient, rtol=1e-4, atol=1e-6)


def assert_problem(response: Answer, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].endswith("/" + slug)
    assert "Traceback" not in response.text
    return problem


# ------------------------------------------------------------------------------------------------ nesting depth
def nested(depth: int, leaf: str = "1") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


def with_features(raw_features: bytes) -> bytes:
    body = orjson.dumps({**SEED_REQUEST, "features": "FEATURES"})
    return body.replace(b'"FEATURES"', raw_features)


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        (nested(20_000), 400, "malformed-json"),
        (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 400, "malformed-json"),
        (with_features(nested(20_000)), 400, "malformed-json"),
        (with_features(nested(1_000)), 422, "validation"),
        (with_features(nested(9, "[1.0, 2.0]")), 422, "validation"),
    ],
    ids=["array-20000", "object-20000", "features-20000", "features-1000", "features-rank-10"],
)
def test_deep_nesting_is_a_client_error_not_a_crash(client: TestClient, body: bytes, status: int, slug: str) -> None:
    response = client.post("/v1/networks/gradients", content=body, headers={"content-type": "application/json"})
    assert_problem(response, status, slug)
    assert_seed_answered(client.post("/v1/networks/gradients", json=SEED_REQUEST))


def test_deep_nesting_reports_where(client: TestClient) -> None:
    response = client.post(
        "/v1/networks/gradients",
        content=with_features(nested(1_000)),
        headers={"content-type": "application/json"},
    )
    problem = assert_problem(response, 422, "validation")
    assert problem["errors"][0]["loc"][:2] == ["body", "features"]


# ------------------------------------------------------------------------------------------------ body size
@pytest.fixture(scope="module")
def small_limit_server() -> Iterator[str]:
    with live_server(max_body_bytes=SMALL_LIMIT) as base:
        yield base


def read_response(connection: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from a raw socket."""
    connection.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"connection closed without a complete answer; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    while len(body) < int(headers["content-length"]):
        chunk = connection.recv(65536)
        assert chunk, "connection closed in the middle of the answer"
        body += chunk
    return int(status_line.split()[1]), headers, body


def connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def test_declared_huge_body_is_answered_413_before_any_of_it_is_sent(small_limit_server: str) -> None:
    with connect(small_limit_server) as connection:
        connection.sendall(
            b"POST /v1/networks/gradients HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 68719476736\r\n\r\n"
        )
        status, headers, body = read_response(connection)
    assert status == 413
    assert headers["content-type"] == PROBLEM_JSON
    problem = orjson.loads(body)
    assert problem["status"] == 413 and "68,719,476,736" in problem["detail"]
    assert headers["x-request-id"]
    assert_seed_answered(httpx.post(small_limit_server + "/v1/networks/gradients", json=SEED_REQUEST))


def test_chunked_body_is_cut_off_at_the_limit_while_streaming(small_limit_server: str) -> None:
    chunk = b"[" + b"1.0," * 4095 + b"1.0]"  # 16 KiB of valid JSON text, sent without a Content-Length
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    planned = 64 * 1024 * 1024
    sent = 0
    with connect(small_limit_server) as connection:
        connection.sendall(
            b"POST /v1/networks/gradients HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        connection.setblocking(False)
        answered = False
        while sent < planned and not answered:
            try:
                connection.send(frame)
                sent += len(chunk)
            except BlockingIOError:
                time.sleep(0.001)
            with contextlib.suppress(BlockingIOError):
                answered = bool(connection.recv(1, socket.MSG_PEEK))
        connection.setblocking(True)
        status, headers, body = read_response(connection)
    assert status == 413
    assert headers["content-type"] == PROBLEM_JSON
    assert orjson.loads(body)["status"] == 413
    # the answer came while the client was still sending, long before the 64 MiB it meant to send
    assert sent < planned // 4
    assert_seed_answered(httpx.post(small_limit_server + "/v1/networks/gradients", json=SEED_REQUEST))


def test_streaming_client_gets_its_413(small_limit_server: str) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"features": ['
        for _ in range(4 * 1024):
            yield b"1.0," * 255 + b"1.0,"
        yield b"1.0]}"

    response = httpx.post(
        small_limit_server + "/v1/networks/gradients",
        content=body(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert_problem(response, 413, "payload-too-large")


def test_declared_body_over_the_limit_is_answered_413(small_limit_server: str) -> None:
    oversized = orjson.dumps({**SEED_REQUEST, "padding": "x" * SMALL_LIMIT})
    response = httpx.post(
        small_limit_server + "/v1/networks/gradients", content=oversized, headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "payload-too-large")
    assert_seed_answered(httpx.post(small_limit_server + "/v1/networks/gradients", json=SEED_REQUEST))


# ------------------------------------------------------------------------------------------------ 429 and 504
def test_full_queue_is_429_with_retry_after_then_serves_again() -> None:
    with make_client(queue_limit=1, batch_window_ms=0) as client:
        blocked = BlockedWorker(client)
        blocked.occupy()
        blocked.enqueue(depth=1)
        response = client.post("/v1/networks/gradients", json=SEED_REQUEST)
        assert_problem(response, 429, "queue-full")
        assert int(response.headers["retry-after"]) >= 1
        assert client.get("/healthz").status_code == 200  # the event loop is not the one waiting
        blocked.release.set()
        wait_until(lambda: blocked.worker.queue_depth == 0)
        assert_seed_answered(client.post("/v1/networks/gradients", json=SEED_REQUEST))


def test_deadline_passing_in_the_queue_is_504_and_the_job_is_never_run() -> None:
    with make_client(timeout_s=0.5, batch_window_ms=0) as client:
        blocked = BlockedWorker(client)
        blocked.occupy()
        jobs_before = blocked.worker.stats.jobs
        started = time.monotonic()
        response = client.post("/v1/networks/gradients", json=SEED_REQUEST)
        elapsed = time.monotonic() - started
        assert_problem(response, 504, "deadline-exceeded")
        assert "retry-after" not in response.headers
        assert 0.4 < elapsed < 3.0
        blocked.release.set()
        assert_seed_answered(client.post("/v1/networks/gradients", json=SEED_REQUEST))
        assert blocked.worker.stats.jobs == jobs_before + 1  # the second seed request only: the first was dropped


def deep_network(depth: int = 64, width: int = 4) -> dict[str, Any]:
    """Cheap to send, slow to compile the first time: 64 layers are traced into one function."""
    return {
        "features": [0.5] * width,
        "labels": 0,
        "layers": [{"weights": [[0.01] * (width + 1)] * width, "activation": "tanh"}] * depth,
    }


def test_long_computation_is_504_at_the_deadline_and_finishes_in_the_background() -> None:
    with make_client(timeout_s=0.25, batch_window_ms=0) as client:
        worker: Worker = client.app.state.worker  # type: ignore[attr-defined]
        wait_until(lambda: worker.ready, seconds=60)  # a job queued behind the warm-up would expire unrun
        traces_before = worker.engine_stats()["networks"]["traces"]
        started = time.monotonic()
        response = client.post("/v1/networks/gradients", json=deep_network())
        elapsed = time.monotonic() - started
        assert_problem(response, 504, "deadline-exceeded")
        assert "retry-after" not in response.headers
        assert elapsed < 1.5
        # the abandoned computation runs to its end in the worker; the service then answers normally again
        deadline = time.monotonic() + 60
        while True:
            answer = client.post("/v1/networks/gradients", json=SEED_REQUEST)
            if answer.status_code == 200:
                break
            assert_problem(answer, 504, "deadline-exceeded")
            assert time.monotonic() < deadline, "the service never recovered"
            time.sleep(0.1)
        assert_seed_answered(answer)
        assert worker.engine_stats()["networks"]["traces"] == traces_before + 1
