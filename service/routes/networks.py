"""`POST /v1/networks/gradients`: loss, gradients, local gradients and Jacobians of dense networks."""

from __future__ import annotations

from fastapi import APIRouter, Request

from schemas.networks import NetworkRequest, NetworkResponse
from schemas.problems import PROBLEM_RESPONSES
from service.adapters import networks as adapt
from service.deps import SettingsDep, WorkerDep
from service.http import JSONBody, JSONBytesResponse, StrictJSONRoute, json_response

router = APIRouter(prefix="/v1/networks", tags=["networks"], route_class=StrictJSONRoute)

NETWORK_BODY = JSONBody(NetworkRequest, arrays=adapt.ARRAYS)


@router.post(
    "/gradients",
    response_model=NetworkResponse,
    responses=PROBLEM_RESPONSES,
    openapi_extra=NETWORK_BODY.openapi,
    summary="Loss, dL/dW, local gradients and Jacobians of a dense network on samples",
    description="The seed's 1-layer softmax network on a patient sample, generalised to any stack of dense layers "
    "and to batches. Layer numbers are 1-based.",
)
async def network_gradients(request: Request, worker: WorkerDep, settings: SettingsDep) -> JSONBytesResponse:
    body = await NETWORK_BODY.read(request)
    problem = adapt.decode_network(body.model, settings.max_elements, body.arrays)
    result = await worker.run("networks", problem)
    return json_response(
        adapt.encode_network(result, worker.pinned_device, body.model.dtype, body.model.response_encoding)
    )
