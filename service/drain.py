"""Graceful drain on SIGTERM, as balancers and Kubernetes expect of a replica being taken out.

SIGTERM turns `/readyz` to 503 `{"status": "draining"}` at once, while the listener keeps accepting for
`TAPESERVE_DRAIN_GRACE_S`, long enough for a balancer's readiness probe (or Kubernetes' endpoint removal)
to stop sending. Then uvicorn's own shutdown runs: the listener closes, idle keep-alive connections close,
requests in flight finish (each still bounded by its deadline, `TAPESERVE_TIMEOUT_S`), the lifespan drains
the worker, and the process exits 0. A second SIGTERM ends the grace period early; SIGINT (Ctrl-C) keeps
uvicorn's meaning: shut down now, and a second one forces it.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

logger = logging.getLogger("tapeserve.drain")


class Drain:
    """Whether this process is draining, and since when; read by `/readyz`, set by the signal handler."""

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def draining(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with SIGTERM starting a drain instead of an immediate shutdown.

    uvicorn re-raises the signal it shut down for once it is done, so that the process dies of it; a drained
    SIGTERM is not recorded, so the process exits 0 (and `atexit` writes the batched log lines).
    """

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM:
            super().handle_exit(sig, frame)
            return
        # only flags here: this runs inside a signal handler; on_tick (every 0.1 s) acts on them
        if self.drain.draining or self.grace_s <= 0:
            self.should_exit = True
        self.drain.begin()

    async def on_tick(self, counter: int) -> bool:
        since = self.drain.since
        if since is not None:
            if not self._announced:
                self._announced = True
                logger.info("SIGTERM: /readyz answers 503; new connections are accepted for %g s more", self.grace_s)
            if time.monotonic() - since >= self.grace_s:
                self.should_exit = True
        if self.should_exit and since is not None:
            open_connections = len(self.server_state.connections)
            logger.info("draining: the listener closes; %d connection(s) finish their requests", open_connections)
        return await super().on_tick(counter)
