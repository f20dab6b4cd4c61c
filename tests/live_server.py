"""A real uvicorn server for an app built in the test process (a thread, so TensorFlow is not imported twice).

For what the TestClient cannot show: chunked uploads, the server's own connection handling, a browser.
`serve_process` starts the real command instead, for what only a process of its own shows (its output).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import uvicorn

from service.app import create_app
from service.settings import Settings


def free_port() -> int:
    """A local TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def poll_ready(base: str, timeout_s: float, ended: Callable[[], str | None], *, interval_s: float = 0.05) -> None:
    """Poll `base`/readyz every `interval_s` until it answers 200; raise RuntimeError if `ended()` says why the
    server is gone, or after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        gone = ended()
        if gone is not None:
            raise RuntimeError(gone)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready in {timeout_s:g} s")
        try:
            if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(interval_s)


@contextmanager
def live_server(**overrides: object) -> Iterator[str]:
    """Serve `create_app(Settings(**overrides))` on a free local port until the block ends; yields the base URL."""
    settings = Settings(**{"cpu_logical_devices": 2, **overrides})  # type: ignore[arg-type]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings), http="httptools", loop="asyncio", log_config=None, access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        poll_ready(base, 60, lambda: None if thread.is_alive() else "the server thread ended before it was ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()


TAPESERVE = Path(sys.executable).parent / "tapeserve"
"""The installed `tapeserve` script, as an operator runs it."""


@contextmanager
def serve_process(
    env: Mapping[str, str] | None = None, stdout: IO[bytes] | None = None, stderr: IO[bytes] | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`tapeserve serve` in a process of its own on a free local port: yields (base URL, process) once /readyz
    answers 200, and sends SIGTERM when the block ends (the caller may read the exit status after it)."""
    port = free_port()
    environment = {**os.environ, **(env or {}), "TAPESERVE_PORT": str(port)}
    environment.setdefault("TAPESERVE_DRAIN_GRACE_S", "0")
    process = subprocess.Popen(
        [str(TAPESERVE), "serve"],
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=stdout or subprocess.DEVNULL,
        stderr=stderr or subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def ended() -> str | None:
        if process.poll() is None:
            return None
        return f"tapeserve serve exited with {process.returncode} before it was ready"

    try:
        poll_ready(base, 120, ended)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
