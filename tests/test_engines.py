"""Engines registered with the worker: run, merged, dropped at their deadline, 429 when their lane is full,
in the main lane and in a lane of their own; the service's plots share that path; the worker names no engine."""

from __future__ import annotations

import ast
import asyncio
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from schemas.explain import SEED_EXPLANATION_REQUEST
from schemas.networks import SEED_REQUEST
from service import engines
from service.errors import DeadlineExceeded, QueueFull
from service.settings import Settings
from service.worker import MAIN_LANE, Worker
from tests.blocking import BlockedWorker, wait_until
from tests.conftest import make_client
from tests.engines import CALLS, SQUARES, Squares

SIDE = "side"
LIMIT = 2
LANES = (MAIN_LANE, SIDE)


async def started(lane: str, timeout_s: float = 5.0) -> Worker:
    """A worker with the squares engine in `lane`, and a calls engine beside it to hold that lane busy."""
    worker = Worker(Settings(warmup=False, queue_limit=LIMIT, timeout_s=timeout_s, batch_window_ms=5.0))
    worker.add_lane(SIDE, LIMIT)
    worker.register("squares", SQUARES, lane)
    worker.register("calls", CALLS, lane)
    await worker.start()
    return worker


def squares_of(worker: Worker) -> Squares:
    return cast(Squares, worker.engine("squares"))


async def hold(worker: Worker) -> tuple[threading.Event, asyncio.Future[object]]:
    """The lane busy in a calls job until the event is set."""
    release, running = threading.Event(), threading.Event()

    def blocker() -> bool:
        running.set()
        return release.wait(10)

    busy = asyncio.ensure_future(worker.run("calls", blocker, deadline=time.monotonic() + 60))
    while not running.is_set():
        await asyncio.sleep(0.005)
    return release, busy


@pytest.mark.parametrize("lane", LANES)
def test_an_engine_runs_in_its_lane_and_answers_2x(lane: str) -> None:
    x = np.array([[0.5, -1.25], [3.0, 0.0]])

    async def scenario() -> np.ndarray:
        worker = await started(lane)
        try:
            return np.asarray(await worker.run("squares", x))
        finally:
            await worker.stop()
            assert squares_of(worker).threads == {f"tapeserve-{lane}"}

    np.testing.assert_array_equal(asyncio.run(scenario()), 2 * x)  # d/dx Σx² = 2x, exact in float64


@pytest.mark.parametrize("lane", LANES)
def test_jobs_of_one_key_waiting_together_are_one_call(lane: str) -> None:
    rng = np.random.default_rng(7)
    xs = [rng.normal(size=3) for _ in range(LIMIT)]
    other = rng.normal(size=5)

    async def scenario() -> tuple[Sequence[np.ndarray], Squares, int]:
        worker = await started(lane)
        release, busy = await hold(worker)
        futures = [asyncio.ensure_future(worker.run("squares", x)) for x in xs]
        await asyncio.sleep(0.02)
        release.set()
        await busy
        # the other shape queues once the lane has room, and never joins the first call
        answers = [*await asyncio.gather(*futures), await worker.run("squares", other)]
        merged = worker.stats.batch_sizes.get(LIMIT, 0)
        await worker.stop()
        return answers, squares_of(worker), merged

    answers, engine, merged = asyncio.run(scenario())
    for x, answer in zip([*xs, other], answers, strict=True):
        np.testing.assert_array_equal(answer, 2 * x)
    assert engine.call_sizes == [LIMIT, 1] and merged == 1
    assert engine.stats() == {"calls": 2, "jobs": LIMIT + 1}


@pytest.mark.parametrize("lane", LANES)
def test_a_job_whose_deadline_passes_in_the_queue_is_504_and_never_runs(lane: str) -> None:
    async def scenario() -> Worker:
        worker = await started(lane, timeout_s=0.1)
        release, busy = await hold(worker)
        late = asyncio.ensure_future(worker.run("squares", np.ones(2)))
        with pytest.raises(DeadlineExceeded) as caught:
            await late
        assert caught.value.status == 504
        release.set()
        await busy
        np.testing.assert_array_equal(await worker.run("squares", np.full(2, 4.0)), np.full(2, 8.0))
        await worker.stop()
        return worker

    worker = asyncio.run(scenario())
    assert squares_of(worker).call_sizes == [1]  # the fresh job only


@pytest.mark.parametrize("lane", LANES)
def test_a_full_lane_answers_429_and_the_other_lane_still_serves(lane: str) -> None:
    other_lane = SIDE if lane == MAIN_LANE else MAIN_LANE

    async def scenario() -> None:
        worker = await started(lane)
        worker.register("squares elsewhere", SQUARES, other_lane)
        release, busy = await hold(worker)
        queued = [asyncio.ensure_future(worker.run("squares", np.full(1, float(i)))) for i in range(LIMIT)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as caught:
            await worker.run("squares", np.ones(1))
        assert caught.value.status == 429 and caught.value.headers["Retry-After"] == "1"
        np.testing.assert_array_equal(await worker.run("squares elsewhere", np.ones(1)), [2.0])
        release.set()
        assert [float(a[0]) for a in await asyncio.gather(*queued)] == [2.0 * i for i in range(LIMIT)]
        await busy
        await worker.stop()

    asyncio.run(scenario())


def test_an_unknown_engine_or_lane_is_refused() -> None:
    worker = Worker(Settings(warmup=False))
    with pytest.raises(ValueError, match="no lane named 'elsewhere'"):
        worker.register("squares", SQUARES, "elsewhere")
    worker.register("broken", "tests.engines.squares")
    with pytest.raises(ValueError, match=r"package\.module:function"):  # at start, where the factory is imported
        asyncio.run(worker.start())

    async def unknown() -> None:
        await Worker(Settings(warmup=False)).run("nothing", None)

    with pytest.raises(LookupError, match="'nothing'"):
        asyncio.run(unknown())


def test_the_worker_knows_no_engine_by_name() -> None:
    source = Path("service/worker.py").read_text()
    names = {word for name, _, _ in engines.ENGINES for word in name.split()}
    words = {*names, "network", "plot", "tape", "program", "activation", "explanation", "gradient", "model"}
    for word in words:
        assert not re.search(rf"\b{word}s?\b", source, re.IGNORECASE), word
    imported = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module}
    assert {module for module in imported if module.startswith("service")} == {
        "service.compute.errors",
        "service.errors",
        "service.settings",
    }


def test_plots_wait_in_the_workers_plot_lane_and_share_its_429() -> None:
    with make_client() as client:
        blocked = BlockedWorker(client, lane=engines.PLOTS_LANE)
        blocked.occupy()
        for depth in range(1, engines.PLOT_QUEUE_LIMIT + 1):
            blocked.enqueue(depth)
        # the TensorFlow lane still answers while the plot lane is full
        assert client.post("/v1/networks/gradients", json=SEED_REQUEST).status_code == 200
        refused = client.get("/v1/activations/plot.png?activations=tanh&num=17")
        png = client.post("/v1/networks/explanations", json=SEED_EXPLANATION_REQUEST, headers={"Accept": "image/png"})
        for response in (refused, png):
            assert response.status_code == 429, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["type"].endswith("/queue-full")
        blocked.release.set()
        wait_until(lambda: blocked.worker.queue_depth == 0)
        answer = client.get("/v1/activations/plot.png?activations=tanh&num=17")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"


def test_plots_past_their_deadline_are_504() -> None:
    with make_client(timeout_s=0.3) as client:
        blocked = BlockedWorker(client, lane=engines.PLOTS_LANE)
        blocked.occupy()
        response = client.get("/v1/activations/plot.png?activations=relu&num=19")
        assert response.status_code == 504 and response.json()["type"].endswith("/deadline-exceeded")
        assert client.get("/v1/activations").status_code == 200
        blocked.release.set()
