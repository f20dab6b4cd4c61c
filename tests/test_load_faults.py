"""Load with faults against a real server process (`python -m service serve` on 127.0.0.1).

For a bounded time, concurrent clients send good requests (checked against closed forms), malformed ones,
slow ones (a body trickled in small pieces, a heavy but legal computation) and oversized ones (over a
1 MiB TAPESERVE_MAX_BODY_BYTES, declared and streamed). Every request must get an answer — a 413 may close
the connection after answering, and is counted as answered only if its status line arrived — no answer may
be a 5xx, and the server's resident memory at the end must be within 10% (plus a small slack) of what it
was after a warm phase of the same load.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from schemas.networks import SEED_FEATURES, SEED_WEIGHTS
from tests.live_server import free_port

BODY_LIMIT = 1024 * 1024
WARM_SECONDS = 4.0
LOAD_SECONDS = 10.0
RSS_GROWTH = 0.10
RSS_SLACK = 48 * 1024 * 1024
"""Bytes of growth allowed beyond 10%: allocator arenas and caches settling are not a leak."""
REPO = Path(__file__).resolve().parent.parent

SEED = {"features": SEED_FEATURES, "labels": 1, "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}]}
SEED_TEXT = orjson.dumps(SEED)
TAPE = {
    "inputs": {"x": {"value": [1.0, -2.0, 3.0]}},
    "program": "a = tf.reduce_sum(x * x)",
    "watch": ["x"],
    "compute": [{"kind": "gradient", "target": "a", "sources": ["x"]}],
}
# 1024³ multiply-adds: the most one product may take, tens of milliseconds of the worker's time
HEAVY_TAPE = {"program": "a = tf.ones([1024, 1024]) * 0.001\nb = tf.reduce_sum(a @ a)", "outputs": ["b"]}


def seed_closed_form() -> tuple[float, np.ndarray]:
    """The seed's softmax layer by hand: L = −log a₁ and dL/dW = (a − y) ⊗ x_B."""
    x_b = np.array([*SEED_FEATURES, 1.0])
    z = np.asarray(SEED_WEIGHTS) @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return float(-np.log(a[1])), np.outer(a - [0.0, 1.0], x_b)


SEED_LOSS, SEED_GRADIENT = seed_closed_form()


# ---------------------------------------------------------------------------------------------- the server
@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    host: str
    port: int

    def rss(self) -> int:
        """Resident set size of the server process, in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc status")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    env = {
        **os.environ,
        "TAPESERVE_HOST": "127.0.0.1",
        "TAPESERVE_PORT": str(port),
        "TAPESERVE_MAX_BODY_BYTES": str(BODY_LIMIT),
        "TAPESERVE_MAX_BATCH_REQUESTS": "8",  # a shorter warm-up: merged sizes 2, 4, 8
        "TAPESERVE_LOG_LEVEL": "warning",
        "TAPESERVE_ACCESS_LOG": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log = (tmp_path_factory.mktemp("server") / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, "the server exited during start-up"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.1)
        yield Server(process, base, "127.0.0.1", port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


# ---------------------------------------------------------------------------------------------- the clients
DROPPED = -1
"""The status recorded for a request whose connection ended without a status line."""


@dataclass
class Tally:
    """Statuses per category, from every client thread."""

    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, category: str, status: int, expected: int, note: str = "") -> None:
        with self.lock:
            self.statuses.setdefault(category, Counter())[status] += 1
            if status != expected:
                self.wrong.append(f"{category}: expected {expected}, got {status} {note}"[:300])

    def total(self, category: str) -> int:
        return sum(self.statuses.get(category, Counter()).values())


def raw_exchange(server: Server, head: bytes, body_parts: Iterator[bytes], pause: float = 0.0) -> int:
    """Send a request over a raw socket, piece by piece, reading as soon as the server answers.

    Returns the status, or DROPPED when the connection ended without a status line. A server that answers
    before the body is complete (413) may then close the connection; the answer counts if it arrived.
    """
    with socket.create_connection((server.host, server.port), timeout=30) as connection:
        received = b""
        try:
            connection.sendall(head)
            for part in body_parts:
                connection.sendall(part)
                if pause:
                    time.sleep(pause)
                connection.setblocking(False)
                try:
                    chunk = connection.recv(65536)
                    received += chunk
                    if not chunk or b"\r\n" in received:
                        break
                except BlockingIOError:
                    pass
                finally:
                    connection.setblocking(True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: its answer may already be waiting
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            while b"\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                received += chunk
        if not received.startswith(b"HTTP/1.1 "):
            return DROPPED
        return int(received.split(b" ", 2)[1])


def good(client: httpx.Client, tally: Tally, turn: int) -> None:
    kind = turn % 4
    if kind == 0:
        response = client.post("/v1/networks/gradients", json=SEED)
        ok = response.status_code == 200 and abs(response.json()["loss"]["values"] - SEED_LOSS) < 1e-5 * SEED_LOSS
        if ok:
            got = np.asarray(response.json()["gradients"][0]["weights"]["values"])
            ok = bool(np.allclose(got, SEED_GRADIENT, rtol=1e-4, atol=1e-5))
        tally.record("good", response.status_code if ok else 0, 200, response.text[:200])
    elif kind == 1:
        response = client.post("/v1/tape", json=TAPE)
        ok = response.status_code == 200 and response.json()["results"][0]["values"][0]["values"] == [2.0, -4.0, 6.0]
        tally.record("good", response.status_code if ok else 0, 200, response.text[:200])
    elif kind == 2:
        response = client.post("/v1/activations", json={"activations": ["relu"], "z": [-1.0, 0.5, 2.0]})
        ok = response.status_code == 200 and response.json()["activations"][0]["gradients"]["values"] == [0, 1, 1]
        tally.record("good", response.status_code if ok else 0, 200, response.text[:200])
    else:
        response = client.get("/healthz")
        tally.record("good", response.status_code, 200)


BAD: list[tuple[str, str, bytes | None, str | None, int]] = [
    ("POST", "/v1/networks/gradients", SEED_TEXT.replace(b"76.0", b"NaN"), "application/json", 400),
    ("POST", "/v1/networks/gradients", SEED_TEXT, "text/plain", 415),
    ("POST", "/v1/tape", b'{"program": "import os"}', "application/json", 422),
    ("POST", "/v1/networks/gradients", orjson.dumps({**SEED, "features": [[1, 2], [3]]}), "application/json", 422),
    ("GET", "/v1/networks/gradients", None, None, 405),
    ("POST", "/v1/activations", b'{"grid": {"num": 1000000000}}', "application/json", 422),
    ("POST", "/v1/gradient-check", b"[]", "application/json", 422),
    ("GET", "/v1/activations/plot.png?start=1e300", None, None, 422),
]


def bad(client: httpx.Client, tally: Tally, turn: int) -> None:
    method, path, body, content_type, expected = BAD[turn % len(BAD)]
    headers = {"content-type": content_type} if content_type else {}
    response = client.request(method, path, content=body, headers=headers)
    is_problem = response.headers.get("content-type") == "application/problem+json"
    tally.record("bad", response.status_code if is_problem else 0, expected, response.text[:200])


def slow(server: Server, client: httpx.Client, tally: Tally, turn: int) -> None:
    if turn % 2 == 0:
        # a client that trickles a good body in 32-byte pieces over about a second
        head = (
            b"POST /v1/networks/gradients HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(SEED_TEXT)).encode() + b"\r\n\r\n"
        )
        pieces = (SEED_TEXT[i : i + 32] for i in range(0, len(SEED_TEXT), 32))
        tally.record("slow", raw_exchange(server, head, pieces, pause=1.0 / (len(SEED_TEXT) / 32)), 200)
    else:
        response = client.post("/v1/tape", json=HEAVY_TAPE)
        ok = response.status_code == 200 and response.json()["values"]["b"]["values"] == pytest.approx(
            1024**3 * 1e-6, rel=1e-4
        )
        tally.record("slow", response.status_code if ok else 0, 200, response.text[:200])


def oversized(server: Server, client: httpx.Client, tally: Tally, turn: int) -> None:
    size = 2 * BODY_LIMIT
    piece = b'"' + b"x" * 65534 + b'"'
    if turn % 2 == 0:
        head = (
            b"POST /v1/networks/gradients HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(size).encode() + b"\r\n\r\n"
        )
        tally.record("oversized", raw_exchange(server, head, iter([piece] * (size // len(piece)))), 413)
    else:
        head = (
            b"POST /v1/tape HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        tally.record("oversized", raw_exchange(server, head, iter([frame] * (size // len(piece)))), 413)


def hold_load(server: Server, seconds: float, tally: Tally) -> None:
    """Run every kind of client concurrently until `seconds` have passed."""
    stop_at = time.monotonic() + seconds

    def client_loop(act: Callable[[httpx.Client, int], None]) -> None:
        with httpx.Client(base_url=server.base, timeout=60) as client:
            turn = 0
            while time.monotonic() < stop_at:
                try:
                    act(client, turn)
                except httpx.TransportError as error:
                    tally.record("transport", DROPPED, 0, repr(error))
                turn += 1

    clients: list[Callable[[httpx.Client, int], None]] = [
        *[lambda c, t: good(c, tally, t)] * 4,
        *[lambda c, t: bad(c, tally, t)] * 3,
        *[lambda c, t: slow(server, c, tally, t)] * 2,
        *[lambda c, t: oversized(server, c, tally, t)] * 2,
    ]
    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        for outcome in [pool.submit(client_loop, act) for act in clients]:
            outcome.result()


def test_load_with_faults_is_answered_without_5xx_and_memory_stays_flat(server: Server) -> None:
    warm = Tally()
    hold_load(server, WARM_SECONDS, warm)
    assert not warm.wrong, warm.wrong[:10]
    rss_warm = server.rss()

    tally = Tally()
    hold_load(server, LOAD_SECONDS, tally)
    rss_end = server.rss()

    summary = {category: dict(sorted(counts.items())) for category, counts in sorted(tally.statuses.items())}
    assert not tally.wrong, (tally.wrong[:10], summary)
    for category in ("good", "bad", "slow", "oversized"):
        assert tally.total(category) >= 4, summary
    every_status = Counter[int]()
    for counts in tally.statuses.values():
        every_status.update(counts)
    assert DROPPED not in every_status, summary
    assert all(status < 500 for status in every_status), summary
    assert rss_end <= rss_warm * (1 + RSS_GROWTH) + RSS_SLACK, (rss_warm, rss_end)

    # the service answers the seed correctly once the storm is over
    response = httpx.post(server.base + "/v1/networks/gradients", json=SEED, timeout=30)
    assert response.status_code == 200
    assert response.json()["loss"]["values"] == pytest.approx(SEED_LOSS, rel=1e-5)
    print(f"load held: {summary}; RSS after warm-up {rss_warm / 2**20:.0f} MiB, at the end {rss_end / 2**20:.0f} MiB")
