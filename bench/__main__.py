"""`make bench`: tapeserve against the no-TensorFlow reference floor, side by side, in one run.

Starts both servers, drives them with wrk in alternating A/B rounds (reference first, then tapeserve, then
again), and prints a table of medians and ratios for the targets of the performance issue: latency of the
seed's full report with one client, throughput with 64 connections, bulk samples/s, start-up, first-request
latency, and resident memory over 100,000 mixed requests. The table is also written to bench/results/latest.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from schemas.networks import SEED_FEATURES, SEED_REQUEST, SEED_WEIGHTS
from tests.live_server import poll_ready
from tests.packages import ensure_debian_package

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PLAIN_REQUEST = {k: v for k, v in SEED_REQUEST.items() if k != "include"}
QUIET_S = 0.05
"""The pause before each request of the first-request timings."""
FRESH_STARTS = 3
"""Fresh processes of each server whose first ten requests are timed."""

WRK_SCRIPT = """
local paths = {}
for path in string.gmatch(os.getenv("BENCH_BODIES"), "[^,]+") do table.insert(paths, path) end
local bodies = {}
for i, path in ipairs(paths) do
  local handle = io.open(path, "rb"); bodies[i] = handle:read("*a"); handle:close()
end
local targets = {}
for target in string.gmatch(os.getenv("BENCH_TARGETS") or "", "[^,]+") do table.insert(targets, target) end
local counter = 0
request = function()
  counter = counter + 1
  local index = (counter % #bodies) + 1
  local target = targets[index] or "POST /v1/networks/gradients"
  local method, path = string.match(target, "(%S+) (%S+)")
  if method == "GET" then return wrk.format("GET", path) end
  return wrk.format(method, path, {["Content-Type"] = "application/json"}, bodies[index])
end
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"p50_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"status_errors":%d,' ..
    '"socket_errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.mean,
    summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    base: str
    ready_after_s: float

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@dataclass
class WrkRun:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    status_errors: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ensure_wrk() -> str:
    return ensure_debian_package("wrk")[0]


@contextmanager
def serve(name: str, command: Sequence[str], env: dict[str, str], log_dir: Path, cwd: Path = ROOT) -> Iterator[Server]:
    """A server started from `cwd` (a source tree: `python -m` imports the tree's own packages), until /readyz."""
    port = free_port()
    env = {**os.environ, **env, "TAPESERVE_PORT": str(port), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [part.replace("{port}", str(port)) for part in command]
    with (log_dir / f"{name}.log").open("wb") as log:
        started = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=cwd)
        base = f"http://127.0.0.1:{port}"
        try:
            try:
                poll_ready(base, 120, lambda: None if process.poll() is None else "exited", interval_s=0.01)
            except RuntimeError as error:
                raise SystemExit(f"{name}: {error}; see {log_dir / (name + '.log')}") from error
            yield Server(name, process, base, time.monotonic() - started)
        finally:
            process.terminate()
            process.wait(timeout=60)


def tapeserve_command() -> list[str]:
    return [sys.executable, "-m", "service", "serve"]


def reference_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.reference_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def run_wrk(
    wrk: str,
    server: Server,
    bodies: Sequence[Path],
    connections: int,
    seconds: float,
    *,
    targets: Sequence[str] = (),
) -> WrkRun:
    """wrk's figures for `bodies` sent in turn; `targets[i]` is `"METHOD /path"` for `bodies[i]` (a GET sends
    no body), `POST /v1/networks/gradients` for each body without one."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    threads = min(2, connections)
    result = subprocess.run(
        [
            wrk,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            script.name,
            server.base,
        ],
        env={**os.environ, "BENCH_BODIES": ",".join(str(body) for body in bodies), "BENCH_TARGETS": ",".join(targets)},
        capture_output=True,
        text=True,
        check=True,
    )
    os.unlink(script.name)
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return WrkRun(
        requests=summary["requests"],
        seconds=summary["duration_us"] / 1e6,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        status_errors=summary["status_errors"],
        socket_errors=summary["socket_errors"],
    )


def bulk_bodies(samples: int) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    features = (rng.normal(size=(samples, 3)) * [8.0, 15.0, 0.5] + SEED_FEATURES).astype(np.float32)
    labels = rng.integers(0, 2, size=samples)
    targets = np.eye(2, dtype=np.float32)[labels]
    layers = [{"weights": SEED_WEIGHTS, "activation": "softmax"}]
    nested = {"features": features.tolist(), "labels": labels.tolist(), "layers": layers}

    def b64(array: np.ndarray) -> dict[str, Any]:
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        return {"shape": list(array.shape), "dtype": "float32", "b64": base64.b64encode(raw).decode()}

    packed = {"features": b64(features), "targets": b64(targets), "layers": layers, "response_encoding": "b64"}
    return {"nested": json.dumps(nested).encode(), "b64": json.dumps(packed).encode()}


def raw_posts(
    server: Server, body: bytes, count: int, pause: float = 0.0, path: str = "/v1/networks/gradients"
) -> list[float]:
    """Seconds per POST of `body` to `path`, sent one after another on one keep-alive socket (after `pause`
    seconds of quiet each): a bare client, so that the times are the server's and not a client library's
    warm-up."""
    host, port = server.base.removeprefix("http://").split(":")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    def exchange(connection: socket.socket, request: bytes) -> bytes:
        connection.sendall(request)
        received = bytearray()  # appended in place: `bytes +=` would copy a multi-megabyte answer per chunk
        while b"\r\n\r\n" not in received:
            received += connection.recv(1 << 20)
        end = received.index(b"\r\n\r\n") + 4
        header = bytes(received[:end])
        length = next(
            int(line.split(b":", 1)[1]) for line in header.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
        while len(received) - end < length:
            received += connection.recv(1 << 20)
        if not header.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"request failed: {header.splitlines()[0]!r}")
        return bytes(received[end:])

    seconds = []
    with socket.create_connection((host, int(port))) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exchange(connection, f"GET /readyz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())  # the connection's cost
        for _ in range(count):
            time.sleep(pause)
            started = time.perf_counter()
            exchange(connection, head + body)
            seconds.append(time.perf_counter() - started)
    return seconds


def mixed_bodies(directory: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    bodies: list[dict[str, Any]] = [SEED_REQUEST, PLAIN_REQUEST]
    for batch in (1, 3, 5, 17, 64):
        x = (rng.normal(size=(batch, 3)) * 10 + SEED_FEATURES).round(3).tolist()
        bodies.append(
            {
                "features": x,
                "labels": rng.integers(0, 2, size=batch).tolist(),
                "reduction": "mean",
                "layers": [
                    {"weights": (rng.normal(size=(4, 4)) * 0.05).tolist(), "activation": "tanh"},
                    {"weights": (rng.normal(size=(2, 5)) * 0.5).tolist(), "activation": "softmax"},
                ],
                "include": ["input_gradients"] if batch % 2 else [],
            }
        )
    bodies.append({**PLAIN_REQUEST, "labels": [0, 1]})  # a 422, as real traffic has
    paths = []
    for index, body in enumerate(bodies):
        path = directory / f"mixed-{index}.json"
        path.write_text(json.dumps(body))
        paths.append(path)
    return paths


def publish(report: str, name: str) -> None:
    """Print `report` and write it to bench/results/`name`."""
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(report)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=5, help="alternating A/B rounds per scenario")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk run")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="tapeserve-bench-"))
    full_body, plain_body = work / "seed-full.json", work / "seed-plain.json"
    full_body.write_text(json.dumps(SEED_REQUEST))
    plain_body.write_text(json.dumps(PLAIN_REQUEST))
    rows: list[tuple[str, str, str, str, str]] = []

    with serve("tapeserve", tapeserve_command(), {}, work) as tapeserve:
        # the reference answers with exactly tapeserve's bytes for the same request
        for path, name in ((full_body, "FULL"), (plain_body, "PLAIN")):
            response = httpx.post(
                tapeserve.base + "/v1/networks/gradients",
                content=path.read_bytes(),
                headers={"content-type": "application/json"},
            )
            (work / f"response-{name}.json").write_bytes(response.content)
        ref_env = {
            "BENCH_RESPONSE_FULL": str(work / "response-FULL.json"),
            "BENCH_RESPONSE_PLAIN": str(work / "response-PLAIN.json"),
        }
        with serve("reference", reference_command(), ref_env, work) as reference:
            latency: dict[str, list[float]] = {"reference": [], "tapeserve": []}
            throughput: dict[str, list[float]] = {"reference": [], "tapeserve": []}
            cpu_per_request: dict[str, list[float]] = {"reference": [], "tapeserve": []}
            failures = 0
            for _ in range(args.rounds):
                for server in (reference, tapeserve):
                    run = run_wrk(wrk, server, [full_body], 1, args.seconds)
                    latency[server.name].append(run.p50_ms)
                for server in (reference, tapeserve):
                    cpu_before = server.cpu_seconds()
                    run = run_wrk(wrk, server, [plain_body], 64, args.seconds)
                    throughput[server.name].append(run.rps)
                    cpu_per_request[server.name].append((server.cpu_seconds() - cpu_before) / run.requests)
                    if server is tapeserve:
                        failures += run.status_errors + run.socket_errors
            lat_ref, lat_svc = median(latency["reference"]), median(latency["tapeserve"])
            rps_ref, rps_svc = median(throughput["reference"]), median(throughput["tapeserve"])
            rows.append(
                (
                    "latency, seed + all includes, 1 client (p50 ms)",
                    f"{lat_ref:.3f}",
                    f"{lat_svc:.3f}",
                    f"{lat_svc / lat_ref:.2f}x",
                    "≤ 1.5x (stretch 1.25x)",
                )
            )
            rows.append(
                (
                    "throughput, seed, 64 connections (req/s)",
                    f"{rps_ref:,.0f}",
                    f"{rps_svc:,.0f}",
                    f"{rps_svc / rps_ref:.2f}x",
                    f"≥ 0.8x (stretch 0.9x); non-2xx: {failures}",
                )
            )
            cpu_ref, cpu_svc = median(cpu_per_request["reference"]), median(cpu_per_request["tapeserve"])
            rows.append(
                (
                    "server CPU per request in that run (µs, all threads)",
                    f"{cpu_ref * 1e6:.0f}",
                    f"{cpu_svc * 1e6:.0f}",
                    f"{cpu_svc / cpu_ref:.2f}x",
                    "(explains the throughput ratio)",
                )
            )

        for encoding, body in bulk_bodies(65_536).items():
            seconds = median(raw_posts(tapeserve, body, 7)[2:])
            rows.append(
                (
                    f"bulk 65,536 samples, {encoding} (samples/s)",
                    "",
                    f"{65_536 / seconds / 1e6:.2f} M",
                    f"{seconds * 1000:.0f} ms/request",
                    "≥ 2 M nested, ≥ 5 M b64",
                )
            )

    # start-up and the first requests of fresh processes. Back to back, a tenth request runs on caches the nine
    # before it warmed, which on a virtual machine makes any server's first request slower, the reference's
    # too. Whether the first request pays for anything the tenth does not (lazy loading, tracing, compiling)
    # shows when each request comes after the same quiet spell: that is the row the target is read from.
    full = full_body.read_bytes()
    spaced: dict[str, list[list[float]]] = {"reference": [], "tapeserve": []}
    ready_after: list[float] = []
    for start in range(FRESH_STARTS):
        with serve(f"reference-fresh-{start}", reference_command(), ref_env, work) as fresh_reference:
            spaced["reference"].append(raw_posts(fresh_reference, full, 10, pause=QUIET_S))
        with serve(f"tapeserve-fresh-{start}", tapeserve_command(), {}, work) as fresh:
            ready_after.append(fresh.ready_after_s)
            spaced["tapeserve"].append(raw_posts(fresh, full, 10, pause=QUIET_S))
    first = {name: median([series[0] for series in runs]) for name, runs in spaced.items()}
    tenth = {name: median([series[9] for series in runs]) for name, runs in spaced.items()}
    rows.append(
        (
            f"start-up: process start to /readyz 200 (s, median of {FRESH_STARTS})",
            "",
            f"{median(ready_after):.2f}",
            "",
            "≤ 6 s",
        )
    )
    rows.append(
        (
            f"first request after ready vs tenth, each after {QUIET_S * 1000:.0f} ms of quiet "
            f"(ms, medians of {FRESH_STARTS} fresh starts)",
            f"{first['reference'] * 1000:.2f} vs {tenth['reference'] * 1000:.2f}",
            f"{first['tapeserve'] * 1000:.2f} vs {tenth['tapeserve'] * 1000:.2f}",
            f"{first['tapeserve'] / tenth['tapeserve']:.2f}x "
            f"(reference {first['reference'] / tenth['reference']:.2f}x)",
            "first ≤ tenth",
        )
    )
    with serve("reference-fresh", reference_command(), ref_env, work) as fresh_reference:
        ref_first_ten = raw_posts(fresh_reference, full, 10)
    with serve("tapeserve-fresh", tapeserve_command(), {}, work) as fresh:
        first_ten = raw_posts(fresh, full, 10)
        rows.append(
            (
                "first request after ready vs tenth, back to back (ms)",
                f"{ref_first_ten[0] * 1000:.2f} vs {ref_first_ten[9] * 1000:.2f}",
                f"{first_ten[0] * 1000:.2f} vs {first_ten[9] * 1000:.2f}",
                f"{first_ten[0] / first_ten[9]:.2f}x (reference {ref_first_ten[0] / ref_first_ten[9]:.2f}x)",
                "(warm caches for the tenth only)",
            )
        )
        mixed = mixed_bodies(work)
        sent = 0
        while sent < 1_000:
            sent += run_wrk(wrk, fresh, mixed, 4, 1).requests
        rss_early = fresh.rss_mib()
        sent_early = sent
        while sent < args.memory_requests:
            sent += run_wrk(wrk, fresh, mixed, 8, 10).requests
        rss_late = fresh.rss_mib()
        rows.append(
            (
                f"RSS after {sent_early:,} vs {sent:,} mixed requests (MiB)",
                "",
                f"{rss_early:.0f} vs {rss_late:.0f}",
                f"{(rss_late / rss_early - 1) * 100:+.1f} %",
                "within 10 %",
            )
        )

    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; {args.rounds} alternating rounds of {args.seconds:g} s, medians."
    )
    table = ["| measure | reference | tapeserve | ratio | target |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    publish(header + "\n\n" + "\n".join(table) + "\n", "latest.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
