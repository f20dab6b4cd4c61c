"""`python -m bench.inprocess`: the CPU one seed request costs inside the app, without HTTP or a socket.

Sends `--clients` concurrent `POST /v1/networks/gradients` (the seed sample, no includes), or with `--route
predict` the example model's `:predict` of the seed's patient, straight into the ASGI app, with its lifespan
running and its warm-up done, in rounds of `--requests`, and prints, per request, the process's CPU time
(every thread: the event loop and TensorFlow's) and the event loop thread's alone: minimum and median over the
rounds after the first. Options take pieces away, so that what each one costs shows as a difference between
two runs of this module (alternate them: the machine is shared): `--generic` answers through FastAPI's generic
request handler instead of the route's direct call (a dependency override that hands out the app's own
worker), `--without NAME` leaves out a middleware by its class name, `--no-access-log` turns the access line
off, `--canned` answers every request after the first with the first one's recorded answer (the HTTP stack
alone, no body parsing, no TensorFlow). Run it with no other benchmark beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import uvloop
from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schemas.networks import SEED_FEATURES, SEED_REQUEST
from service.app import create_app
from service.deps import get_worker
from service.observability import configure_logging
from service.routes import networks
from service.settings import Settings
from service.worker import Worker

PREDICT_PATH = "/v1/models/diabetes:predict"
ROUTES: dict[str, tuple[str, str, bytes]] = {
    # name: (the request's path, the route's path template, the body)
    "networks": (
        networks.PATH,
        networks.PATH,
        json.dumps({key: value for key, value in SEED_REQUEST.items() if key != "include"}).encode(),
    ),
    "predict": (PREDICT_PATH, "/v1/models/{name:segment}:predict", json.dumps({"instances": [SEED_FEATURES]}).encode()),
}
PATH, TEMPLATE, BODY = ROUTES["networks"]


def scope() -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def post(app: ASGIApp) -> list[Message]:
    """One request through `app`; the messages it sent."""
    received = False
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal received
        if received:
            await asyncio.Event().wait()  # the client stays connected
        received = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope(), receive, send)
    return sent


def canned(app: FastAPI) -> None:
    """The route answers with its first answer from then on, reading the body and nothing else."""
    route = next(route for route in app.routes if getattr(route, "path", None) == TEMPLATE)
    real = route.app  # type: ignore[attr-defined]
    answer: list[Message] = []

    async def replay(scope: Scope, receive: Receive, send: Send) -> None:
        if not answer:
            await real(scope, receive, record)
        else:
            while (await receive()).get("more_body"):
                pass
        for message in answer:
            await send(message)

    async def record(message: Message) -> None:
        answer.append(message)

    route.app = replay  # type: ignore[attr-defined]


async def measure(app: FastAPI, clients: int, requests: int, rounds: int) -> list[tuple[float, float]]:
    """`(process CPU, loop-thread CPU)` in µs per request, one pair per round after the first."""
    figures = []
    async with app.router.lifespan_context(app):
        while not app.state.http_warm:
            await asyncio.sleep(0.05)
        for round_ in range(rounds + 1):
            left = requests

            async def client() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    sent = await post(app)
                    if sent[0]["status"] != 200:
                        raise SystemExit(f"a request answered {sent[0]['status']}")

            process, thread = time.process_time(), time.thread_time()
            await asyncio.gather(*(client() for _ in range(clients)))
            if round_:
                figures.append(
                    ((time.process_time() - process) / requests * 1e6, (time.thread_time() - thread) / requests * 1e6)
                )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess")
    parser.add_argument("--route", choices=sorted(ROUTES), default="networks")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--generic", action="store_true", help="through FastAPI's generic request handler")
    parser.add_argument("--without", action="append", default=[], metavar="MIDDLEWARE", help="a class name")
    parser.add_argument("--no-access-log", action="store_true")
    parser.add_argument("--canned", action="store_true", help="the HTTP stack alone: a recorded answer")
    args = parser.parse_args(argv)
    global PATH, TEMPLATE, BODY  # one route per run of the module
    PATH, TEMPLATE, BODY = ROUTES[args.route]
    configure_logging("info", stream=io.StringIO())  # the access lines are written, to memory
    app = create_app(Settings(access_log=not args.no_access_log))
    app.user_middleware = [layer for layer in app.user_middleware if layer.cls.__name__ not in args.without]  # type: ignore[attr-defined]
    if args.generic:

        async def own_worker(request: Request) -> Worker:
            worker: Worker = await get_worker(request)
            return worker

        app.dependency_overrides[get_worker] = own_worker
    if args.canned:
        canned(app)
    figures = uvloop.run(measure(app, args.clients, args.requests, args.rounds))
    result: dict[str, Any] = {"options": vars(args)}
    for index, name in enumerate(("process_us", "loop_us")):
        values = [figure[index] for figure in figures]
        result[name] = {"min": round(min(values), 1), "median": round(statistics.median(values), 1)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
