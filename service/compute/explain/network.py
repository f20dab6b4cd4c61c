"""A posted network's explanation request, checked with numpy: the §2 network part, then the §10 fields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.compute.explain.prepare import (
    ExplainOptions,
    NetworkExplanation,
    attribution_inputs,
    evaluation,
)
from service.compute.networks import SEED_FEATURES, SEED_WEIGHTS, prepare_network
from service.compute.networks.problem import NetworkStructure


def prepare_network_explanation(
    features: Any,
    *,
    weights: Sequence[Any],
    activations: Sequence[str],
    alphas: Sequence[float | None] | None = None,
    bias: str = "augmented",
    dtype: str = "float32",
    options: ExplainOptions | None = None,
    class_index: int | Sequence[int] | None = None,
    baseline: Any = None,
    noise_stddev: Any = None,
    max_elements: int = 4_194_304,
) -> NetworkExplanation:
    """Check a network and what to explain of it; raises InvalidInput / LimitExceeded with relative locations."""
    options = options or ExplainOptions()
    raw = np.asarray(features)
    # validated exactly as /v1/networks/gradients validates a network; the labels it needs go unused
    network = prepare_network(
        raw,
        labels=[0] * raw.shape[0] if raw.ndim == 2 else 0,
        weights=weights,
        activations=activations,
        alphas=alphas,
        bias=bias,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
    )
    spec = network.spec
    structure = NetworkStructure(spec.layer_shapes, spec.activations, spec.bias, spec.dtype)
    evaluated = evaluation(options, dtype)
    attribution = attribution_inputs(
        {"features": network.features},
        evaluated,
        single=spec.single,
        units=structure.units,
        class_index=class_index,
        baseline={"features": None if baseline is None else np.asarray(baseline)},
        noise_stddev={"features": noise_stddev},
        seed=options.seed,
        max_elements=max_elements,
    )
    return NetworkExplanation(structure, network.weights, network.alphas, evaluated, attribution, spec.single)


def seed_explanation(max_elements: int = 4_194_304) -> NetworkExplanation:
    """The seed's patient on the seed's softmax layer: integrated gradients with every default."""
    return prepare_network_explanation(
        np.array(SEED_FEATURES),
        weights=[np.array(SEED_WEIGHTS)],
        activations=["softmax"],
        max_elements=max_elements,
    )
