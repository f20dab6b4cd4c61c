"""`python -m bench.models`: served models (API.md §9) side by side with two references, in one run.

Starts `tapeserve serve` (the repository's example model, `diabetes`), the reference floor (a FastAPI +
pydantic endpoint that parses the same predict body and answers with tapeserve's own bytes, no TensorFlow)
and a FastAPI + Keras service written the way users write one (`bench/keras_app.py`), and measures, with wrk
in alternating rounds (reference first, then tapeserve, then again), medians of:

- the floor: `:predict` of one instance at 64 connections, and the server CPU each request costs;
- `:predict` and `:gradients` against FastAPI + Keras: throughput at 64 connections, p50 with one client;
- bulk: `:gradients` with respect to the inputs of 65,536 instances in one request, nested JSON and b64;
- memory: the RSS of one tapeserve process over mixed model requests, then over version reloads (a new
  version folder copied into a temporary repository polled every `POLL_S`, the old one removed);
- start-up to `/readyz` 200, and the first request of each verb against its tenth, each after 50 ms of quiet.

The table is printed and written to bench/results/models.md. Run it with no other benchmark beside it.
`--only PART` (repeatable) measures some of the parts (floor, keras, bulk, memory, start-up) and only prints
their rows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.__main__ import (
    FRESH_STARTS,
    QUIET_S,
    ROOT,
    Server,
    ensure_wrk,
    median,
    publish,
    raw_posts,
    reference_command,
    run_wrk,
    serve,
    tapeserve_command,
)
from schemas.networks import SEED_FEATURES

MODEL = "/v1/models/diabetes"
PATIENT = [SEED_FEATURES]
EXAMPLE_MODEL = ROOT / "models" / "diabetes" / "1" / "model.keras"
INLINE = {"BENCH_HANDOFF_INLINE": "1"}
JSON = {"content-type": "application/json"}
BULK = 65_536
POLL_S = 0.2
"""The temporary repository's poll interval (TAPESERVE_MODEL_POLL_S) for the reloads."""
VERB_BODIES: dict[str, dict[str, Any]] = {
    "predict": {"instances": PATIENT},
    "gradients": {"instances": PATIENT, "class_index": 1},
    "jacobian": {"instances": PATIENT},
}
Row = tuple[str, str, str, str, str]
PARTS = ("floor", "keras", "bulk", "memory", "start-up")
"""The parts of the table, in its order; `--only` picks some."""


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def command_for(app: str) -> list[str]:
    """The reference floor's server command, serving `app` instead."""
    return [app if part == "bench.reference_app:app" else part for part in reference_command()]


def alternate(
    wrk: str, servers: Sequence[Server], body: Path, target: str, *, connections: int, args: argparse.Namespace
) -> dict[str, list[tuple[float, float, float, int]]]:
    """`(req/s, p50 ms, server CPU µs per request, failed requests)` per round, by server name: wrk on each
    server in turn, `args.rounds` times."""
    figures: dict[str, list[tuple[float, float, float, int]]] = {server.name: [] for server in servers}
    for _ in range(args.rounds):
        for server in servers:
            cpu = server.cpu_seconds()
            run = run_wrk(wrk, server, [body], connections, args.seconds, targets=[target])
            cpu_us = (server.cpu_seconds() - cpu) / max(run.requests, 1) * 1e6
            figures[server.name].append((run.rps, run.p50_ms, cpu_us, run.status_errors + run.socket_errors))
    return figures


def column(figures: dict[str, list[tuple[float, float, float, int]]], name: str, index: int) -> float:
    return median([figure[index] for figure in figures[name]])


def failures(figures: dict[str, list[tuple[float, float, float, int]]], name: str) -> int:
    return sum(figure[3] for figure in figures[name])


def floor(wrk: str, tapeserve: Server, work: Path, args: argparse.Namespace) -> list[Row]:
    """`:predict` of one instance at 64 connections against the reference floor answering tapeserve's bytes."""
    body = write(work / "predict.json", VERB_BODIES["predict"])
    answer = httpx.post(tapeserve.base + MODEL + ":predict", content=body.read_bytes())
    answer.raise_for_status()
    (work / "response-PREDICT.json").write_bytes(answer.content)
    env = {"BENCH_RESPONSE_PREDICT": str(work / "response-PREDICT.json")}
    handoff = command_for("bench.handoff_app:app")
    with (
        serve("reference", command_for("bench.reference_app:app"), env, work) as reference,
        serve("handoff", handoff, env, work) as hand_off,
        serve("handoff-tf", handoff, env | {"BENCH_HANDOFF_MODEL": str(EXAMPLE_MODEL)}, work) as hand_off_tf,
        serve("inline-tf", handoff, env | {"BENCH_HANDOFF_MODEL": str(EXAMPLE_MODEL), **INLINE}, work) as inline,
    ):
        servers = [reference, hand_off, hand_off_tf, inline, tapeserve]
        for computing in (hand_off_tf, inline):  # the bounds compute the same answer, not something cheaper
            bound = httpx.post(computing.base + MODEL + ":predict", content=body.read_bytes(), headers=JSON).json()
            np.testing.assert_allclose(bound["predictions"], answer.json()["predictions"], rtol=1e-6)
        figures = alternate(wrk, servers, body, f"POST {MODEL}:predict", connections=64, args=args)
    rps_ref, rps_svc = column(figures, "reference", 0), column(figures, "tapeserve", 0)
    cpu_ref, cpu_svc = column(figures, "reference", 2), column(figures, "tapeserve", 2)
    return [
        (
            "floor: :predict, 1 instance, 64 connections (req/s)",
            f"{rps_ref:,.0f}",
            f"{rps_svc:,.0f}",
            f"{rps_svc / rps_ref:.2f}x",
            f"≥ 0.85x; non-2xx: {failures(figures, 'tapeserve')}",
        ),
        (
            "server CPU per request in that run (µs, all threads)",
            f"{cpu_ref:.0f}",
            f"{cpu_svc:.0f}",
            f"{cpu_svc / cpu_ref:.2f}x",
            "(explains the throughput ratio)",
        ),
        *bounds(figures, rps_ref),
    ]


def bounds(figures: dict[str, list[tuple[float, float, float, int]]], rps_ref: float) -> list[Row]:
    """The floor plus the worker hand-off tapeserve's house makes, alone and with the model's call: how far
    below the floor a served `:predict` must sit before any of tapeserve's own work (`bench/handoff_app.py`)."""
    rows: list[Row] = []
    for name, what in (
        ("handoff", "+ hand-off to one thread"),
        ("handoff-tf", "+ hand-off + merged model call"),
        ("inline-tf", "+ model call in the route, no thread"),
    ):
        rps, cpu = column(figures, name, 0), column(figures, name, 2)
        rows.append(
            (
                f"floor {what}, same rounds (req/s; CPU µs)",
                f"{rps_ref:,.0f}",
                f"{rps:,.0f}; {cpu:.0f} µs",
                f"{rps / rps_ref:.2f}x",
                "bound, no target",
            )
        )
    return rows


def against_keras(wrk: str, tapeserve: Server, work: Path, args: argparse.Namespace) -> list[Row]:
    """`:predict` and `:gradients` against FastAPI + Keras: 64 connections, then one client."""
    rows: list[Row] = []
    with serve("fastapi-keras", command_for("bench.keras_app:app"), {}, work) as keras:
        for verb in ("predict", "gradients"):
            body, target = write(work / f"{verb}.json", VERB_BODIES[verb]), f"POST {MODEL}:{verb}"
            busy = alternate(wrk, [keras, tapeserve], body, target, connections=64, args=args)
            alone = alternate(wrk, [keras, tapeserve], body, target, connections=1, args=args)
            rps_ref, rps_svc = column(busy, "fastapi-keras", 0), column(busy, "tapeserve", 0)
            p50_ref, p50_svc = column(alone, "fastapi-keras", 1), column(alone, "tapeserve", 1)
            rows.append(
                (
                    f"vs FastAPI + Keras: :{verb}, 64 connections (req/s)",
                    f"{rps_ref:,.0f}",
                    f"{rps_svc:,.0f}",
                    f"{rps_svc / rps_ref:.1f}x",
                    f"≥ 5x; non-2xx: {failures(busy, 'tapeserve')}",
                )
            )
            rows.append(
                (
                    f"vs FastAPI + Keras: :{verb}, 1 client (p50 ms)",
                    f"{p50_ref:.2f}",
                    f"{p50_svc:.2f}",
                    f"{p50_svc / p50_ref:.2f}x",
                    "(lower is better)",
                )
            )
    return rows


def bulk_bodies() -> dict[str, bytes]:
    """`:gradients` of class 1 with respect to the inputs of `BULK` patients: nested rows, and b64 columns."""
    rng = np.random.default_rng(0)
    vitals = (rng.normal(size=(BULK, 3)) * [8.0, 15.0, 0.5] + SEED_FEATURES).astype(np.float32)
    packed = {
        "shape": list(vitals.shape),
        "dtype": "float32",
        "b64": base64.b64encode(np.ascontiguousarray(vitals, dtype="<f4").tobytes()).decode(),
    }
    nested = {"instances": vitals.tolist(), "class_index": 1}
    b64 = {"inputs": {"vitals": packed}, "class_index": 1, "response_encoding": "b64"}
    return {"nested": json.dumps(nested).encode(), "b64": json.dumps(b64).encode()}


def bulk_bound() -> Row:
    """`bench.bulk_bound`'s least cost of a nested bulk request (read, tape, render; no HTTP), as a row."""
    command = [sys.executable, "-m", "bench.bulk_bound"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, check=True, timeout=600)
    parts = json.loads(done.stdout)
    steps = ", ".join(f"{name} {parts[name]:.1f}" for name in ("read", "tape", "render"))
    return (
        f"bound: nested bulk read + tape + render alone, no HTTP (instances/s); ms: {steps}",
        "",
        f"{BULK / parts['total'] * 1e3 / 1e6:.2f} M",
        f"{parts['total']:.0f} ms/request",
        "",
    )


def bulk(tapeserve: Server) -> list[Row]:
    rows: list[Row] = [bulk_bound()]
    for encoding, body in bulk_bodies().items():
        seconds = median(raw_posts(tapeserve, body, 7, path=MODEL + ":gradients")[2:])
        rows.append(
            (
                f"bulk :gradients wrt inputs, {BULK:,} instances, {encoding} (instances/s)",
                "",
                f"{BULK / seconds / 1e6:.2f} M",
                f"{seconds * 1000:.0f} ms/request",
                f"≥ {2 if encoding == 'nested' else 5} M",
            )
        )
    return rows


def mixed_requests(work: Path) -> tuple[list[Path], list[str]]:
    """The memory scenario's traffic: every model verb, metadata and status, a batch, and a 422."""
    rng = np.random.default_rng(1)
    batch = (rng.normal(size=(17, 3)) * [8.0, 15.0, 0.5] + SEED_FEATURES).round(2).tolist()
    posts: list[tuple[str, dict[str, Any]]] = [
        *((f"{MODEL}:{verb}", body) for verb, body in VERB_BODIES.items()),
        (f"{MODEL}:predict", {"inputs": {"vitals": batch}}),
        (
            f"{MODEL}:gradients",
            {
                "instances": batch,
                "sources": ["inputs", "variables"],
                "loss": {"kind": "cross_entropy", "labels": rng.integers(0, 2, size=17).tolist(), "reduction": "mean"},
            },
        ),
        (f"{MODEL}:jacobian", {"instances": batch, "class_index": 1, "response_encoding": "b64"}),
        (f"{MODEL}:predict", {"instances": [[1.0, 2.0]]}),  # a 422, as real traffic has
    ]
    bodies = [write(work / f"mixed-{index}.json", body) for index, (_, body) in enumerate(posts)]
    targets = [f"POST {path}" for path, _ in posts]
    empty = write(work / "mixed-get.json", {})
    for path in (f"{MODEL}/metadata", MODEL):
        bodies.append(empty)
        targets.append(f"GET {path}")
    return bodies, targets


def check(server: Server, bodies: Sequence[Path], targets: Sequence[str]) -> None:
    """Each mixed request answers as meant (200, the one 422 for the instance of the wrong shape)."""
    for body, target in zip(bodies, targets, strict=True):
        method, path = target.split(" ", 1)
        content = body.read_bytes() if method == "POST" else None
        answer = httpx.request(method, server.base + path, content=content, timeout=30)
        expected = 422 if b"[[1.0, 2.0]]" in (content or b"") else 200
        if answer.status_code != expected:
            raise SystemExit(f"{target} {body.name} answered {answer.status_code}: {answer.text[:300]}")


def wait_available(server: Server, version: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answer = httpx.get(f"{server.base}{MODEL}/versions/{version}", timeout=5)
        if answer.status_code == 200:
            states = [status["state"] for status in answer.json()["model_version_status"]]
            if states == ["AVAILABLE"]:
                return
            if "END" in states:
                raise SystemExit(f"version {version} failed to load: {answer.text}")
        time.sleep(POLL_S / 2)
    raise SystemExit(f"version {version} not AVAILABLE after {timeout_s:g} s")


def reload(server: Server, repository: Path, version: int, work: Path) -> None:
    """Version `version` copied in whole (a rename), served, and the version before it removed."""
    staged = work / f"staged-{version}"
    shutil.copytree(ROOT / "models" / "diabetes" / "1", staged)
    staged.rename(repository / "diabetes" / str(version))
    wait_available(server, version)
    shutil.rmtree(repository / "diabetes" / str(version - 1))


def memory(wrk: str, work: Path, args: argparse.Namespace) -> list[Row]:
    """RSS of one process over `args.memory_requests` mixed requests, then over `args.reloads` reloads."""
    repository = work / "repository"
    shutil.copytree(ROOT / "models" / "diabetes", repository / "diabetes")
    env = {"TAPESERVE_MODEL_DIR": str(repository), "TAPESERVE_MODEL_POLL_S": str(POLL_S)}
    bodies, targets = mixed_requests(work)
    with serve("tapeserve-memory", tapeserve_command(), env, work) as server:
        check(server, bodies, targets)
        sent = 0
        while sent < 1_000:
            sent += run_wrk(wrk, server, bodies, 4, 1, targets=targets).requests
        rss_early, sent_early = server.rss_mib(), sent
        while sent < args.memory_requests:
            sent += run_wrk(wrk, server, bodies, 8, min(10, args.seconds * 2), targets=targets).requests
        rss_late = server.rss_mib()
        for version in range(2, args.reloads + 2):
            reload(server, repository, version, work)
            run_wrk(wrk, server, bodies, 8, 1, targets=targets)  # the new version's functions, used
        rss_reloaded = server.rss_mib()
    return [
        (
            f"RSS after {sent_early:,} vs {sent:,} mixed model requests (MiB)",
            "",
            f"{rss_early:.0f} vs {rss_late:.0f}",
            f"{(rss_late / rss_early - 1) * 100:+.1f} %",
            "flat (within 10 %)",
        ),
        (
            f"RSS before vs after {args.reloads} version reloads, poll {POLL_S:g} s (MiB)",
            "",
            f"{rss_late:.0f} vs {rss_reloaded:.0f}",
            f"{(rss_reloaded / rss_late - 1) * 100:+.1f} %",
            "flat (within 10 %)",
        ),
    ]


def start_up(work: Path) -> list[Row]:
    """Fresh processes: start to `/readyz` 200, then each verb's first ten requests after the same quiet."""
    ready_after: list[float] = []
    spaced: dict[str, list[list[float]]] = {verb: [] for verb in VERB_BODIES}
    for start in range(FRESH_STARTS):
        with serve(f"tapeserve-fresh-{start}", tapeserve_command(), {}, work) as fresh:
            ready_after.append(fresh.ready_after_s)
            for verb, body in VERB_BODIES.items():
                posts = raw_posts(fresh, json.dumps(body).encode(), 10, pause=QUIET_S, path=f"{MODEL}:{verb}")
                spaced[verb].append(posts)
    rows: list[Row] = [
        (
            f"start-up with the example model: process start to /readyz 200 (s, median of {FRESH_STARTS})",
            "",
            f"{median(ready_after):.2f}",
            "",
            "≤ 6 s",
        )
    ]
    for verb, runs in spaced.items():
        first, tenth = median([series[0] for series in runs]), median([series[9] for series in runs])
        rows.append(
            (
                f":{verb} first request vs tenth, each after {QUIET_S * 1000:.0f} ms of quiet (ms, medians of "
                f"{FRESH_STARTS} fresh starts)",
                "",
                f"{first * 1000:.2f} vs {tenth * 1000:.2f}",
                f"{first / tenth:.2f}x",
                "first ≤ tenth",
            )
        )
    return rows


def report(rows: Sequence[Row], args: argparse.Namespace) -> str:
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores (shared), "
        f"Python {platform.python_version()}; `python -m bench.models --rounds {args.rounds} --seconds "
        f"{args.seconds:g} --memory-requests {args.memory_requests} --reloads {args.reloads}"
        f"{''.join(f' --only {part}' for part in args.only or ())}`: alternating "
        "rounds, medians."
    )
    table = ["| measure | reference | tapeserve | ratio | target |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    return header + "\n\n" + "\n".join(table) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.models")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per scenario")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one wrk run")
    parser.add_argument("--memory-requests", type=int, default=100_000)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="measure only this part (repeatable); the table is then printed, not written",
    )
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS)
    wrk = ensure_wrk() if parts & {"floor", "keras", "memory"} else ""  # bulk and start-up post on a bare socket
    work = Path(tempfile.mkdtemp(prefix="tapeserve-bench-models-"))
    rows: list[Row] = []
    if parts & {"floor", "keras", "bulk"}:
        with serve("tapeserve", tapeserve_command(), {}, work) as tapeserve:
            rows += floor(wrk, tapeserve, work, args) if "floor" in parts else []
            rows += against_keras(wrk, tapeserve, work, args) if "keras" in parts else []
            rows += bulk(tapeserve) if "bulk" in parts else []
    rows += memory(wrk, work, args) if "memory" in parts else []
    rows += start_up(work) if "start-up" in parts else []
    if args.only:
        print(report(rows, args))  # a part alone is not the table the README quotes
    else:
        publish(report(rows, args), "models.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
