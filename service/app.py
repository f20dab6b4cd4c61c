"""The application factory: `create_app(settings)`, and `app` for `uvicorn service.app:app`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI

from schemas.networks import SEED_REQUEST
from service import __version__, codec, engines
from service.adapters.plots import PlotCache
from service.auth import install_auth
from service.compute.models.spec import DEFAULT_SIGNATURE
from service.docs import install_docs
from service.drain import Drain
from service.errors import install_error_handlers
from service.heap import settle_collector
from service.http import RequestContextMiddleware, call_self
from service.methods import install_methods
from service.models import ModelRepository
from service.observability import configure_logging, install_observability
from service.openapi import install_openapi, operation_id
from service.routes import activations, explanations, gradient_check, models, networks, system, tape
from service.settings import Settings
from service.worker import Worker

logger = logging.getLogger("tapeserve")
WARM_UP_ROUNDS = 8

DESCRIPTION = """\
TensorFlow's `GradientTape` as a REST service: post JSON tensors, weights and activation names; get back
losses, gradients, the gradients `tape.gradient` gives for non-scalar targets, and full Jacobians — with
shapes and values. Errors are RFC 9457 `application/problem+json`.
"""


async def warm_http(app: FastAPI, worker: Worker, settings: Settings) -> None:
    """Seed requests through the whole stack, so the first client's request is as fast as the tenth; the
    cyclic collector is settled when this ends, however it ends (service/heap.py)."""
    try:
        await _warm_requests(app, worker, settings)
    finally:
        settle_collector()
    app.state.http_warm = True


async def _warm_requests(app: FastAPI, worker: Worker, settings: Settings) -> None:
    await worker.wait_ready()
    headers = [(b"content-type", b"application/json"), (b"x-request-id", b"warm-up")]
    if settings.api_key_list:
        headers.append((b"authorization", f"Bearer {settings.api_key_list[0]}".encode()))
    plain = {key: value for key, value in SEED_REQUEST.items() if key != "include"}
    # several rounds: Python 3.11 specialises bytecode only after a few runs of the same path
    seeds = [("POST", "/v1/networks/gradients", body) for body in [codec.render(SEED_REQUEST), codec.render(plain)]]
    # the op table is read in the worker once: read before ready, a full queue cannot refuse it later
    for method, path, body in [*seeds * WARM_UP_ROUNDS, ("GET", "/v1/ops", b"")]:
        status = await call_self(app, method, path, body, headers)
        if status != 200:
            logger.warning("a warm-up request to %s answered %s", path, status)
    # the served models' routes, adapters and answers: once the models found at start have loaded
    await asyncio.to_thread(app.state.models.wait_ready)
    for path, body in model_warm_ups(app.state.models) * WARM_UP_ROUNDS:
        status = await call_self(app, "POST", path, body, headers)
        if status != 200:
            logger.debug("a warm-up request to %s answered %s", path, status)


def model_warm_ups(models: ModelRepository) -> list[tuple[str, bytes]]:
    """One request of each verb (`:gradients` by output and by class) on zeros of one instance, for the
    default signature of every model serving: what a first client's request runs through besides the
    compiled functions its version warmed before it turned AVAILABLE. Signatures with an input of unknown
    rank are left out (nothing to shape the zeros by)."""
    found: list[tuple[str, bytes]] = []
    for name, versions in models.listing():
        if not versions:
            continue
        with models.lease(name) as lease:
            signature = lease.signatures.get(DEFAULT_SIGNATURE)
        if signature is None or any(info.shape is None for info in signature.inputs.values()):
            continue
        rows = [
            {key: np.zeros([1 if size is None else size for size in (info.shape or ())[1:]], info.dtype).tolist()}
            for key, info in signature.inputs.items()
        ]
        instance = next(iter(rows[0].values())) if len(rows) == 1 else {k: v for row in rows for k, v in row.items()}
        plain = {"instances": [instance]}
        for verb, body in (
            ("predict", plain),
            ("gradients", plain),
            ("gradients", {**plain, "class_index": 0}),
            ("jacobian", plain),
            ("explain", plain),
        ):
            found.append((f"/v1/models/{name}:{verb}", codec.render(body)))
    return found


def create_app(settings: Settings | None = None) -> FastAPI:
    """A tapeserve application; its lifespan starts the TensorFlow worker and drains it on shutdown."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = Worker(settings)
        engines.install(worker)
        await worker.start()
        app.state.worker = worker
        # the repository's loader thread pins its TensorFlow work to the worker's device
        app.state.models.start(worker.pinned_device)
        app.state.http_warm = not settings.warmup
        warming = asyncio.create_task(warm_http(app, worker, settings)) if settings.warmup else None
        if warming is None:
            settle_collector()  # nothing more to warm
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
            await asyncio.to_thread(app.state.models.stop)
            await worker.stop()

    app = FastAPI(
        title="tapeserve",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # install_docs serves both pages with local assets
        redoc_url=None,
        generate_unique_id_function=operation_id,
        telemetry=None if settings.opentelemetry else {"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.plot_cache = PlotCache()
    app.state.drain = Drain()  # set by SIGTERM (service/drain.py), read by /readyz
    app.state.models = ModelRepository(settings)  # started by the lifespan
    networks.install(app)  # the busiest route, first in the table the router walks
    install_error_handlers(app)
    # middleware added later wraps what came before: observability (outermost) > request context > auth > methods
    install_methods(app)
    install_auth(app, settings.api_key_list)
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_body_bytes)
    install_observability(app, access_log=settings.access_log)
    # busier routes first: the router tries them in order
    models.install(app)  # on the app's router, as networks: each a direct call
    for module in (system, tape, activations, gradient_check, explanations):
        app.include_router(module.router)
    install_docs(app)
    install_openapi(app)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app` gets an app built from the environment, only when asked for
    if name == "app":
        settings = Settings()
        configure_logging(settings.log_level, flush_interval=settings.log_flush_s)
        return create_app(settings)
    raise AttributeError(name)
