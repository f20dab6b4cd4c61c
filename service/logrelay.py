"""Every line a serving process writes is one JSON object: what TensorFlow's C++ code prints included.

TensorFlow and absl write their native log lines (`I0000 00:00:... port.cc:153] oneDNN custom operations
are on ...`, some before any log level applies) straight to file descriptor 2, below Python. `start()`
points descriptors 1 and 2 at a pipe, and a small relay process (this module run as a program) turns each
line arriving there into a JSON log record (`"logger": "native"`, the level read from absl's prefix). The
service's own JSON lines reach the relay through a second pipe and pass through unchanged; the relay is the
only writer of the real stderr, so lines never interleave mid-line. Being a process of its own, it still
writes a native fatal error's last lines when the server aborts: it exits once both pipes are closed.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import IO

import orjson

NATIVE_LOGGER = "native"
EXIT_WAIT_S = 5.0
"""How long a server at exit waits for the relay to write the last lines."""

# absl's prefix: severity letter, MMDD, time, thread id, file:line]
ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+\s+\d+ ([^\]\s]+)\] ?(.*)$")
LEVELS = {b"I": "INFO", b"W": "WARNING", b"E": "ERROR", b"F": "CRITICAL"}


def start() -> IO[str]:
    """Route descriptors 1 and 2 through a relay process; returns the stream the JSON log handler writes to."""
    native_read, native_write = os.pipe()
    records_read, records_write = os.pipe()
    relay = subprocess.Popen(  # noqa: S603 - this interpreter, this module
        [sys.executable, "-m", "service.logrelay", str(native_read), str(records_read)],
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),
        pass_fds=(native_read, records_read),
    )
    os.close(native_read)
    os.close(records_read)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(native_write, 1)
    os.dup2(native_write, 2)
    os.close(native_write)
    records = os.fdopen(records_write, "w", encoding="utf-8", errors="replace")

    def close_and_wait() -> None:
        # runs before logging's own exit hook: write the batched lines, close both pipes, let the relay finish
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr, records):
            stream.flush()
        records.close()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
        try:
            relay.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            relay.kill()

    atexit.register(close_and_wait)
    return records


def native_record(line: bytes, level: str) -> tuple[bytes, str]:
    """One native line as a JSON line, and the level a following continuation line inherits."""
    document: dict[str, str] = {
        "ts": datetime.fromtimestamp(time.time(), UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": NATIVE_LOGGER,
    }
    found = ABSL_LINE.match(line)
    if found:
        level = LEVELS[found[1]]
        document["level"] = level
        document["msg"] = found[3].decode(errors="replace")
        document["source"] = found[2].decode(errors="replace")
    else:  # a continuation of the line before, or a plain line such as absl's "WARNING: All log messages ..."
        if line.startswith((b"WARNING", b"ERROR")):
            document["level"] = "WARNING" if line.startswith(b"WARNING") else "ERROR"
        document["msg"] = line.decode(errors="replace")
    return orjson.dumps(document) + b"\n", level


def relay(native: int, records: int, out: int) -> None:
    """Copy whole lines to `out` until both pipes close: `records` verbatim, `native` as JSON records."""
    selector = selectors.DefaultSelector()
    pending = {native: b"", records: b""}
    for descriptor in pending:
        selector.register(descriptor, selectors.EVENT_READ)
    level = "WARNING"  # a line without absl's prefix, before any line with one
    while selector.get_map():
        for key, _ in selector.select():
            descriptor = int(key.fd)
            chunk = os.read(descriptor, 65536)
            if not chunk:
                selector.unregister(descriptor)
                chunk = b"\n" if pending[descriptor] else b""
            lines, newline, rest = (pending[descriptor] + chunk).rpartition(b"\n")
            pending[descriptor] = rest
            if not newline:
                continue
            if descriptor == records:
                output = lines + b"\n"
            else:
                parts = []
                for line in lines.split(b"\n"):
                    if line.strip():
                        record, level = native_record(line.rstrip(b"\r"), level)
                        parts.append(record)
                output = b"".join(parts)
            while output:
                output = output[os.write(out, output) :]


if __name__ == "__main__":
    # the server's signals are the server's: Ctrl-C reaches the whole process group, and the relay must
    # outlive the server's shutdown to write its last lines
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    relay(int(sys.argv[1]), int(sys.argv[2]), sys.stdout.fileno())
