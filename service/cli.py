"""`tapeserve serve` (also `python -m service serve`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import uvicorn

from service.app import create_app
from service.drain import DrainingServer
from service.observability import configure_logging
from service.settings import Settings

STARTUP_FAILURE = 3
"""uvicorn's exit status when the app or the listener could not start."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tapeserve", description="TensorFlow's GradientTape as a REST service.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the HTTP API (settings from TAPESERVE_* variables)")
    serve.add_argument("--host", help="bind address (TAPESERVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (TAPESERVE_PORT, default 8000)")
    args = parser.parse_args(argv)

    overrides = {key: value for key, value in (("host", args.host), ("port", args.port)) if value is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, flush_interval=settings.log_flush_s)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
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


if __name__ == "__main__":
    sys.exit(main())
