"""Activation functions by their service name, shared by the networks and the activations endpoints.

Besides the functions themselves: `evaluate_activations`, the seed's "plot each activation and its gradient
over z in [-10, 10] and say whether the backward gradient shrinks or grows", answered from the tape's local
gradients. The catalogue, the grid and the summaries are numpy only, in `activation_curves`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy.typing as npt
import tensorflow as tf

from service.compute.activation_curves import (
    CATALOGUE,
    COMPUTE_DTYPES,
    DEFAULT_ALPHA,
    ELEMENTWISE,
    ActivationCurve,
    ActivationInfo,
    GradientSummary,
    check_activations,
    default_grid,
    summarise_gradients,
)

Activation = Callable[[Any, float], Any]

ACTIVATION_FUNCTIONS: dict[str, Activation] = {
    "linear": lambda z, alpha: tf.identity(z),
    "sigmoid": lambda z, alpha: tf.math.sigmoid(z),
    "tanh": lambda z, alpha: tf.math.tanh(z),
    "relu": lambda z, alpha: tf.nn.relu(z),
    # alpha as z's own dtype (exactly 0.01 in float64), not tf.nn.leaky_relu's float32 attribute; the
    # seed's tf.maximum(alpha * z, z) for alpha <= 1, and the slope alpha at z = 0 as TensorFlow's kernel
    "leaky_relu": lambda z, alpha: tf.where(z > 0, z, alpha * z),
    "elu": lambda z, alpha: tf.nn.elu(z),
    "selu": lambda z, alpha: tf.nn.selu(z),
    "gelu": lambda z, alpha: tf.nn.gelu(z),
    "softplus": lambda z, alpha: tf.math.softplus(z),
    "swish": lambda z, alpha: tf.nn.silu(z),
    "softmax": lambda z, alpha: tf.nn.softmax(z, axis=-1),
    "log_softmax": lambda z, alpha: tf.nn.log_softmax(z, axis=-1),
}
"""name -> f(z, alpha); `alpha` is used by leaky_relu only. softmax/log_softmax act on the last axis."""


def evaluate_activations(
    names: Sequence[str],
    z: npt.ArrayLike,
    alpha: float = DEFAULT_ALPHA,
    dtype: str = "float64",
) -> list[ActivationCurve]:
    """Each named activation and its local gradient from the tape at every z, in the order of `names`.

    Elementwise activations get their local derivative (TensorFlow's convention at kinks: ReLU′(0) = 0);
    softmax and log_softmax, which act on the last axis, get the gradient of the sum of their outputs.
    """
    grid = check_activations(names, z, alpha, dtype)
    z_tensor = tf.constant(grid)
    curves: list[ActivationCurve] = []
    for name in names:
        with tf.GradientTape() as tape:
            tape.watch(z_tensor)
            activated = ACTIVATION_FUNCTIONS[name](z_tensor, alpha)
        # for a non-scalar target the tape differentiates the sum: elementwise, that is the local derivative
        local_gradients = tape.gradient(activated, z_tensor).numpy()
        curves.append(
            ActivationCurve(
                name=name,
                values=activated.numpy(),
                gradients=local_gradients,
                summary=summarise_gradients(grid, local_gradients, summed=name not in ELEMENTWISE),
            )
        )
    return curves


__all__ = [
    "ACTIVATION_FUNCTIONS",
    "CATALOGUE",
    "COMPUTE_DTYPES",
    "DEFAULT_ALPHA",
    "ELEMENTWISE",
    "ActivationCurve",
    "ActivationInfo",
    "GradientSummary",
    "default_grid",
    "evaluate_activations",
    "summarise_gradients",
]
