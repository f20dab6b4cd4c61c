"""The service's names, defined once: activations, losses, reductions, includes, biases, dtypes, encodings,
a model version's states, and the explanation methods' step and sample limits.

Imported by `schemas/` (the pydantic models) and `compute/` (the TensorFlow side) alike, so this module
imports neither: only the standard library.
"""

from __future__ import annotations

from typing import Literal, get_args

ActivationName = Literal[
    "linear",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "softplus",
    "swish",
    "softmax",
    "log_softmax",
]
LossName = Literal["cross_entropy", "binary_cross_entropy", "mean_squared_error"]
ReductionName = Literal["sum", "mean", "none"]
IncludeName = Literal["intermediates", "local_gradients", "jacobians", "input_gradients"]
"""The extra outputs a network request may ask for."""
BiasName = Literal["augmented", "none"]
DTypeName = Literal["float32", "float64", "int32", "int64"]
"""Every dtype a tensor may have in a request or a response."""
FloatDType = Literal["float32", "float64"]
"""The dtypes computations run in."""
MethodName = Literal["integrated_gradients", "saliency", "gradient_x_input", "smoothgrad"]
"""Attribution methods of an explanation (API.md §10)."""
IntegrationName = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
"""Integration rules of integrated gradients (API.md §10)."""
EncodingName = Literal["nested", "b64"]
"""How response tensors are written: nested JSON arrays, or base64 of their little-endian bytes."""
VersionState = Literal["START", "LOADING", "AVAILABLE", "UNLOADING", "END"]
"""TF Serving's states of a model version (API.md §9)."""

ACTIVATIONS: tuple[ActivationName, ...] = get_args(ActivationName)
LOSSES: tuple[LossName, ...] = get_args(LossName)
REDUCTIONS: tuple[ReductionName, ...] = get_args(ReductionName)
INCLUDES: tuple[IncludeName, ...] = get_args(IncludeName)
BIASES: tuple[BiasName, ...] = get_args(BiasName)
DTYPES: tuple[DTypeName, ...] = get_args(DTypeName)
FLOAT_DTYPES: tuple[FloatDType, ...] = get_args(FloatDType)
ENCODINGS: tuple[EncodingName, ...] = get_args(EncodingName)
METHODS: tuple[MethodName, ...] = get_args(MethodName)
INTEGRATIONS: tuple[IntegrationName, ...] = get_args(IntegrationName)

SUMMED_GRADIENT_ACTIVATIONS = frozenset({"softmax", "log_softmax"})
"""Activations that act on the last axis as a whole: their reported local gradient is that of the sum."""
DEFAULT_ALPHA = 0.01
"""The seed's leaky-ReLU slope, the default everywhere in the service (tf.nn.leaky_relu's own is 0.2)."""
DEFAULT_STEPS = 50
MAX_STEPS = 1024
"""Integrated gradients' gradient evaluations: the default and the most a request may ask for."""
DEFAULT_SAMPLES = 25
MAX_SAMPLES = 256
"""SmoothGrad's noisy copies: the default and the most a request may ask for."""
