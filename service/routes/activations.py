"""`/v1/activations`: the catalogue, activations with their local gradients, and the seed's figure as a PNG."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from schemas.activations import (
    ActivationCatalogue,
    ActivationsRequest,
    ActivationsResponse,
    PlotQuery,
)
from schemas.problems import PROBLEM_RESPONSES, QUERY_PROBLEM_RESPONSES
from service.adapters import activations as adapt
from service.deps import PlotCacheDep, SettingsDep, WorkerDep
from service.engines import Call
from service.http import JSONBytesResponse, StrictJSONRoute, json_response

router = APIRouter(prefix="/v1/activations", tags=["activations"], route_class=StrictJSONRoute)


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
    curves = await worker.run("activations", adapt.evaluation(body.activations, z, body.alpha, body.dtype))
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
    cache: PlotCacheDep,
) -> Response:
    adapt.check_points(query.num, settings.max_elements, ("query", "num"))
    names = query.names
    # alpha changes nothing without leaky_relu, so it does not split the cache
    alpha = query.alpha if "leaky_relu" in names else None
    key = (names, query.start, query.stop, query.num, alpha, query.theme)
    entry = cache.get(key)
    if entry is None:
        deadline = worker.deadline()
        z = adapt.grid(query.start, query.stop, query.num)
        curves = await worker.run("activations", adapt.evaluation(names, z, query.alpha, "float64"), deadline)
        figure = Call("plot_activations", {"curves": curves, "z": z, "theme": query.theme})
        entry = cache.store(key, await worker.run("plots", figure, deadline))
    png, etag = entry
    headers = {"ETag": etag, "Cache-Control": "public, max-age=86400"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)
