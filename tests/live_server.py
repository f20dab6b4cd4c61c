"""A real uvicorn server for an app built in the test process (a thread, so TensorFlow is not imported twice).

For what the TestClient cannot show: chunked uploads, the server's own connection handling, a browser.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

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
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError("the server thread ended before it was ready")
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise RuntimeError("the server never became ready")
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()
