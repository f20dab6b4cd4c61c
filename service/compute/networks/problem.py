"""What a network request is and what it answers: the network (`NetworkStructure`), the request's structure
(`NetworkSpec`), its validated arrays (`NetworkProblem`) and its answer (`NetworkResult`), with the vocabulary
and the seed's case. numpy only."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from service import vocabulary
from service.compute.buckets import next_power_of_two

Loss = vocabulary.LossName
Reduction = vocabulary.ReductionName
Include = vocabulary.IncludeName
Bias = vocabulary.BiasName
FloatDType = vocabulary.FloatDType

LOSSES: tuple[str, ...] = vocabulary.LOSSES
REDUCTIONS: tuple[str, ...] = vocabulary.REDUCTIONS
INCLUDES: tuple[str, ...] = vocabulary.INCLUDES
BIASES: tuple[str, ...] = vocabulary.BIASES
FLOAT_DTYPES: tuple[str, ...] = vocabulary.FLOAT_DTYPES

Array = npt.NDArray[Any]

SEED_FEATURES = (76.0, 120.0, 37.5)
"""The seed's patient: heart rate 76 BPM, blood pressure 120 mm Hg, temperature 37.5 °C."""
SEED_LABEL = 1
"""The patient is diabetic: class 1, the seed's y = [0, 1]."""
SEED_WEIGHTS = ((0.01, -0.02, 0.03, 0.01), (-0.01, 0.02, -0.015, 0.02))
"""A fixed W¹ of shape (2, 4) for the seed's 1-layer softmax network (the notebook draws it at random); the same
values as the OpenAPI example in `schemas.networks`, so the warm-up computes what the docs show."""


@dataclass(frozen=True)
class NetworkStructure:
    """The network itself: its layers' weight shapes, their activations, how it takes a bias, and its dtype."""

    layer_shapes: tuple[tuple[int, int], ...]
    activations: tuple[str, ...]
    bias: Bias
    dtype: FloatDType

    @property
    def units(self) -> int:
        """Outputs of the last layer."""
        return self.layer_shapes[-1][0]

    @property
    def widest(self) -> int:
        """Elements per evaluated point of the largest tensor the forward pass makes."""
        return max(max(shape) for shape in self.layer_shapes)


@dataclass(frozen=True)
class NetworkSpec(NetworkStructure):
    """The structure of a request: everything a compiled function depends on (its cache key)."""

    loss: Loss
    reduction: Reduction
    includes: frozenset[str]
    single: bool
    batch: int
    """Samples per request rounded up to a power of two: batches of 5 to 8 share one compiled function."""

    @property
    def inputs(self) -> int:
        """Features per sample (the first layer's columns, without the bias column)."""
        return self.layer_shapes[0][1] - (1 if self.bias == "augmented" else 0)


# eq=False: numpy fields make value equality ambiguous; a problem is compared by identity.
@dataclass(frozen=True, eq=False)
class NetworkProblem:
    """The validated, normalised arrays of one request."""

    spec: NetworkSpec
    features: Array
    targets: Array
    weights: tuple[Array, ...]
    alphas: tuple[float, ...]

    @property
    def samples(self) -> int:
        """The request's real number of samples (spec.batch may be larger: padded rows are masked out)."""
        return int(self.features.shape[0])


SpecFields = tuple[
    tuple[tuple[int, int], ...], tuple[str, ...], Bias, FloatDType, Loss, Reduction, frozenset[str], bool
]
"""A `NetworkSpec`'s fields but the batch bucket, in order."""


@functools.lru_cache(maxsize=1024)
def spec_of(fields: SpecFields, samples: int) -> NetworkSpec:
    """One `NetworkSpec` object per structure: requests of one structure then share it, and comparing or
    looking up their specs (merging, the function cache) short-cuts on identity."""
    return NetworkSpec(*fields, batch=batch_bucket(samples))


def batch_bucket(samples: int) -> int:
    """The padded batch size a request of `samples` samples runs with: the next power of two."""
    return next_power_of_two(samples)


@dataclass
class NetworkResult:
    """One request's answer; arrays in spec.dtype, the batch axis dropped when spec.single."""

    loss: Array
    predictions: Array
    weight_gradients: list[Array]
    input_gradients: Array | None = None
    intermediates: list[dict[str, Array]] | None = None
    local_gradients: list[tuple[str, str, Array]] | None = None
    jacobians: list[tuple[str, str, Array]] | None = None
    finite: bool = False
    """True when every array above is known to be finite (encoders may then skip checking each one)."""
