"""`python -m bench.load_latency`: `:predict` latency of one served model, quiet and while another model loads.

Starts `tapeserve serve` on a temporary repository holding the example model (`diabetes`) and a second one,
`mlp` (a Keras MLP: 32 inputs, eight 512-unit Dense layers, a 2-unit softmax), polled every `POLL_S`. For 1
and 8 clients (asyncio tasks sharing one httpx client, each sending `:predict` of one instance of the example
model in a loop) it measures `--seconds` quiet, then `--seconds` while `mlp` gets a new version published
(a folder renamed in whole) each time the one before turned AVAILABLE, the version before removed; p50 and
p99 of each phase, its requests per second, the loads finished and any request that failed.

`--tree LABEL=PATH` (repeatable) compares source trees (each server runs from its tree) in alternating rounds
(`--rounds`, medians of the rounds); `--env LABEL=KEY=VALUE` sets an environment variable for one of them. The
default is this tree alone. Run it with no other benchmark beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import httpx
import numpy as np

from bench.__main__ import ROOT, Server, median, serve, tapeserve_command
from schemas.networks import SEED_FEATURES

PREDICT = "/v1/models/diabetes:predict"
BODY = b'{"instances": [[' + ", ".join(str(value) for value in SEED_FEATURES).encode() + b"]]}"
LOADED = "mlp"
POLL_S = 0.2
"""The repository's poll interval (TAPESERVE_MODEL_POLL_S)."""
CLIENTS = (1, 8)
MLP_INPUTS, MLP_UNITS, MLP_LAYERS = 32, 512, 8


def write_mlp(folder: Path) -> None:
    """The loaded model's version folder (in a process of its own: the bench itself never imports TensorFlow)."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((MLP_INPUTS,), name="features")
    hidden = inputs
    for index in range(MLP_LAYERS):
        hidden = keras.layers.Dense(MLP_UNITS, activation="relu", name=f"dense_{index}")(hidden)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(hidden)
    folder.mkdir(parents=True)
    keras.Model(inputs, outputs).save(folder / "model.keras")


@dataclass
class Phase:
    """One phase's latencies (seconds) and what went wrong."""

    seconds: list[float] = field(default_factory=list)
    failures: int = 0
    elapsed: float = 0.0
    loads: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.array(self.seconds), q)) * 1000 if self.seconds else float("nan")

    @property
    def rps(self) -> float:
        return len(self.seconds) / self.elapsed if self.elapsed else 0.0


async def clients(client: httpx.AsyncClient, base: str, count: int, seconds: float, phase: Phase) -> None:
    """`count` clients sending `:predict` one after another for `seconds`."""
    deadline = time.monotonic() + seconds

    async def one() -> None:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                answer = await client.post(base + PREDICT, content=BODY, headers={"content-type": "application/json"})
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                phase.seconds.append(time.perf_counter() - started)
            else:
                phase.failures += 1

    started = time.monotonic()
    await asyncio.gather(*(one() for _ in range(count)))
    phase.elapsed = time.monotonic() - started


async def available(client: httpx.AsyncClient, base: str, version: int) -> bool:
    answer = await client.get(f"{base}/v1/models/{LOADED}/versions/{version}")
    if answer.status_code != 200:
        return False
    states = [status["state"] for status in answer.json()["model_version_status"]]
    if "END" in states:
        raise SystemExit(f"{LOADED} version {version} failed to load: {answer.text}")
    return states == ["AVAILABLE"]


@dataclass
class Publishing:
    """Where new versions of the loaded model go, and from what."""

    base: str
    repository: Path
    source: Path
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def publisher(where: Publishing, first: int, phase: Phase) -> int:
    """Versions `first`, `first + 1`... of the loaded model, each once the one before serves, until `where.stop`;
    the next version."""
    base, repository, source, stop = where.base, where.repository, where.source, where.stop
    version = first
    async with httpx.AsyncClient(timeout=60) as status:
        while not stop.is_set():
            staged = repository / f".staged-{version}"
            await asyncio.to_thread(shutil.copytree, source, staged)
            staged.rename(repository / LOADED / str(version))
            while not await available(status, base, version):
                await asyncio.sleep(0.05)
            await asyncio.to_thread(shutil.rmtree, repository / LOADED / str(version - 1))
            phase.loads += 1
            version += 1
    return version


async def measure(server: Server, repository: Path, source: Path, seconds: float) -> dict[int, tuple[Phase, Phase]]:
    """Per client count: the quiet phase, then the phase under back-to-back loads."""
    found: dict[int, tuple[Phase, Phase]] = {}
    version = 2
    limits = httpx.Limits(max_connections=max(CLIENTS), max_keepalive_connections=max(CLIENTS))
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await clients(client, server.base, max(CLIENTS), 1.0, Phase())  # connections opened, paths warm
        for count in CLIENTS:
            quiet, loading = Phase(), Phase()
            await clients(client, server.base, count, seconds, quiet)
            where = Publishing(server.base, repository, source)
            publishing = asyncio.create_task(publisher(where, version, loading))
            await clients(client, server.base, count, seconds, loading)
            where.stop.set()
            version = await publishing
            found[count] = (quiet, loading)
    return found


def run_once(tree: Path, env: dict[str, str], label: str, work: Path, seconds: float) -> dict[int, tuple[Phase, Phase]]:
    repository = work / f"repository-{label}"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(ROOT / "models" / "diabetes", repository / "diabetes")
    shutil.copytree(work / "mlp", repository / LOADED / "1")
    env = {"TAPESERVE_MODEL_DIR": str(repository), "TAPESERVE_MODEL_POLL_S": str(POLL_S), **env}
    with serve(f"tapeserve-{label}", tapeserve_command(), env, work, cwd=tree) as server:
        return asyncio.run(measure(server, repository, work / "mlp", seconds))


def row(label: str, count: int, runs: list[tuple[Phase, Phase]]) -> str:
    def m(index: int, figure: str) -> str:
        phases = [run[index] for run in runs]
        if figure == "rps":
            return f"{median([phase.rps for phase in phases]):,.0f}"
        return f"{median([phase.percentile(float(figure)) for phase in phases]):.2f}"

    loads = sum(run[1].loads for run in runs) / len(runs)
    failed = sum(run[0].failures + run[1].failures for run in runs)
    return (
        f"| {label} | {count} | {m(0, '50')} / {m(0, '99')} | {m(1, '50')} / {m(1, '99')} | "
        f"{m(0, 'rps')} / {m(1, 'rps')} | {loads:.1f} | {failed} |"
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load_latency")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds over the trees")
    parser.add_argument("--tree", action="append", default=[], metavar="LABEL=PATH", help="a source tree to serve")
    parser.add_argument("--env", action="append", default=[], metavar="LABEL=KEY=VALUE", help="for one tree")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    trees = dict(entry.split("=", 1) for entry in args.tree) or {"tapeserve": str(ROOT)}
    envs: dict[str, dict[str, str]] = {label: {} for label in trees}
    for entry in args.env:
        label, key, value = entry.split("=", 2)
        envs[label][key] = value
    work = Path(tempfile.mkdtemp(prefix="tapeserve-bench-load-latency-"))
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        pool.submit(write_mlp, work / "mlp").result()
    results: dict[str, list[dict[int, tuple[Phase, Phase]]]] = {label: [] for label in trees}
    for _ in range(args.rounds):
        for label, tree in trees.items():
            found = run_once(Path(tree), envs[label], label, work, args.seconds)
            results[label].append(found)
            for count, (quiet, loading) in found.items():  # each round as it ends, to see the spread
                print(
                    f"{label}, {count} client(s): quiet {quiet.percentile(50):.2f} / {quiet.percentile(99):.2f} ms, "
                    f"loading {loading.percentile(50):.2f} / {loading.percentile(99):.2f} ms, {loading.loads} loads",
                    file=sys.stderr,
                )
    print(
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} cores (shared), "
        f"load average {os.getloadavg()[0]:.1f}; `python -m bench.load_latency --seconds {args.seconds:g} "
        f"--rounds {args.rounds}`: {args.seconds:g} s per phase, medians of {args.rounds} round(s)\n"
    )
    print(
        "| tree | clients | quiet p50 / p99 (ms) | while loading p50 / p99 (ms) | req/s quiet / loading | loads "
        "| failed |\n|---|---|---|---|---|---|---|"
    )
    for label, runs in results.items():
        for count in CLIENTS:
            print(row(label, count, [run[count] for run in runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
