"""`/v1/activations`: a body or a plot query -> the grid of z; `ActivationCurve`s -> the response document;
the compute catalogue -> `GET /v1/activations`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from schemas.activations import MAX_GRID_POINTS, ActivationsRequest, Grid
from service import codec
from service.adapters.errors import located
from service.compute.activation_curves import CATALOGUE, ActivationCurve, check_activations, default_grid
from service.engines import Call
from service.errors import LimitExceeded, Loc


def check_points(count: int, max_elements: int, loc: Loc) -> None:
    """422 at `loc` when z would hold more points than one request may evaluate."""
    limit = min(MAX_GRID_POINTS, max_elements)
    if count > limit:
        raise LimitExceeded.at(
            loc,
            f"{count:,} points of z exceed the limit of {limit:,} (at most {MAX_GRID_POINTS:,}, and "
            "TAPESERVE_MAX_ELEMENTS)",
        )


def decode_z(body: ActivationsRequest, max_elements: int) -> np.ndarray:
    """The body's z, or its grid's (the seed's by default), in the body's dtype; the activations, alpha and
    dtype checked against it, so that the computation's own checks answer before the job queues."""
    if body.z is not None:
        z = codec.decode(body.z, ("body", "z"), max_elements=max_elements, dtype=body.dtype)
        check_points(z.size, max_elements, ("body", "z"))
    else:
        grid = body.grid or Grid()
        check_points(grid.num, max_elements, ("body", "grid", "num"))
        z = default_grid(grid.start, grid.stop, grid.num).astype(body.dtype)
    with located():
        check_activations(body.activations, z, body.alpha, body.dtype)
    return z


def grid(start: float, stop: float, num: int) -> np.ndarray:
    """The plot query's z: `num` points from `start` to `stop` (the seed's linspace)."""
    return default_grid(start, stop, num)


def evaluation(names: Sequence[str], z: np.ndarray, alpha: float, dtype: str) -> Call:
    """The activations engine's job: each named activation and its local gradient at every z."""
    return Call("evaluate_activations", {"names": names, "z": z, "alpha": alpha, "dtype": dtype})


def encode_curves(
    curves: Sequence[ActivationCurve], z: Any, *, device: str, dtype: str, alpha: float, encoding: codec.Encoding
) -> dict[str, Any]:
    """The response document (an `ActivationsResponse`)."""
    return {
        "device": device,
        "dtype": dtype,
        "alpha": alpha,
        "z": codec.encode(np.asarray(z, dtype=dtype), encoding),
        "activations": [
            {
                "name": curve.name,
                "values": codec.encode(curve.values, encoding),
                "gradients": codec.encode(curve.gradients, encoding),
                "summary": {
                    "max_abs_gradient": curve.summary.max_abs_gradient,
                    "argmax_z": curve.summary.argmax_z,
                    "fraction_attenuating": curve.summary.fraction_attenuating,
                    "fraction_saturated": curve.summary.fraction_saturated,
                    "amplifies": curve.summary.amplifies,
                    "verdict": curve.summary.verdict,
                },
            }
            for curve in curves
        ],
    }


def catalogue_document() -> dict[str, Any]:
    """The `ActivationCatalogue` document: formula, derivative and parameters of every activation."""
    return {
        "activations": [
            {
                "name": info.name,
                "formula": info.formula,
                "derivative": info.derivative,
                "parameters": info.parameters,
                "notes": info.notes,
            }
            for info in CATALOGUE.values()
        ]
    }
