"""Graceful drain of one real `tapeserve serve` process on SIGTERM (service/drain.py), seen from its clients:
`/readyz` turns 503 `draining` at once; for the grace period new connections are still accepted and answered;
then the listener closes, and requests still in flight — queued computations and a body still trickling in —
are answered correctly before the process exits 0."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from tests.faults.harness import HOST, Replica, free_port
from tests.faults.traffic import network_call

GRACE_S = 2.0
SEED = network_call(0)
# three 1024×1024 products, about as much as one program may do (tens of milliseconds each here); a @ a = a,
# whose entries are 1/1024 exactly, so the sum is 1024
HEAVY_TAPE = {
    "program": "a = tf.ones([1024, 1024]) / 1024.0\nb = a @ a\nc = b @ a\ns = tf.reduce_sum(c @ a)",
    "outputs": ["s"],
}


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[Replica]:
    env = {
        "TAPESERVE_DRAIN_GRACE_S": str(GRACE_S),
        "TAPESERVE_MAX_BATCH_REQUESTS": "8",
        "TAPESERVE_ACCESS_LOG": "false",
    }
    serving = Replica("drained", free_port(), env, tmp_path)
    serving.start()
    try:
        serving.wait_ready()
        yield serving
    finally:
        serving.stop()


def trickled_seed(port: int, seconds: float) -> tuple[int, bytes]:
    """The seed request, its body sent in pieces over `seconds`; (status, body) of the answer."""
    head = SEED.head + b"Connection: close\r\n\r\n"
    with socket.create_connection((HOST, port), timeout=30) as connection:
        connection.sendall(head)
        pieces = [SEED.body[i : i + 8] for i in range(0, len(SEED.body), 8)]
        for piece in pieces:
            time.sleep(seconds / len(pieces))
            connection.sendall(piece)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    header, _, body = received.partition(b"\r\n\r\n")
    return int(header.split(b" ", 2)[1]), body


def refused(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, port)) != 0


def test_sigterm_drains_then_exits_0(replica: Replica) -> None:
    base = f"http://{HOST}:{replica.port}"
    with httpx.Client(base_url=base, timeout=30) as kept, ThreadPoolExecutor(max_workers=12) as pool:
        assert kept.get("/readyz").json() == {"status": "ready"}  # a keep-alive connection opened before
        sigterm = time.monotonic()
        replica.terminate()
        time.sleep(0.2)
        readiness = httpx.get(base + "/readyz", timeout=5)
        assert (readiness.status_code, readiness.json()) == (503, {"status": "draining"})
        assert readiness.headers["retry-after"] == "1"

        # the grace period: the old connection and new ones are served as usual
        answer = kept.post("/v1/networks/gradients", content=SEED.body, headers={"content-type": "application/json"})
        assert answer.status_code == 200 and SEED.check(answer.json())
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200

        # just before the listener closes: a body that will still be arriving, and computations queued behind
        # one another, all of them in flight when it does
        time.sleep(max(sigterm + GRACE_S - 0.6 - time.monotonic(), 0))
        trickle: Future[tuple[int, bytes]] = pool.submit(trickled_seed, replica.port, 1.5)
        heavy = [pool.submit(httpx.post, base + "/v1/tape", json=HEAVY_TAPE, timeout=60) for _ in range(10)]
        time.sleep(max(sigterm + GRACE_S + 0.4 - time.monotonic(), 0))
        assert refused(replica.port), "the listener is still open after the grace period"
        assert not trickle.done()

        status, body = trickle.result(timeout=60)
        assert status == 200 and SEED.check(orjson.loads(body))
        for future in heavy:
            response = future.result(timeout=60)
            assert response.status_code == 200, response.text
            assert response.json()["values"]["s"]["values"] == pytest.approx(1024.0, rel=1e-5)
    assert replica.wait_exit(timeout=60) == 0
    log = replica.log_tail(200)
    assert "SIGTERM: /readyz answers 503" in log and "the listener closes" in log


def test_a_second_sigterm_ends_the_grace_period(tmp_path: Path) -> None:
    env = {"TAPESERVE_DRAIN_GRACE_S": "60", "TAPESERVE_WARMUP": "false", "TAPESERVE_ACCESS_LOG": "false"}
    replica = Replica("twice", free_port(), env, tmp_path)
    replica.start()
    try:
        replica.wait_ready()
        replica.terminate()
        time.sleep(0.5)
        assert httpx.get(f"http://{HOST}:{replica.port}/readyz", timeout=5).json() == {"status": "draining"}
        second = time.monotonic()
        replica.terminate()
        assert replica.wait_exit(timeout=30) == 0
        assert time.monotonic() - second < 10
    finally:
        with contextlib.suppress(Exception):
            replica.stop()


def test_draining_wins_over_starting(tmp_path: Path) -> None:
    # SIGTERM while the worker is still warming up: /readyz says draining, not starting, and the process exits 0
    env = {"TAPESERVE_DRAIN_GRACE_S": "30"}
    replica = Replica("early", free_port(), env, tmp_path)
    replica.start()
    seen: list[dict[str, str]] = []
    try:
        deadline = time.monotonic() + 120
        while not seen and time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                response = httpx.get(f"http://{HOST}:{replica.port}/readyz", timeout=2)
                seen.append(response.json())
            time.sleep(0.01)
        replica.terminate()
        time.sleep(0.3)
        assert httpx.get(f"http://{HOST}:{replica.port}/readyz", timeout=5).json() == {"status": "draining"}
        replica.terminate()
        assert replica.wait_exit(timeout=60) == 0
    finally:
        replica.stop()
    assert seen and seen[0]["status"] in {"starting", "ready"}
