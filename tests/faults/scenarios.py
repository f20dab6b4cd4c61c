"""The four fault scenarios of the replicas-and-faults issue, at two lengths: SHORT for `make test`, FULL for
`make bench` (bench/faults.py). Each returns what happened; the tests and the bench judge and tabulate it.

(a) crash: 3 replicas behind nginx under mixed load; one is SIGKILLed, then restarted.
(b) drain: a rolling restart of all 3, one at a time, each with SIGTERM; the next only once nginx routes to the
    restarted one again (as a rollout waits for readiness).
(c) burst: ten times capacity against one replica behind nginx, then normal load again.
(d) slow clients: slow-loris connections trickling headers and bodies while real requests go on.
(e) model-repository faults: 3 replicas sharing one model repository, hammered with `:predict` through nginx,
    while a version is half-written, a corrupt one appears, the serving one is deleted and a new one added.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import uvloop

from tests.faults import repository as model_repository
from tests.faults.harness import ROOT, Nginx, Replica, ensure_nginx, get, start_replicas
from tests.faults.traffic import (
    Call,
    Outcome,
    Phase,
    PhaseStats,
    Recorder,
    load,
    mixed_calls,
    phase_stats,
    retried_request_ids,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Lengths:
    crash_connections: int
    crash_seconds: float
    kill_at: float
    restart_at: float
    drain_connections: int
    quiet_s: float
    """Normal load before and after each fault."""
    burst_connections: int
    burst_s: float
    normal_connections: int
    loris_connections: int
    loris_s: float
    probe_connections: int
    model_connections: int
    settle_s: float
    """How long a half-written version lies in the repository (several of the replicas' polls)."""


def _lengths(*, full: bool) -> Lengths:
    """Each length once, its short value (`make test`) beside its full one (`make bench`)."""

    def pick(short: T, long: T) -> T:
        return long if full else short

    return Lengths(
        crash_connections=pick(8, 64),
        crash_seconds=pick(8, 20),
        kill_at=pick(2, 5),
        restart_at=pick(4, 12),
        drain_connections=pick(8, 64),
        quiet_s=pick(2, 5),
        burst_connections=pick(320, 640),
        burst_s=pick(4, 10),
        normal_connections=8,
        loris_connections=200,
        loris_s=pick(5, 10),
        probe_connections=4,
        model_connections=64,
        settle_s=pick(1.5, 3.0),
    )


SHORT = _lengths(full=False)
FULL = _lengths(full=True)
"""Capacity here is the 64 connections at which one replica's throughput stops growing (see Performance):
the burst is ten times that."""


@dataclass
class Cluster:
    replicas: list[Replica]
    balancer: Nginx
    """nginx over every replica."""
    single: Nginx
    """nginx over replicas[0] alone (burst and slow clients)."""
    models: model_repository.Repository
    """The model repository every replica serves (read-only for them; the scenarios change it)."""


@dataclass
class Result:
    name: str
    phases: list[PhaseStats]
    outcomes: list[Outcome]
    notes: dict[str, Any] = field(default_factory=dict)
    retried: set[str] = field(default_factory=set)

    def overall(self) -> PhaseStats:
        return phase_stats(self.outcomes, Phase("all", 0, float("inf")), self.retried)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


class Stop:
    def __init__(self) -> None:
        self.set = False

    def __call__(self) -> bool:
        return self.set


class AccessLog:
    """nginx's access log read incrementally: how many answers came from a given replica so far."""

    def __init__(self, nginx: Nginx) -> None:
        self.path = nginx.directory / "access.log"
        self.offset = 0
        self.text = b""

    def answers_from(self, address: str) -> int:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        self.offset += len(chunk)
        self.text += chunk
        # the last upstream nginx tried is the one that answered
        return self.text.count(f'{address}","upstream_status":"'.encode())


async def wait_rejoined(log: AccessLog, replica: Replica, timeout: float = 30.0) -> float:
    """Seconds until nginx sends the (restarted) replica a request again."""
    loop = asyncio.get_running_loop()
    started, before = loop.time(), log.answers_from(replica.address)
    while log.answers_from(replica.address) == before:
        if loop.time() - started > timeout:
            raise AssertionError(f"nginx never routed to {replica.name} again")
        await asyncio.sleep(0.1)
    return loop.time() - started


async def under_load(
    port: int, calls: list[Call], connections: int, faults: Callable[[Recorder], Awaitable[None]]
) -> Recorder:
    """`connections` clients until `faults` has returned."""
    recorder, stop = Recorder(), Stop()
    clients = asyncio.create_task(load(port, calls, recorder, group="load", connections=connections, until=stop))
    try:
        await faults(recorder)
    finally:
        stop.set = True
        await clients
    return recorder


# ---------------------------------------------------------------------------------------------- (a) crash
async def crash(cluster: Cluster, lengths: Lengths) -> Result:
    victim = cluster.replicas[1]
    marks: dict[str, float] = {}
    log = AccessLog(cluster.balancer)

    async def faults(recorder: Recorder) -> None:
        await asyncio.sleep(lengths.kill_at)
        marks["kill"] = recorder.now()
        await asyncio.to_thread(victim.kill)
        await asyncio.sleep(max(lengths.restart_at - recorder.now(), 0))
        marks["restart"] = recorder.now()
        victim.start()
        await asyncio.to_thread(victim.wait_ready)
        marks["ready"] = recorder.now()
        marks["rejoined"] = marks["ready"] + await wait_rejoined(log, victim)
        await asyncio.sleep(max(lengths.crash_seconds - recorder.now(), lengths.quiet_s))

    recorder = await under_load(cluster.balancer.port, mixed_calls(), lengths.crash_connections, faults)
    phases = three_phases("killed → ready again", marks["kill"], marks["ready"])
    return summarize("(a) crash: SIGKILL 1 of 3, restart", recorder, phases, cluster.balancer, marks)


def three_phases(during: str, start: float, end: float, *, inner: tuple[float, float] | None = None) -> list[Phase]:
    """Before `start`, during (from `inner`'s first to its last, by default `start` to `end`), after `end`."""
    low, high = inner or (start, end)
    return [Phase("before", 0, start), Phase(f"during ({during})", low, high), Phase("after", end, float("inf"))]


def summarize(name: str, recorder: Recorder, phases: list[Phase], nginx: Nginx, notes: dict[str, Any]) -> Result:
    retried = retried_request_ids(nginx.access_entries())
    return Result(
        name,
        [phase_stats(recorder.outcomes, phase, retried) for phase in phases],
        recorder.outcomes,
        notes,
        retried,
    )


# ---------------------------------------------------------------------------------------------- (b) drain
async def drain(cluster: Cluster, lengths: Lengths) -> Result:
    marks: dict[str, Any] = {"exit_codes": [], "readyz_after_sigterm": [], "rejoined_after_s": []}
    log = AccessLog(cluster.balancer)

    async def faults(recorder: Recorder) -> None:
        await asyncio.sleep(lengths.quiet_s)
        marks["first_sigterm"] = recorder.now()
        for replica in cluster.replicas:
            replica.terminate()
            await asyncio.sleep(0.1)
            marks["readyz_after_sigterm"].append(await asyncio.to_thread(get, replica.port, "/readyz"))
            marks["exit_codes"].append(await asyncio.to_thread(replica.wait_exit))
            replica.start()
            await asyncio.to_thread(replica.wait_ready)
            marks["rejoined_after_s"].append(await wait_rejoined(log, replica))
        marks["last_rejoined"] = recorder.now()
        await asyncio.sleep(lengths.quiet_s)

    recorder = await under_load(cluster.balancer.port, mixed_calls(), lengths.drain_connections, faults)
    phases = three_phases("rolling SIGTERM → all back", marks["first_sigterm"], marks["last_rejoined"])
    return summarize("(b) rolling drain: SIGTERM 3 of 3 in turn", recorder, phases, cluster.balancer, marks)


# ---------------------------------------------------------------------------------------------- (c) burst
async def burst(cluster: Cluster, lengths: Lengths) -> Result:
    replica, port = cluster.replicas[0], cluster.single.port
    recorder, normal_stop, burst_stop = Recorder(), Stop(), Stop()
    calls = mixed_calls()
    rss: list[tuple[float, int]] = []

    async def sample_rss() -> None:
        while not normal_stop.set:
            rss.append((recorder.now(), replica.rss()))
            await asyncio.sleep(0.1)

    normal = asyncio.create_task(
        load(port, calls, recorder, group="normal", connections=lengths.normal_connections, until=normal_stop)
    )
    sampler = asyncio.create_task(sample_rss())
    await asyncio.sleep(lengths.quiet_s)
    start = recorder.now()
    await asyncio.gather(
        load(port, calls, recorder, group="burst", connections=lengths.burst_connections, until=burst_stop),
        _set_after(burst_stop, lengths.burst_s),
    )
    end = recorder.now()  # the burst's last answers have come back
    await asyncio.sleep(max(lengths.quiet_s, 3.0))
    normal_stop.set = True
    await asyncio.gather(normal, sampler)
    later = [o for o in recorder.outcomes if o.group == "normal" and o.started >= end]
    bad = [o for o in later if not (o.status == 200 and o.correct)]
    notes = {
        "burst_start": start,
        "burst_end": end,
        "rss_before": max(value for t, value in rss if t < start),
        "rss_peak": max(value for _, value in rss),
        "rss_after": rss[-1][1],
        # from the burst's end to the end of the last normal request that was not a correct 200
        "normal_after_s": max((o.started + o.latency - end for o in bad), default=0.0),
    }
    phases = three_phases(f"{lengths.burst_connections} connections", start, end)
    return summarize("(c) burst: 10× capacity, 1 replica", recorder, phases, cluster.single, notes)


async def _set_after(stop: Stop, seconds: float) -> None:
    await asyncio.sleep(seconds)
    stop.set = True


# ---------------------------------------------------------------------------------------------- (d) slow clients
async def slow_clients(cluster: Cluster, lengths: Lengths) -> Result:
    port = cluster.single.port
    recorder, stop = Recorder(), Stop()
    probes = asyncio.create_task(
        load(port, mixed_calls(), recorder, group="probe", connections=lengths.probe_connections, until=stop)
    )
    await asyncio.sleep(lengths.quiet_s)
    start = recorder.now()
    loris = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.faults.loris",
        str(port),
        str(lengths.loris_connections),
        str(lengths.loris_s),
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
    )
    output, _ = await loris.communicate()
    end = recorder.now()
    await asyncio.sleep(lengths.quiet_s)
    stop.set = True
    await probes
    tally = orjson.loads(output.splitlines()[-1])
    # the loris process needs a moment to start: "during" is while its connections are all open and trickling
    phases = three_phases(f"{lengths.loris_connections} slow clients", start, end, inner=(start + 1.0, end - 0.5))
    return summarize("(d) slow clients, 1 replica", recorder, phases, cluster.single, {"loris": tally})


# ---------------------------------------------------------------------------------------------- (e) models
AFTER_MARGIN_S = 2.0
"""Answers this long after every replica reported the last version serving come from it alone (a request
that started before may still finish on the version before)."""


async def model_faults(cluster: Cluster, lengths: Lengths) -> Result:
    models = cluster.models
    ports = [replica.port for replica in cluster.replicas]
    marks: dict[str, Any] = {}

    async def faults(recorder: Recorder) -> None:
        await asyncio.sleep(lengths.quiet_s)
        marks["first_fault"] = recorder.now()
        marks.update(await model_repository.make_faults(models, ports, recorder.now, lengths.settle_s))
        marks["last_truth"] = recorder.now()
        await asyncio.sleep(max(lengths.quiet_s, AFTER_MARGIN_S + 1.0))

    recorder = await under_load(cluster.balancer.port, models.calls(), lengths.model_connections, faults)
    phases = [
        Phase("before (version 1)", 0, marks["first_fault"]),
        Phase("during (half-written 2 → 4 serving)", marks["first_fault"], marks["last_truth"]),
        Phase("after (version 4)", marks["last_truth"], float("inf")),
    ]
    origin = recorder.origin
    marks["versions"] = {
        phase.name: model_repository.versions_between(models.seen, origin + phase.start, origin + phase.end)
        for phase in phases
    }
    marks["versions_settled"] = model_repository.versions_between(
        models.seen, origin + marks["last_truth"] + AFTER_MARGIN_S, float("inf")
    )
    name = f"(e) model repository faults, 3 replicas, {lengths.model_connections} connections"
    return summarize(name, recorder, phases, cluster.balancer, marks)


SCENARIOS: dict[str, Callable[[Cluster, Lengths], Coroutine[Any, Any, Result]]] = {
    "crash": crash,
    "drain": drain,
    "burst": burst,
    "slow_clients": slow_clients,
    "model_faults": model_faults,
}
"""In this order: the model faults leave a corrupt version in the repository, so they come last."""


def replica_env(short: bool, models: Path) -> dict[str, str]:
    env = {
        "TAPESERVE_LOG_LEVEL": "warning",
        "TAPESERVE_ACCESS_LOG": "false",
        "TAPESERVE_MODEL_DIR": str(models),
        "TAPESERVE_MODEL_POLL_S": "0.5",
    }
    if short:
        env |= {"TAPESERVE_DRAIN_GRACE_S": "1", "TAPESERVE_MAX_BATCH_REQUESTS": "8"}
    return env


def start_cluster(logs: Path, short: bool, count: int = 3) -> Cluster:
    """`count` replicas sharing one model repository, nginx over all of them and nginx over the first alone."""
    binary = ensure_nginx()
    models = model_repository.prepare(logs / "model-repository")
    replicas = start_replicas(count, replica_env(short, models.root), logs)
    balancer, single = Nginx(binary, [r.address for r in replicas]), Nginx(binary, [replicas[0].address])
    try:
        balancer.start()
        single.start()
    except BaseException:
        stop_cluster(Cluster(replicas, balancer, single, models))
        raise
    return Cluster(replicas, balancer, single, models)


def stop_cluster(cluster: Cluster) -> None:
    for nginx in (cluster.balancer, cluster.single):
        nginx.stop()
    for replica in cluster.replicas:
        replica.stop()


def promises(result: Result) -> dict[str, bool]:
    """What the scenario promises, each held or not (the tests assert the same, one by one)."""
    overall = result.overall()
    held = {"every request answered": overall.sent == overall.answered, "no failed request": overall.failed == 0}
    notes = result.notes
    if result.name.startswith("(a)"):
        held["only 200"] = set(overall.statuses) == {200}
    elif result.name.startswith("(b)"):
        held["only 200"] = set(overall.statuses) == {200}
        held["every replica exited 0"] = set(notes["exit_codes"]) == {0}
        held["/readyz said draining"] = all(answer[0] == 503 for answer in notes["readyz_after_sigterm"])
    elif result.name.startswith("(c)"):
        before, during, after = result.phases
        held["only 200 and 429 + Retry-After"] = set(overall.statuses) <= {200, 429} and 429 in during.statuses
        held["RSS bounded (+128 MiB)"] = notes["rss_peak"] <= notes["rss_before"] + 128 * 2**20
        held["normal within 2 s after"] = notes["normal_after_s"] <= 2.0 and set(after.statuses) == {200}
        held["p50 after within 2x before"] = after.p50_ms <= 2 * before.p50_ms
    elif result.name.startswith("(e)"):
        held["only 200"] = set(overall.statuses) == {200}
        held["status told the truth after every fault"] = all(
            step["truth_after_s"] is not None for step in notes["steps"]
        )
        held["every version served in turn"] = set(notes["versions"][result.phases[1].phase]) == {1, 2, 4}
        held["only version 4 once every replica serves it"] = set(notes["versions_settled"]) == {4}
    else:
        quiet, during, _ = result.phases
        loris = notes["loris"]
        held["slow clients answered"] = loris["correct"] == loris["sent"]
        held["p50 within 2x quiet"] = during.p50_ms <= 2 * quiet.p50_ms
    return held
