"""`tapeserve serve` (also `python -m service serve`).

Only the standard library is imported until `serve` runs, so `tapeserve --help` answers at once; the serving
stack (FastAPI, uvicorn, TensorFlow) is imported by `service.serving` after the log relay is in place.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from service import heap, logrelay

TENSORFLOW_LOG_DEFAULTS = {
    # TensorFlow's C++ INFO and WARNING chatter off; errors still print (as JSON, through service.logrelay)
    "TF_CPP_MIN_LOG_LEVEL": "2",
}
"""Read by TensorFlow when it loads, so they are set before anything imports it; the environment wins."""

SERVER_MODULES = ("tensorflow", "fastapi", "uvicorn", "matplotlib")
"""Installed by the `server` extra; `pip install tapeserve` alone is the client."""


def parser() -> argparse.ArgumentParser:
    found = argparse.ArgumentParser(prog="tapeserve", description="TensorFlow's GradientTape as a REST service.")
    commands = found.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the HTTP API (settings from TAPESERVE_* variables)",
        description="Serve the HTTP API. Every other setting comes from TAPESERVE_* environment variables "
        "(README, Configuration). Logs are JSON lines on stderr.",
    )
    serve.add_argument("--host", help="bind address (TAPESERVE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (TAPESERVE_PORT, default 8000)")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    commands = parser()
    args = commands.parse_args(argv)
    missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        commands.error(
            f"serving needs the server's dependencies ({', '.join(missing)} missing): pip install 'tapeserve[server]'"
        )
    for name, value in TENSORFLOW_LOG_DEFAULTS.items():
        os.environ.setdefault(name, value)
    # descriptors 1 and 2 go through the relay before TensorFlow loads and prints its first native line
    log_stream = logrelay.start()
    heap.pause_collector()  # until the app has warmed up (service/heap.py)
    from service import serving  # noqa: PLC0415 - the serving stack (TensorFlow) loads only to serve, not for --help

    return serving.serve(host=args.host, port=args.port, log_stream=log_stream)


if __name__ == "__main__":
    sys.exit(main())
