"""The real command: `tapeserve serve` starts, becomes ready, serves the seed sample on its pinned device."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest

from schemas.networks import SEED_REQUEST
from tests.live_server import free_port


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, float, int]]:
    log_path = tmp_path_factory.mktemp("server") / "stderr.log"
    port = free_port()
    env = {
        **os.environ,
        "TAPESERVE_PORT": str(port),
        "TAPESERVE_DEVICE": "/CPU:1",
        "TAPESERVE_CPU_LOGICAL_DEVICES": "2",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    started = time.monotonic()
    log = log_path.open("wb")
    process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    ready_after = None
    try:
        while time.monotonic() - started < 60:
            if process.poll() is not None:
                raise AssertionError(log_path.read_text())
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    ready_after = time.monotonic() - started
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        assert ready_after is not None, "server never became ready"
        yield base, ready_after, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_serves_seed_sample_on_the_pinned_device(server: tuple[str, float, int]) -> None:
    base, ready_after, _ = server
    assert ready_after < 30
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    response = httpx.post(base + "/v1/networks/gradients", json=SEED_REQUEST)
    assert response.status_code == 200
    assert response.json()["device"] == "/job:localhost/replica:0/task:0/device:CPU:1"
    assert response.headers["x-request-id"]


def test_info_reports_versions_devices_and_limits(server: tuple[str, float, int]) -> None:
    info = httpx.get(server[0] + "/v1/info").json()
    assert info["device"].endswith("CPU:1") and info["ready"] is True
    assert sum(":CPU:" in name for name in info["visible_devices"]) == 2
    assert info["tensorflow"].startswith("2.") and info["limits"]["max_elements"] == 4_194_304
    assert info["function_cache"]["traces"] >= 1  # the warm-up traced the seed network


def test_request_id_is_echoed(server: tuple[str, float, int]) -> None:
    response = httpx.get(server[0] + "/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"


def minor_faults(pid: int) -> int:
    """The process's minor page faults so far (field 10 of /proc/PID/stat, counted after the command's name)."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[7])


def test_a_large_request_reuses_the_heap_instead_of_fresh_pages(server: tuple[str, float, int]) -> None:
    base, _, pid = server
    vitals = np.random.default_rng(0).normal(size=(65_536, 3)) * [8.0, 15.0, 0.5] + [70.0, 120.0, 37.0]
    body = orjson.dumps({"instances": vitals.tolist(), "class_index": 1})  # 3.9 MB: ~950 pages of body alone
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=base, timeout=120) as client:

        def post() -> None:
            assert client.post("/v1/models/diabetes:gradients", content=body, headers=headers).status_code == 200

        post()  # the batch's first call compiles, and the heap grows to what such a request needs
        post()
        before = minor_faults(pid)
        for _ in range(3):
            post()
        per_request = (minor_faults(pid) - before) / 3
    assert per_request < 400  # glibc's defaults: ~3,300 fresh pages a request


def test_absent_gpu_refuses_to_start() -> None:
    env = {
        **os.environ,
        "TAPESERVE_PORT": str(free_port()),
        "TAPESERVE_DEVICE": "gpu",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve"], env=env, capture_output=True, timeout=120, check=False
    )
    assert result.returncode != 0
    assert b"TAPESERVE_DEVICE_FALLBACK" in result.stderr
