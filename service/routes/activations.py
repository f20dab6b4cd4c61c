"""`/v1/activations`: the catalogue, activations with their local gradients, and the seed's figure as a PNG."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from schemas.activations import (
    ActivationCatalogue,
    ActivationsRequest,
    ActivationsResponse,
    PlotQuery,
)
from schemas.problems import PROBLEM_RESPONSES, QUERY_PROBLEM_RESPONSES
from service.adapters import activations as adapt
from service.compute.activations import default_grid, evaluate_activations
from service.compute.plots import plot_activations
from service.deps import SettingsDep, WorkerDep
from service.errors import DeadlineExceeded, QueueFull
from service.http import JSONBytesResponse, StrictJSONRoute, json_response

router = APIRouter(prefix="/v1/activations", tags=["activations"], route_class=StrictJSONRoute)

PLOT_CACHE_SIZE = 32
"""PNGs kept (about 80 kB each for the seed's four panels)."""
MAX_PENDING_PLOTS = 4
"""Renders running or waiting at most (429 beyond)."""


class PlotRenderer:
    """Renders PNGs in one thread of its own, never on the event loop or in FastAPI's shared thread pool.

    Rendering the seed's figure takes about a quarter of a second of matplotlib; done in the TensorFlow
    worker it would hold every queued gradient request behind it, so only the (millisecond) tape part
    runs there. Identical queries give identical bytes, so finished PNGs are kept in a small LRU.
    """

    def __init__(self, cache_size: int = PLOT_CACHE_SIZE, max_pending: int = MAX_PENDING_PLOTS) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tapeserve-plot")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._cache: OrderedDict[Hashable, tuple[bytes, str]] = OrderedDict()
        self._cache_size = cache_size
        self.renders = 0

    def close(self) -> None:
        """Stop the render thread (the app's lifespan calls this on shutdown)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def cached(self, key: Hashable) -> tuple[bytes, str] | None:
        """(png, etag) of an earlier identical query."""
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
        return found

    def _store(self, key: Hashable, png: bytes) -> tuple[bytes, str]:
        entry = (png, f'"{hashlib.sha256(png).hexdigest()[:32]}"')
        self._cache[key] = entry
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    async def render(self, key: Hashable, draw: Callable[..., bytes], *args: Any, deadline: float) -> tuple[bytes, str]:
        """(png, etag) of `draw(*args)`, run in the render thread within `deadline` (monotonic)."""
        if not self._slots.acquire(blocking=False):
            raise QueueFull(
                f"{MAX_PENDING_PLOTS} plots are already being rendered; retry shortly.", headers={"Retry-After": "1"}
            )
        try:
            job = self._executor.submit(draw, *args)
        except BaseException:
            self._slots.release()
            raise
        # the slot frees when the render ends, even if its request has given up waiting
        job.add_done_callback(lambda _: self._slots.release())
        try:
            png = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), max(deadline - time.monotonic(), 0))
        except TimeoutError:
            raise DeadlineExceeded("Rendering the plot took longer than the request's deadline.") from None
        self.renders += 1
        return self._store(key, png)


async def get_plot_renderer(request: Request) -> PlotRenderer:
    """The app's renderer, made on first use (no await between the check and the assignment)."""
    renderer: PlotRenderer | None = getattr(request.app.state, "plot_renderer", None)
    if renderer is None:
        renderer = PlotRenderer()
        request.app.state.plot_renderer = renderer
    return renderer


_CATALOGUE = ActivationCatalogue.model_validate(adapt.catalogue_document())


@router.get(
    "",
    response_model=ActivationCatalogue,
    summary="The activations the service knows: formula, derivative, parameters",
)
async def catalogue() -> JSONBytesResponse:
    return json_response(_CATALOGUE)


@router.post(
    "",
    response_model=ActivationsResponse,
    responses=PROBLEM_RESPONSES,
    summary="Activations and their local gradients from the tape, with what they do to the backward gradient",
    description="The seed's question for each activation: over z (default: the seed's linspace(-10, 10, 129)), "
    "does the gradient flowing back through it shrink or grow? Each `summary` answers from the numbers.",
)
async def activations(body: ActivationsRequest, worker: WorkerDep, settings: SettingsDep) -> JSONBytesResponse:
    z = adapt.decode_z(body, settings.max_elements)
    curves = await worker.run(evaluate_activations, body.activations, z, body.alpha, body.dtype)
    return json_response(
        adapt.encode_curves(
            curves,
            z,
            device=worker.pinned_device,
            dtype=body.dtype,
            alpha=body.alpha,
            encoding=body.response_encoding,
        )
    )


PNG_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The figure: one panel per activation, as in the seed."},
    304: {"description": "Not modified (If-None-Match matched the ETag)."},
}


@router.get(
    "/plot.png",
    response_class=Response,
    responses={**PNG_RESPONSE, **QUERY_PROBLEM_RESPONSES},
    summary="The seed's figure: each activation and its local gradient against z",
    description="One panel per activation (two columns up to four panels, three beyond; 400×400 px each), "
    "labelled as in the seed. Rendered off the event loop; identical queries are answered from a cache, "
    "with an ETag.",
)
async def plot(
    query: Annotated[PlotQuery, Query()],
    request: Request,
    worker: WorkerDep,
    settings: SettingsDep,
    renderer: Annotated[PlotRenderer, Depends(get_plot_renderer)],
) -> Response:
    adapt.check_points(query.num, settings.max_elements, ("query", "num"))
    names = query.names
    # alpha changes nothing without leaky_relu, so it does not split the cache
    alpha = query.alpha if "leaky_relu" in names else None
    key = (names, query.start, query.stop, query.num, alpha, query.theme)
    entry = renderer.cached(key)
    if entry is None:
        deadline = worker.deadline()
        z = default_grid(query.start, query.stop, query.num)
        curves = await worker.run(evaluate_activations, names, z, query.alpha, "float64", deadline=deadline)
        entry = await renderer.render(key, plot_activations, curves, z, query.theme, deadline=deadline)
    png, etag = entry
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)
