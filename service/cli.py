"""`tapeserve serve` (also `python -m service serve`)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn

from service.app import create_app
from service.observability import configure_logging
from service.settings import Settings


def _write_logs_then_terminate(signum: int, frame: FrameType | None) -> None:
    logging.shutdown()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


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
    # uvicorn shuts down gracefully on SIGTERM and then raises it again under the handler it found at
    # start; with the default one the process dies before `atexit` writes the batched log lines
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _write_logs_then_terminate)
    uvicorn.run(
        create_app(settings),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
