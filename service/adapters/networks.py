"""`POST /v1/networks/gradients`: a network body -> `NetworkProblem`; `NetworkResult` -> the response document."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from schemas.networks import NetworkRequest
from service import codec
from service.adapters.errors import located
from service.compute.networks import NetworkProblem, NetworkResult, prepare_network, prepare_small_network
from service.vocabulary import FloatDType

TensorDecoder = Callable[..., np.ndarray]
"""`decoder(value, *loc)`: one request tensor as an array; `loc` is its location below the network body."""

ARRAYS: Mapping[str, codec.ArrayField] = {
    "features": codec.ArrayField("if"),
    "targets": codec.ArrayField("if"),
    "labels": codec.ArrayField("i", ranks=(1,), tensor=False),
}
"""The fields of a large network body read straight into numpy (see `codec.parse`)."""


def network_problem(
    body: NetworkRequest,
    tensor: TensorDecoder,
    dtype: FloatDType,
    includes: frozenset[str] = frozenset(),
    labels: Any = None,
) -> NetworkProblem:
    """A network body's tensors, decoded by `tensor` and checked against each other by the compute layer;
    `labels`, when given, stands for the body's (read straight into numpy). Compute errors keep their
    locations relative to the network body (the caller places them with `errors.located`)."""
    return prepare_network(
        tensor(body.features, "features"),
        labels=body.labels if labels is None else labels,
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


def decode_network(
    body: NetworkRequest, max_elements: int, decoded: Mapping[str, np.ndarray] | None = None
) -> NetworkProblem:
    """The request's tensors as numpy arrays in its dtype; `decoded` holds the top-level fields the parser
    read straight into numpy (their place in `body` holds a stand-in)."""
    arrays = decoded or {}

    def tensor(value: Any, *loc: str | int) -> np.ndarray:
        field = loc[0] if len(loc) == 1 else None
        read = arrays.get(field, value) if isinstance(field, str) else value
        return codec.decode(read, ("body", *loc), max_elements=max_elements, dtype=body.dtype)

    with located():
        problem = None if arrays else small_network_problem(body, max_elements)
        return problem or network_problem(body, tensor, body.dtype, frozenset(body.include), arrays.get("labels"))


def small_network_problem(body: NetworkRequest, max_elements: int) -> NetworkProblem | None:
    """The problem of a body whose tensors are small nested lists, without the codec's and numpy's steps
    (`prepare_small_network`); None for any other body. The busiest request (one patient) takes this way:
    its per-call steps were a quarter of the event loop's time per request under load."""
    layers = body.layers
    return prepare_small_network(
        (body.features, [layer.weights for layer in layers], body.targets),
        labels=body.labels,
        layers=([layer.activation for layer in layers], [layer.alpha for layer in layers]),
        options=(body.bias, body.loss, body.reduction, body.dtype, body.include),
        max_elements=max_elements,
    )


def encode_network(result: NetworkResult, device: str, dtype: str, encoding: codec.Encoding) -> dict[str, Any]:
    """The response document (a `NetworkResponse`, numpy arrays inside; see `codec.render`)."""

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
