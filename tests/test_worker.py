"""The worker: device pinning, bounded queue, deadlines, draining, merging."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Sequence

import pytest

from schemas.networks import SEED_REQUEST
from service.errors import DeadlineExceeded, QueueFull
from service.settings import Settings
from service.worker import DeviceUnavailable, Worker, resolve_device
from tests.conftest import make_client
from tests.engines import MERGING, Merged, with_calls


def test_pinning_to_second_logical_cpu_is_reported() -> None:
    with make_client(device="/CPU:1") as client:
        assert client.get("/v1/info").json()["device"].endswith("device:CPU:1")
        response = client.post("/v1/networks/gradients", json=SEED_REQUEST)
        assert response.status_code == 200
        assert response.json()["device"] == "/job:localhost/replica:0/task:0/device:CPU:1"


def test_device_names() -> None:
    assert resolve_device("cpu", "none", 2)[0].endswith("CPU:0")
    assert resolve_device("auto", "none", 2)[0].endswith("CPU:0")  # no GPU on the test machines
    assert resolve_device("/device:CPU:1", "none", 2)[0].endswith("CPU:1")
    pinned, visible = resolve_device("cpu:1", "none", 2)
    assert pinned.endswith("CPU:1") and len([name for name in visible if "CPU" in name]) == 2


def test_absent_gpu_fails_start_unless_fallback() -> None:
    with pytest.raises(DeviceUnavailable, match="TAPESERVE_DEVICE_FALLBACK"):
        resolve_device("gpu", "none", 2)
    with pytest.raises(DeviceUnavailable):
        resolve_device("gpu:3", "none", 2)
    assert resolve_device("gpu", "cpu", 2)[0].endswith("CPU:0")
    with pytest.raises(DeviceUnavailable), make_client(device="gpu"):
        pass


async def started(**overrides: object) -> Worker:
    worker = with_calls(Worker(Settings(warmup=False, **overrides)))  # type: ignore[arg-type]
    worker.register("merging", MERGING)
    await worker.start()
    return worker


def test_full_queue_answers_429_with_retry_after() -> None:
    async def scenario() -> None:
        worker = await started(queue_limit=1)
        release = threading.Event()
        busy = asyncio.ensure_future(worker.run("calls", release.wait))
        await asyncio.sleep(0.05)  # the worker is now inside release.wait
        queued = asyncio.ensure_future(worker.run("calls", lambda: "second"))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as caught:
            await worker.run("calls", lambda: "third")
        assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
        release.set()
        assert await busy is True and await queued == "second"
        await worker.stop()

    asyncio.run(scenario())


def test_deadline_answers_504_and_drops_expired_jobs() -> None:
    ran: list[str] = []

    async def scenario() -> None:
        worker = await started(timeout_s=0.2)
        slow = asyncio.ensure_future(worker.run("calls", functools.partial(time.sleep, 0.6)))
        await asyncio.sleep(0.01)
        behind = asyncio.ensure_future(worker.run("calls", functools.partial(ran.append, "ran")))
        started_at = time.monotonic()
        for future in (slow, behind):
            with pytest.raises(DeadlineExceeded) as caught:
                await future
            assert caught.value.status == 504
        assert time.monotonic() - started_at < 0.5  # answered at the deadline, not when the work ended
        await asyncio.sleep(0.6)
        assert worker.stats.dropped_expired == 0 or ran == []
        assert await worker.run("calls", lambda: "healthy") == "healthy"
        await worker.stop()

    asyncio.run(scenario())
    assert ran == []  # the job whose deadline passed in the queue never ran


def test_stop_drains_queued_jobs() -> None:
    async def scenario() -> list[int]:
        worker = await started()
        futures = [asyncio.ensure_future(worker.run("calls", lambda i=i: i)) for i in range(20)]
        await asyncio.sleep(0)
        results = await asyncio.gather(*futures)
        await worker.stop()
        return list(results)

    assert asyncio.run(scenario()) == list(range(20))


def test_compatible_jobs_queued_together_are_merged() -> None:
    calls: list[Sequence[int]] = []

    def merged(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        return [item * 10 for item in items]

    async def scenario() -> list[int]:
        worker = await started(batch_window_ms=5.0)
        release = threading.Event()
        blocker = asyncio.ensure_future(worker.run("calls", release.wait))
        await asyncio.sleep(0.05)
        futures = [asyncio.ensure_future(worker.run("merging", Merged("k", i, merged))) for i in range(6)]
        odd = asyncio.ensure_future(worker.run("merging", Merged("other", 100, merged)))
        await asyncio.sleep(0.02)
        release.set()
        results = await asyncio.gather(*futures, odd, blocker)
        await worker.stop()
        return list(results[:7])

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50, 1000]
    assert calls == [[0, 1, 2, 3, 4, 5], [100]]


def test_errors_reach_only_their_request() -> None:
    async def scenario() -> None:
        worker = await started()
        with pytest.raises(ZeroDivisionError):
            await worker.run("calls", lambda: 1 / 0)
        assert await worker.run("calls", lambda: 2) == 2
        await worker.stop()

    asyncio.run(scenario())
