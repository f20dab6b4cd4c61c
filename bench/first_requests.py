"""The first ten requests of each served-model verb on freshly started processes, each after the same quiet spell.

`python -m bench.first_requests [starts [verb,verb,...]]`: starts `tapeserve serve` (the repository's example
model) `starts` times; on each, once `/readyz` is 200, sends every verb's request (in the order given) ten
times in turn, each after 50 ms of quiet, on one kept-alive socket, and prints per verb the medians over the
starts of the first and the tenth request's latency, and of the second to tenth. Run it with no other benchmark
beside it.
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.__main__ import QUIET_S, Server, serve, tapeserve_command

PATIENT = [[76.0, 120.0, 37.5]]
VERBS: dict[str, dict[str, object]] = {
    "predict": {"instances": PATIENT},
    "gradients": {"instances": PATIENT, "class_index": 1},
    "jacobian": {"instances": PATIENT},
    "explain": {"instances": PATIENT, "steps": 50},
}
COUNT = 10


@contextmanager
def raw_exchange(server: Server) -> Iterator[Callable[[str, str, bytes], bytes]]:
    """One kept-alive socket to `server` (its cost paid by a first GET): a bare client, so that the times
    are the server's and not a client library's warm-up."""
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def exchange(method: str, path: str, body: bytes) -> bytes:
            head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
            received = bytearray()
            while b"\r\n\r\n" not in received:
                received += connection.recv(1 << 20)
            end = received.index(b"\r\n\r\n") + 4
            header = bytes(received[:end])
            length = next(
                int(line.split(b":", 1)[1])
                for line in header.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(received) - end < length:
                received += connection.recv(1 << 20)
            if not header.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"{path}: {header.splitlines()[0]!r} {bytes(received[end:])[:300]!r}")
            return bytes(received[end:])

        exchange("GET", "/healthz", b"")
        yield exchange


def main() -> int:
    starts = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    order = sys.argv[2].split(",") if len(sys.argv) > 2 else list(VERBS)
    series: dict[str, list[list[float]]] = {verb: [] for verb in VERBS}
    with tempfile.TemporaryDirectory() as logs:
        for start in range(starts):
            with (
                serve(f"tapeserve-first-{start}", tapeserve_command(), {}, Path(logs)) as server,
                raw_exchange(server) as exchange,
            ):
                for verb in order:
                    path, payload = f"/v1/models/diabetes:{verb}", json.dumps(VERBS[verb]).encode()
                    times = []
                    for _ in range(COUNT):
                        time.sleep(QUIET_S)
                        started = time.perf_counter()
                        exchange("POST", path, payload)
                        times.append(time.perf_counter() - started)
                    series[verb].append(times)
    print(f"| verb | first (ms) | tenth (ms) | first / tenth | second to tenth (ms) | ({starts} fresh starts) |")
    print("|---|---|---|---|---|---|")
    for verb in order:
        runs = series[verb]
        first = statistics.median(run[0] for run in runs)
        tenth = statistics.median(run[-1] for run in runs)
        rest = statistics.median(value for run in runs for value in run[1:])
        firsts = " ".join(f"{run[0] * 1e3:.2f}" for run in runs)
        print(
            f"| {verb} | {first * 1e3:.2f} | {tenth * 1e3:.2f} | {first / tenth:.2f}× | {rest * 1e3:.2f} | "
            f"firsts: {firsts} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
