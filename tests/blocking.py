"""Holding the TensorFlow worker busy on purpose, to see queueing, 429s, 504s and merging deterministically."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable

from fastapi.testclient import TestClient

from service.worker import MAIN_LANE, Worker
from tests.engines import CALLS


class BlockedWorker:
    """Occupies a lane of the worker (its main lane by default) with jobs that wait for `release`, submitted
    through the client's event loop."""

    def __init__(self, client: TestClient, lane: str = MAIN_LANE) -> None:
        self.client = client
        self.worker: Worker = client.app.state.worker  # type: ignore[attr-defined]
        self.engine = "calls" if lane == MAIN_LANE else f"calls in {lane}"
        self.worker.register(self.engine, CALLS, lane)
        self.release = threading.Event()
        self.running = threading.Event()

    def _block(self) -> bool:
        self.running.set()
        return self.release.wait(30)

    def _submit(self) -> None:
        # its own deadline is far away: a short TAPESERVE_TIMEOUT_S must not drop the blocker itself
        run = functools.partial(self.worker.run, self.engine, self._block, deadline=time.monotonic() + 60)
        self.client.portal.start_task_soon(run)  # type: ignore[union-attr]

    def occupy(self) -> None:
        """One job running in the lane's thread (once the warm-up is over)."""
        # ready includes the service's own warm-up request, which must not queue behind the blocker
        wait_until(lambda: self.client.get("/readyz").status_code == 200, seconds=60)
        self._submit()
        assert self.running.wait(10)

    def enqueue(self, depth: int) -> None:
        """Jobs waiting behind it until the queue holds `depth`."""
        self._submit()
        wait_until(lambda: self.worker.queue_depth == depth)


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.005)
