"""What `tapeserve serve` runs once `service.cli` has parsed its arguments: JSON logging, the app, uvicorn."""

from __future__ import annotations

from typing import IO

import uvicorn

from service.app import create_app
from service.drain import DrainingServer
from service.heap import keep_freed_memory
from service.observability import configure_logging
from service.protocol import OneWriteHttpToolsProtocol
from service.settings import Settings

STARTUP_FAILURE = 3
"""uvicorn's exit status when the app or the listener could not start."""


def serve(host: str | None = None, port: int | None = None, log_stream: IO[str] | None = None) -> int:
    """Serve until SIGTERM (drained) or SIGINT, logging JSON lines to `log_stream` (stderr by default);
    the exit status: 0, or `STARTUP_FAILURE`."""
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_level, stream=log_stream, flush_interval=settings.log_flush_s)
    keep_freed_memory(settings.heap_keep_mb)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=OneWriteHttpToolsProtocol,  # httptools', a response's head and body in one write
        log_level=settings.log_level,
        log_config=None,  # uvicorn's loggers propagate to the JSON handler instead of configuring their own
        access_log=False,
        # nothing in the service reads the client's address, so X-Forwarded-* rewriting is work for nothing
        proxy_headers=False,
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
    )
    # SIGTERM drains (service/drain.py) and ends in exit status 0; `atexit` writes the batched log lines
    server = DrainingServer(config, app.state.drain, settings.drain_grace_s)
    server.run()
    return 0 if server.started else STARTUP_FAILURE
