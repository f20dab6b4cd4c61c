"""`POST /v1/networks/gradients`: loss, gradients, local gradients and Jacobians of dense networks.

The busiest route is registered on the app itself (`install`), first in its route table, rather than
through an `APIRouter`: FastAPI matches an included router's routes through a wrapper on every request.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute

from schemas.networks import NetworkRequest, NetworkResponse
from schemas.problems import PROBLEM_RESPONSES
from service.adapters import networks as adapt
from service.deps import WorkerDep
from service.http import DirectRoute, JSONBody, JSONBytesResponse, json_response

PATH = "/v1/networks/gradients"
NETWORK_BODY = JSONBody(NetworkRequest, arrays=adapt.ARRAYS)


async def network_gradients(request: Request, worker: WorkerDep) -> JSONBytesResponse:
    # the settings are the worker's (the app's one object): a second dependency costs every request
    body = await NETWORK_BODY.read(request)
    problem = adapt.decode_network(body.model, worker.settings.max_elements, body.arrays)
    result = await worker.run("networks", problem)
    return json_response(
        adapt.encode_network(result, worker.pinned_device, body.model.dtype, body.model.response_encoding)
    )


def install(app: FastAPI, route_class: type[APIRoute] = DirectRoute) -> None:
    """Add the route to `app` (call it before any router is included, so that it is tried first); a
    `DirectRoute`, which spares it FastAPI's generic request handler."""
    app.router.add_api_route(
        PATH,
        network_gradients,
        route_class_override=route_class,
        methods=["POST"],
        tags=["networks"],
        response_model=NetworkResponse,
        responses=PROBLEM_RESPONSES,
        openapi_extra=NETWORK_BODY.openapi,
        summary="Loss, dL/dW, local gradients and Jacobians of a dense network on samples",
        description="The seed's 1-layer softmax network on a patient sample, generalised to any stack of dense "
        "layers and to batches. Layer numbers are 1-based.",
    )
