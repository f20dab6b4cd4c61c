"""`POST /v1/networks/gradients`: loss, gradients, local gradients and Jacobians of dense networks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request

from schemas.networks import NetworkRequest, NetworkResponse
from schemas.problems import PROBLEM_RESPONSES
from schemas.tensors import FloatDType
from service import codec
from service.compute.networks import NetworkProblem, NetworkResult, prepare_network
from service.http import HotRoute, JSONBytesResponse, StrictJSONRoute
from service.worker import Worker

router = APIRouter(prefix="/v1/networks", tags=["networks"], route_class=StrictJSONRoute)


TensorDecoder = Callable[..., np.ndarray]
"""`decoder(value, *loc)`: one request tensor as an array; `loc` is its location below the network body."""


def network_problem(
    body: NetworkRequest, tensor: TensorDecoder, dtype: FloatDType, includes: frozenset[str] = frozenset()
) -> NetworkProblem:
    """A network body's tensors, decoded by `tensor` and checked against each other by the compute layer."""
    return prepare_network(
        tensor(body.features, "features"),
        labels=body.labels,
        targets=None if body.targets is None else tensor(body.targets, "targets"),
        weights=[tensor(layer.weights, "layers", index, "weights") for index, layer in enumerate(body.layers)],
        activations=[layer.activation for layer in body.layers],
        alphas=[layer.alpha for layer in body.layers],
        bias=body.bias,
        loss=body.loss,
        reduction=body.reduction,
        dtype=dtype,
        includes=includes,
    )


def decode_network(body: NetworkRequest, max_elements: int) -> NetworkProblem:
    """The request's tensors as numpy arrays in its dtype."""

    def tensor(value: Any, *loc: str | int) -> np.ndarray:
        return codec.decode(value, ("body", *loc), max_elements=max_elements, dtype=body.dtype)

    return network_problem(body, tensor, body.dtype, frozenset(body.include))


def encode_network(result: NetworkResult, device: str, dtype: str, encoding: codec.Encoding) -> dict[str, Any]:
    def tensor(array: Any) -> dict[str, Any]:
        return codec.encode(array, encoding, finite=result.finite)

    document: dict[str, Any] = {
        "device": device,
        "dtype": dtype,
        "loss": tensor(result.loss),
        "predictions": tensor(result.predictions),
        "gradients": [
            {"layer": number, "weights": tensor(gradient)}
            for number, gradient in enumerate(result.weight_gradients, start=1)
        ],
    }
    if result.input_gradients is not None:
        document["input_gradients"] = tensor(result.input_gradients)
    if result.intermediates is not None:
        document["intermediates"] = [
            {"layer": number, **{name: tensor(value) for name, value in layer.items()}}
            for number, layer in enumerate(result.intermediates, start=1)
        ]
    for field, named in (("local_gradients", result.local_gradients), ("jacobians", result.jacobians)):
        if named is not None:
            document[field] = [
                {"target": target, "source": source, "value": tensor(value)} for target, source, value in named
            ]
    return document


@router.post(
    "/gradients",
    response_model=NetworkResponse,
    responses=PROBLEM_RESPONSES,
    summary="Loss, dL/dW, local gradients and Jacobians of a dense network on samples",
    description="The seed's 1-layer softmax network on a patient sample, generalised to any stack of dense layers "
    "and to batches. Layer numbers are 1-based.",
)
async def network_gradients(body: NetworkRequest, request: Request) -> JSONBytesResponse:
    return JSONBytesResponse(await answer_network(body, request.app))


async def answer_network(body: NetworkRequest, app: FastAPI) -> bytes:
    """The JSON answer to a validated network body (the same for the fast lane and the route above)."""
    worker: Worker = app.state.worker
    problem = decode_network(body, app.state.settings.max_elements)
    result = await worker.network_gradients(problem)
    return codec.render(encode_network(result, worker.pinned_device, body.dtype, body.response_encoding))


HOT_ROUTE = HotRoute(
    path="/v1/networks/gradients",
    model=NetworkRequest,
    answer=answer_network,
    arrays={"features": "if", "targets": "if", "labels": "i"},
)
"""The service's hottest operation, served by the fast lane (`service.http.FastLane`)."""
