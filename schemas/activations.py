"""Activations (API.md §4): the catalogue, each activation and its local gradient over z, and the plot's query."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationInfo, field_validator, model_validator

from schemas.tensors import ResponseEncoding, TensorIn, TensorOut
from service.vocabulary import ACTIVATIONS, DEFAULT_ALPHA, ActivationName, FloatDType

ACTIVATION_NAMES: tuple[str, ...] = ACTIVATIONS
SEED_ACTIVATIONS: tuple[ActivationName, ...] = ("sigmoid", "tanh", "relu", "leaky_relu")
"""The four activations the seed plots."""
MAX_GRID_POINTS = 100_001
"""Most points of z one request evaluates (also bounded by TAPESERVE_MAX_ELEMENTS)."""
FLOAT32_MAX = 3.4028234663852886e38
PLOT_LIMIT = 1e12
"""Largest |start|, |stop| and |alpha| of the plot: matplotlib cannot scale axes whose span nears float64's
maximum (its tick arithmetic overflows), and nobody reads a figure of activations at 1e300."""

Theme = Literal["dark", "light"]

SEED_GRID: dict[str, Any] = {"start": -10.0, "stop": 10.0, "num": 129}
"""The seed's `tf.linspace(-10, 10, 129)`: step 0.15625, so z = 0 is a grid point."""


def _check_range(start: float, stop: float) -> None:
    if not start < stop:
        raise ValueError(f"stop ({stop:g}) must be greater than start ({start:g})")
    if not math.isfinite(stop - start):
        raise ValueError("the range from start to stop overflows float64")


def _stop_after_start(stop: float, info: ValidationInfo) -> float:
    start = info.data.get("start")
    if isinstance(start, float):
        _check_range(start, stop)
    return stop


class Grid(BaseModel):
    """Evenly spaced z from start to stop inclusive (numpy/TensorFlow linspace)."""

    model_config = ConfigDict(extra="forbid")

    start: float = Field(default=-10.0, allow_inf_nan=False, description="First z.")
    # validate_default: a start beyond the default stop is an error too
    stop: float = Field(
        default=10.0, allow_inf_nan=False, validate_default=True, description="Last z; greater than start."
    )
    num: StrictInt = Field(
        default=129,
        ge=2,
        le=MAX_GRID_POINTS,
        description=f"Number of points, 2 to {MAX_GRID_POINTS:,} (and at most TAPESERVE_MAX_ELEMENTS).",
    )

    _stop = field_validator("stop")(_stop_after_start)


class ActivationsRequest(BaseModel):
    """Which activations to evaluate, and where: a given `z`, a `grid`, or the seed's linspace(-10, 10, 129)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"activations": list(SEED_ACTIVATIONS)},
                {"activations": ["sigmoid", "leaky_relu"], "grid": SEED_GRID, "alpha": 0.2, "dtype": "float32"},
                {"activations": ["relu", "gelu"], "z": [-1.0, 0.0, 1.0]},
            ]
        },
    )

    activations: list[ActivationName] = Field(
        default_factory=lambda: list(SEED_ACTIVATIONS),
        min_length=1,
        max_length=len(ACTIVATION_NAMES),
        description="Activation names, each at most once (GET /v1/activations lists them). "
        "Default: the seed's sigmoid, tanh, relu, leaky_relu.",
    )
    z: TensorIn | None = Field(
        default=None,
        description="Where to evaluate: a Tensor of any shape (softmax/log_softmax act on its last axis), at most "
        f"{MAX_GRID_POINTS:,} elements. Exclusive with grid.",
    )
    grid: Grid | None = Field(default=None, description="Evenly spaced z. Default (no z, no grid): the seed's grid.")
    alpha: float = Field(
        default=DEFAULT_ALPHA,
        allow_inf_nan=False,
        description="Negative-side slope of leaky_relu (the seed's 0.01; tf.nn.leaky_relu's own default is 0.2). "
        "Ignored by the other activations.",
    )
    dtype: FloatDType = Field(
        default="float64",
        description="Compute precision. float64 by default: the seed's tf.linspace(-10, 10, 129) is float64.",
    )
    response_encoding: ResponseEncoding = Field(
        default="nested", description="nested: values as JSON arrays; b64: every tensor as base64 bytes."
    )

    @field_validator("activations")
    @classmethod
    def _each_once(cls, names: list[str]) -> list[str]:
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"each activation at most once; repeated: {', '.join(repeated)}")
        return names

    @model_validator(mode="after")
    def _z_or_grid(self) -> ActivationsRequest:
        if self.z is not None and self.grid is not None:
            raise ValueError("send z or grid, not both")
        grid = self.grid
        if self.dtype == "float32" and grid is not None and max(abs(grid.start), abs(grid.stop)) > FLOAT32_MAX:
            raise ValueError("the grid reaches beyond the float32 range; send dtype float64")
        return self


class GradientSummary(BaseModel):
    """How the local gradient scales the gradient flowing back through the activation, over every z."""

    max_abs_gradient: float = Field(description="Largest |local gradient|.")
    argmax_z: float = Field(description="The first z (in the order given) where |local gradient| is largest.")
    fraction_attenuating: float = Field(description="Fraction of z with |gradient| < 1: the backward gradient shrinks.")
    fraction_saturated: float = Field(description="Fraction of z with |gradient| < 1e-3: it shrinks 1000-fold.")
    amplifies: bool = Field(description="Whether |gradient| > 1 anywhere: the backward gradient grows there.")
    verdict: str = Field(description="One sentence: does the gradient flowing back shrink or grow, and where.")


class ActivationCurve(BaseModel):
    name: ActivationName
    values: TensorOut = Field(description="The activation at every z (z's shape).")
    gradients: TensorOut = Field(
        description="The local gradient from the tape at every z (TensorFlow's convention at kinks: ReLU′(0) = 0). "
        "softmax/log_softmax: the gradient of the sum of their outputs, what tape.gradient returns."
    )
    summary: GradientSummary


class ActivationsResponse(BaseModel):
    device: str = Field(description="The TensorFlow device the computation ran on.")
    dtype: FloatDType
    alpha: float = Field(description="The leaky_relu slope used.")
    z: TensorOut = Field(description="Where the activations were evaluated.")
    activations: list[ActivationCurve] = Field(description="In the order requested.")


class ActivationInfo(BaseModel):
    name: ActivationName
    formula: str = Field(description="The activation, in plain Unicode maths.")
    derivative: str = Field(description="Its derivative.")
    parameters: dict[str, float] = Field(description="Parameters a request may set, with their defaults.")
    notes: str = Field(description="Conventions at kinks, fixed constants, TensorFlow's own rounding.")


class ActivationCatalogue(BaseModel):
    activations: list[ActivationInfo]


class PlotQuery(BaseModel):
    """Query of GET /v1/activations/plot.png; the same limits as the grid of POST /v1/activations."""

    model_config = ConfigDict(extra="forbid")

    activations: str = Field(
        default=",".join(SEED_ACTIVATIONS),
        max_length=200,
        description="Comma-separated activation names, each at most once; one panel each, in this order.",
    )
    start: float = Field(
        default=-10.0,
        ge=-PLOT_LIMIT,
        le=PLOT_LIMIT,
        allow_inf_nan=False,
        description=f"First z, |start| ≤ {PLOT_LIMIT:g}.",
    )
    stop: float = Field(
        default=10.0,
        ge=-PLOT_LIMIT,
        le=PLOT_LIMIT,
        allow_inf_nan=False,
        validate_default=True,
        description=f"Last z; greater than start, |stop| ≤ {PLOT_LIMIT:g}.",
    )
    num: int = Field(default=129, ge=2, le=MAX_GRID_POINTS, description="Number of points of z.")
    alpha: float = Field(
        default=DEFAULT_ALPHA,
        ge=-PLOT_LIMIT,
        le=PLOT_LIMIT,
        allow_inf_nan=False,
        description=f"leaky_relu's slope, |alpha| ≤ {PLOT_LIMIT:g}.",
    )
    theme: Theme = Field(default="dark", description="dark: the seed's dark_background style; light: matplotlib's.")

    _stop = field_validator("stop")(_stop_after_start)

    @field_validator("activations")
    @classmethod
    def _known_names(cls, text: str) -> str:
        names = [name.strip() for name in text.split(",")]
        if not any(names):
            raise ValueError("name at least one activation")
        for name in names:
            if name not in ACTIVATION_NAMES:
                raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATION_NAMES)}")
            if names.count(name) > 1:
                raise ValueError(f"activation {name!r} is listed twice")
        return ",".join(names)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.activations.split(","))
