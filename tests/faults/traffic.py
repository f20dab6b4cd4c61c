"""The scenarios' load: closed-loop HTTP/1.1 keep-alive connections on raw asyncio streams, every request
and its answer recorded, every 200 checked against numbers computed here with numpy.

The mix is the service's three everyday computations: the seed network (and 15 variations of its sample),
a tape program and an activation's local gradient, each in 16 variants so that an answer sent to the wrong
request cannot pass. Every request the client begins counts as sent (one whose connection could not even be
opened too); as answered once a whole response (status line, headers and body) has come back. Nothing is
retried by the client: whatever nginx could not hide shows.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from schemas.networks import SEED_FEATURES, SEED_WEIGHTS

DROPPED = -1
"""Status of a request whose connection ended (or could not be opened) before a whole answer came."""
TIMED_OUT = -2
"""Status of a request that had no answer within the client's timeout."""
VARIANTS = 16
README_SEED_LOSS = 0.18348126
"""The seed's loss as the README shows it (float32)."""


@dataclass(frozen=True)
class Call:
    """One request ready to send (without its X-Request-ID line) and the check of its 200 body."""

    kind: str
    head: bytes
    body: bytes
    check: Callable[[Any], bool]


def close(got: Iterable[float], want: Iterable[float], rtol: float = 1e-4, atol: float = 1e-5) -> bool:
    pairs = list(zip(list(got), list(want), strict=False))
    return bool(pairs) and all(math.isclose(a, b, rel_tol=rtol, abs_tol=atol) for a, b in pairs)


def flat(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def http_request(path: str, payload: dict[str, Any]) -> tuple[bytes, bytes]:
    body = orjson.dumps(payload)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: tapeserve\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    ).encode()
    return head, body


def network_call(variant: int) -> Call:
    """The seed network; variant 0 is the seed's own sample, the others move it. dL/dW = (a − y) ⊗ x_B."""
    features = np.asarray(SEED_FEATURES) + variant * np.array([0.5, -1.0, 0.05])
    label = 0 if variant % 3 == 1 else 1  # the seed (variant 0) is labelled 1
    x_b = np.append(features, 1.0)
    z = np.asarray(SEED_WEIGHTS) @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    loss = float(-np.log(a[label]))
    gradient = flat(np.outer(a - np.eye(2)[label], x_b))
    head, body = http_request(
        "/v1/networks/gradients",
        {
            "features": features.tolist(),
            "labels": label,
            "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}],
        },
    )

    def check(answer: Any) -> bool:
        return close([answer["loss"]["values"]], [loss], rtol=1e-5) and close(
            flat(answer["gradients"][0]["weights"]["values"]), gradient
        )

    return Call("network", head, body, check)


def tape_call(variant: int) -> Call:
    """a = Σ x², whose gradient is 2x."""
    x = np.array([1.0, -2.0, 3.0]) * (1 + variant / 8)
    head, body = http_request(
        "/v1/tape",
        {
            "inputs": {"x": {"value": x.tolist()}},
            "program": "a = tf.reduce_sum(x * x)",
            "watch": ["x"],
            "compute": [{"kind": "gradient", "target": "a", "sources": ["x"]}],
        },
    )
    want_value, want_gradient = float((x * x).sum()), flat(2 * x)

    def check(answer: Any) -> bool:
        return close([answer["values"]["a"]["values"]], [want_value], rtol=1e-6) and close(
            answer["results"][0]["values"][0]["values"], want_gradient, rtol=1e-6
        )

    return Call("tape", head, body, check)


def activation_call(variant: int) -> Call:
    """σ(z) and σ'(z) = σ(z)(1 − σ(z))."""
    z = np.linspace(-3.0, 3.0, 5) + variant / 4
    s = 1 / (1 + np.exp(-z))
    head, body = http_request("/v1/activations", {"activations": ["sigmoid"], "z": z.tolist()})

    def check(answer: Any) -> bool:
        (result,) = answer["activations"]
        return close(result["values"]["values"], flat(s), rtol=1e-9) and close(
            result["gradients"]["values"], flat(s * (1 - s)), rtol=1e-9
        )

    return Call("activations", head, body, check)


def mixed_calls() -> list[Call]:
    """Networks, tapes and activations interleaved, every variant once."""
    return [make(variant) for variant in range(VARIANTS) for make in (network_call, tape_call, activation_call)]


def seed_calls() -> list[Call]:
    return [network_call(variant) for variant in range(VARIANTS)]


# ---------------------------------------------------------------------------------------------- recording
@dataclass
class Outcome:
    group: str
    kind: str
    request_id: str
    started: float
    """Seconds from the run's origin."""
    latency: float
    status: int
    correct: bool
    """A 200 whose numbers match, or a 429 that carries Retry-After."""


@dataclass
class Recorder:
    origin: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    run: str = field(default_factory=lambda: secrets.token_hex(4))
    """Prefix of this run's request ids, so that nginx's log of an earlier scenario cannot be mistaken for it."""

    def now(self) -> float:
        return time.monotonic() - self.origin


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        body = b""
    return status, headers, body


def judge(call: Call, status: int, headers: dict[str, str], body: bytes) -> bool:
    if status == 429:
        return headers.get("retry-after", "").isdigit()
    if status != 200:
        return False
    try:
        return call.check(orjson.loads(body))
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
        return False


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def exchange(
    stream: Stream | None, port: int, call: Call, request_id: str, timeout: float
) -> tuple[Stream | None, int, bool]:
    """Send one request (opening a connection if there is none); (the connection to reuse, status, correct)."""
    if stream is None:
        stream = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    reader, writer = stream
    try:
        writer.write(call.head + f"X-Request-ID: {request_id}\r\n\r\n".encode() + call.body)
        status, headers, body = await asyncio.wait_for(read_response(reader), timeout)
    except BaseException:
        writer.close()
        raise
    if headers.get("connection", "").lower() == "close":
        writer.close()
        return None, status, judge(call, status, headers, body)
    return stream, status, judge(call, status, headers, body)


async def connection(
    port: int,
    calls: Sequence[Call],
    recorder: Recorder,
    *,
    group: str,
    number: int,
    until: Callable[[], bool],
    timeout: float = 60.0,
) -> None:
    """One client connection: requests back to back until `until()`; reconnects after a lost connection."""
    stream: Stream | None = None
    turn = 0
    try:
        while not until():
            call = calls[(number * 7 + turn) % len(calls)]
            request_id = f"{recorder.run}-{group}-{number}-{turn}"
            turn += 1
            started = recorder.now()
            correct = False
            try:
                stream, status, correct = await exchange(stream, port, call, request_id, timeout)
            except TimeoutError:
                stream, status = None, TIMED_OUT
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                stream, status = None, DROPPED
                await asyncio.sleep(0.01)  # no busy loop against a closed port
            recorder.outcomes.append(
                Outcome(group, call.kind, request_id, started, recorder.now() - started, status, correct)
            )
    finally:
        if stream is not None:
            stream[1].close()


async def load(
    port: int, calls: Sequence[Call], recorder: Recorder, *, group: str, connections: int, until: Callable[[], bool]
) -> None:
    await asyncio.gather(
        *(connection(port, calls, recorder, group=group, number=number, until=until) for number in range(connections))
    )


# ---------------------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Phase:
    name: str
    start: float
    end: float


@dataclass(frozen=True)
class PhaseStats:
    phase: str
    sent: int
    answered: int
    failed: int
    retried: int
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1] if q < 100 else max(values)


def phase_stats(outcomes: Sequence[Outcome], phase: Phase, retried_ids: set[str]) -> PhaseStats:
    inside = [o for o in outcomes if phase.start <= o.started < phase.end]
    answered = [o for o in inside if o.status >= 100]
    statuses: dict[int, int] = {}
    for outcome in inside:
        statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
    latencies = sorted(o.latency * 1000 for o in answered if o.status == 200)
    return PhaseStats(
        phase=phase.name,
        sent=len(inside),
        answered=len(answered),
        failed=sum(not o.correct for o in inside),
        retried=sum(o.request_id in retried_ids for o in inside),
        p50_ms=percentile(latencies, 50),
        p99_ms=percentile(latencies, 99),
        statuses=dict(sorted(statuses.items())),
    )


def retried_request_ids(entries: Iterable[dict[str, Any]]) -> set[str]:
    """Requests nginx sent to more than one replica (its access log lists every upstream it tried)."""
    return {str(entry["request_id"]) for entry in entries if "," in str(entry.get("upstream", ""))}
