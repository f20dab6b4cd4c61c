"""Dense networks on samples (API.md §2): loss, gradients, local gradients and Jacobians.

`prepare_network` validates one request's arrays with numpy and fixes its structure (`NetworkSpec`);
`NetworkEngine.run` computes any number of requests of one structure in a single call of a compiled
`tf.function`, with a leading request axis R, so that concurrent requests can be micro-batched.
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf
from tensorflow.python.eager import context as tf_context
from tensorflow.python.eager import execute as tf_execute

from service import vocabulary
from service.compute.activations import ACTIVATION_FUNCTIONS, DEFAULT_ALPHA, ELEMENTWISE
from service.compute.errors import InvalidInput, Loc

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
class NetworkSpec:
    """The structure of a request: everything a compiled function depends on (its cache key)."""

    layer_shapes: tuple[tuple[int, int], ...]
    activations: tuple[str, ...]
    bias: Bias
    loss: Loss
    reduction: Reduction
    dtype: FloatDType
    includes: frozenset[str]
    single: bool
    batch: int
    """Samples per request rounded up to a power of two: batches of 5 to 8 share one compiled function."""


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
    tuple[tuple[int, int], ...], tuple[str, ...], Bias, Loss, Reduction, FloatDType, frozenset[str], bool
]
"""A `NetworkSpec`'s fields but the batch bucket, in order."""


@functools.lru_cache(maxsize=1024)
def _spec(fields: SpecFields, samples: int) -> NetworkSpec:
    """One `NetworkSpec` object per structure: requests of one structure then share it, and comparing or
    looking up their specs (merging, the function cache) short-cuts on identity."""
    return NetworkSpec(*fields, batch=batch_bucket(samples))


def batch_bucket(samples: int) -> int:
    """The padded batch size a request of `samples` samples runs with: the next power of two."""
    return 1 << (samples - 1).bit_length()


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


# ---------------------------------------------------------------------------------------------
# Validation (numpy only)
# ---------------------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _numeric(value: Any, loc: Loc, what: str) -> Array:
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested sequences
        raise InvalidInput(f"{what} must be a rectangular array of numbers", loc) from exc
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"{what} must hold numbers, got {array.dtype.name} values", loc)
    return array


def _all_finite(array: Array) -> bool:
    if array.size <= 64:  # a seed-sized tensor: math.isfinite over a list beats numpy's two calls
        return all(map(math.isfinite, array.ravel().tolist()))
    return bool(np.isfinite(array).all())


def _as_float(array: Array, dtype: FloatDType, loc: Loc, what: str) -> Array:
    """Cast to the compute dtype; non-finite values and float32 overflow are the caller's error."""
    if array.dtype.kind == "f" and not _all_finite(array):
        finite = np.isfinite(array)
        index = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise InvalidInput(f"{what} must be finite, got {array[index]}", (*loc, *index))
    if array.dtype == dtype and array.flags.c_contiguous:
        return array
    # overflow is reported below, with the offending value, instead of as a numpy warning
    with np.errstate(over="ignore"):
        cast = np.ascontiguousarray(array, dtype=dtype)
    if dtype == "float32" and array.dtype != np.float32 and array.size:
        overflow = np.isinf(cast)
        if overflow.any():
            index = tuple(int(i) for i in np.argwhere(overflow)[0])
            raise InvalidInput(
                f"{what} value {array[index]:g} overflows float32 (largest {np.finfo(np.float32).max:.4g}); "
                'send "dtype": "float64" to compute in double precision',
                (*loc, *index),
            )
    return cast


def _choice(value: str, allowed: tuple[str, ...], loc: Loc, what: str) -> None:
    if value not in allowed:
        raise InvalidInput(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}", loc)


def _layer_inputs_origin(index: int, inputs: int) -> str:
    if index == 0:
        return f"the {_plural(inputs, 'feature')} of each sample"
    return f"the {_plural(inputs, 'unit')} of layer {index}"


def _check_weights(
    weights: Sequence[Any], inputs: int, bias: Bias, dtype: FloatDType
) -> tuple[tuple[Array, ...], tuple[tuple[int, int], ...]]:
    prepared: list[Array] = []
    shapes: list[tuple[int, int]] = []
    for i, raw in enumerate(weights):
        loc: Loc = ("body", "layers", i, "weights")
        layer = i + 1
        matrix = _numeric(raw, loc, f"layer {layer} weights")
        columns = inputs + 1 if bias == "augmented" else inputs
        layout = "(units, inputs + 1)" if bias == "augmented" else "(units, inputs)"
        if matrix.ndim != 2:
            raise InvalidInput(
                f"layer {layer} weights must be a matrix of shape {layout}, got rank {matrix.ndim} "
                f"(shape {tuple(matrix.shape)})",
                loc,
            )
        units, got = matrix.shape
        if units == 0:
            raise InvalidInput(f"layer {layer} weights have no rows: a layer needs at least one unit", loc)
        if got != columns:
            origin = _layer_inputs_origin(i, inputs)
            if bias == "augmented":
                expected = f"layer {layer} expects {inputs} inputs ({origin}) + 1 bias column = {columns} columns"
            else:
                expected = f"layer {layer} expects {inputs} inputs ({origin}) = {columns} columns (bias none)"
            raise InvalidInput(f"{expected}, got {got} (weights shape {tuple(matrix.shape)})", loc)
        prepared.append(_as_float(matrix, dtype, loc, f"layer {layer} weights"))
        shapes.append((int(units), int(got)))
        inputs = int(units)
    return tuple(prepared), tuple(shapes)


def _check_alphas(activations: Sequence[str], alphas: Sequence[float | None] | None) -> tuple[float, ...]:
    given: Sequence[float | None] = [None] * len(activations) if alphas is None else alphas
    if len(given) != len(activations):
        raise ValueError(f"{len(given)} alphas for {len(activations)} layers")
    prepared: list[float] = []
    for i, (activation, alpha) in enumerate(zip(activations, given, strict=True)):
        loc: Loc = ("body", "layers", i, "alpha")
        if alpha is None:
            prepared.append(DEFAULT_ALPHA)
            continue
        if activation != "leaky_relu":
            raise InvalidInput(f"alpha is a parameter of leaky_relu only; layer {i + 1} uses {activation}", loc)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
            raise InvalidInput(f"alpha must be a number, got {type(alpha).__name__}", loc)
        if not math.isfinite(float(alpha)):
            raise InvalidInput(f"alpha must be finite, got {alpha}", loc)
        prepared.append(float(alpha))
    return tuple(prepared)


def _check_labels(labels: Any, samples: int, units: int, dtype: FloatDType) -> Array:
    """Class indices -> target rows: one-hot of depth `units`, or the 0/1 value itself for one unit."""
    loc: Loc = ("body", "labels")
    upper = 2 if units == 1 else units
    if type(labels) is int and samples == 1 and 0 <= labels < upper:  # one sample, one valid index: no numpy checks
        row = np.zeros((1, units), dtype=dtype)
        row[0, 0 if units == 1 else labels] = labels if units == 1 else 1
        return row
    hint = "labels holds one class index per sample; to send a one-hot or probability row use targets"
    if isinstance(labels, bool):
        raise InvalidInput(f"labels are class indices (whole numbers), got a boolean; {hint}", loc)
    try:
        values = np.asarray(labels)
    except ValueError as exc:  # ragged nested lists
        raise InvalidInput(f"labels must be an int or a list of ints; {hint}", loc) from exc
    listed = values.ndim == 1
    if values.ndim > 1:
        raise InvalidInput(
            f"labels must be an int or a list of ints, got an array of shape {tuple(values.shape)}; {hint}",
            loc,
        )
    values = values.reshape(-1)
    if values.size != samples:
        raise InvalidInput(f"{_plural(int(values.size), 'label')} for {_plural(samples, 'sample')}: {hint}", loc)
    if values.dtype.kind not in "iuf":
        raise InvalidInput(f"labels are class indices (whole numbers), got {values.dtype.name} values", loc)
    if values.dtype.kind == "f":
        whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            j = int(np.argmin(whole))
            raise InvalidInput(
                f"labels are class indices (whole numbers), got {values[j]}", (*loc, j) if listed else loc
            )
    valid = (values >= 0) & (values < upper)
    if not valid.all():
        j = int(np.argmin(valid))
        where: Loc = (*loc, j) if listed else loc
        if units == 1:
            raise InvalidInput(
                f"label {values[j]} is invalid: the last layer has 1 unit, so a label is 0 or 1 "
                "(the target value itself)",
                where,
            )
        raise InvalidInput(
            f"label {values[j]} is not a class of the last layer's {units} units (0 to {units - 1})", where
        )
    classes = values.astype(np.int64)
    if units == 1:
        return np.ascontiguousarray(classes.reshape(samples, 1), dtype=dtype)
    one_hot = np.zeros((samples, units), dtype=dtype)
    one_hot[np.arange(samples), classes] = 1
    return one_hot


def _check_targets(targets: Any, single: bool, samples: int, units: int, dtype: FloatDType) -> Array:
    loc: Loc = ("body", "targets")
    rows = _numeric(targets, loc, "targets")
    expected = (units,) if single else (samples, units)
    if rows.shape != expected:
        message = (
            f"targets must have the predictions' shape {expected} "
            f"({'one sample' if single else _plural(samples, 'sample')}, {_plural(units, 'output unit')}), "
            f"got {tuple(rows.shape)}"
        )
        if rows.dtype.kind in "iu" and rows.shape == expected[:-1] and units > 1:
            message += "; to send class indices use labels"
        raise InvalidInput(message, loc)
    return _as_float(rows, dtype, loc, "targets").reshape(samples, units)


def prepare_network(
    features: Any,
    *,
    labels: int | Sequence[int] | None = None,
    targets: Any = None,
    weights: Sequence[Any],
    activations: Sequence[str],
    alphas: Sequence[float | None] | None = None,
    bias: Bias = "augmented",
    loss: Loss = "cross_entropy",
    reduction: Reduction = "sum",
    dtype: FloatDType = "float32",
    includes: Iterable[str] = (),
) -> NetworkProblem:
    """Validate one request's arrays (numpy only) and fix its structure.

    Raises `InvalidInput` carrying the JSON location of the offending value.
    """
    _choice(dtype, FLOAT_DTYPES, ("body", "dtype"), "dtype")
    _choice(bias, BIASES, ("body", "bias"), "bias")
    _choice(loss, LOSSES, ("body", "loss"), "loss")
    _choice(reduction, REDUCTIONS, ("body", "reduction"), "reduction")
    include_set = frozenset(includes)
    unknown = sorted(include_set - set(INCLUDES))
    if unknown:
        raise InvalidInput(
            f"unknown include {', '.join(map(repr, unknown))}; expected any of {', '.join(INCLUDES)}",
            ("body", "include"),
        )

    loc: Loc = ("body", "features")
    raw = _numeric(features, loc, "features")
    if raw.ndim not in (1, 2):
        raise InvalidInput(
            f"features must have shape (n,) for one sample or (batch, n), got rank {raw.ndim} "
            f"(shape {tuple(raw.shape)})",
            loc,
        )
    single = raw.ndim == 1
    if raw.shape[-1] == 0:
        raise InvalidInput("features need at least one feature per sample", loc)
    if raw.shape[0] == 0:
        raise InvalidInput("features hold no samples", loc)
    rows = _as_float(raw, dtype, loc, "features").reshape(-1, raw.shape[-1])
    samples, inputs = rows.shape

    if len(weights) == 0:
        raise InvalidInput("a network needs at least one layer", ("body", "layers"))
    if len(activations) != len(weights):
        raise ValueError(f"{len(activations)} activations for {len(weights)} layers")
    prepared_weights, layer_shapes = _check_weights(weights, inputs, bias, dtype)
    for i, activation in enumerate(activations):
        if activation not in ACTIVATION_FUNCTIONS:
            raise InvalidInput(
                f"unknown activation {activation!r} in layer {i + 1}; expected one of "
                f"{', '.join(ACTIVATION_FUNCTIONS)}",
                ("body", "layers", i, "activation"),
            )
    prepared_alphas = _check_alphas(activations, alphas)

    units = layer_shapes[-1][0]
    if (labels is None) == (targets is None):
        raise InvalidInput(
            "send exactly one of labels (a class index per sample) and targets (rows shaped like the predictions)",
            ("body",),
        )
    if labels is not None:
        target_rows = _check_labels(labels, samples, units, dtype)
    else:
        target_rows = _check_targets(targets, single, samples, units, dtype)

    spec = _spec((layer_shapes, tuple(activations), bias, loss, reduction, dtype, include_set, single), samples)
    return NetworkProblem(
        spec=spec,
        features=rows,
        targets=target_rows,
        weights=prepared_weights,
        alphas=prepared_alphas,
    )


def seed_problem(dtype: FloatDType = "float32", includes: Iterable[str] = INCLUDES) -> NetworkProblem:
    """The seed notebook's case: the diabetic patient through a 1-layer softmax network, cross-entropy."""
    return prepare_network(
        np.array(SEED_FEATURES),
        labels=SEED_LABEL,
        weights=[np.array(SEED_WEIGHTS)],
        activations=["softmax"],
        dtype=dtype,
        includes=includes,
    )


# ---------------------------------------------------------------------------------------------
# Computation (TensorFlow)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """One array's place in a packed row: one request's values, flattened, at `offset`."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _packing(entries: Sequence[tuple[str, tuple[int, ...]]]) -> tuple[tuple[_Slot, ...], int]:
    slots: list[_Slot] = []
    offset = 0
    for name, shape in entries:
        slots.append(_Slot(name, shape, offset))
        offset += math.prod(shape)
    return tuple(slots), offset


def _input_entries(spec: NetworkSpec) -> list[tuple[str, tuple[int, ...]]]:
    inputs = spec.layer_shapes[0][1] - (1 if spec.bias == "augmented" else 0)
    return [
        ("features", (spec.batch, inputs)),
        ("targets", (spec.batch, spec.layer_shapes[-1][0])),
        *((f"W{i + 1}", shape) for i, shape in enumerate(spec.layer_shapes)),
        ("alphas", (len(spec.layer_shapes),)),
        ("mask", (spec.batch,)),
    ]


def _output_entries(spec: NetworkSpec) -> list[tuple[str, tuple[int, ...]]]:
    """Name and per-request shape of every output, in the order they are packed."""
    batch = spec.batch
    inputs = spec.layer_shapes[0][1] - (1 if spec.bias == "augmented" else 0)
    units_last = spec.layer_shapes[-1][0]
    entries: list[tuple[str, tuple[int, ...]]] = [
        ("loss", (batch,) if spec.reduction == "none" else ()),
        ("predictions", (batch, units_last)),
        *((f"dL/dW{i + 1}", shape) for i, shape in enumerate(spec.layer_shapes)),
    ]
    if "input_gradients" in spec.includes:
        entries.append(("dL/dfeatures", (batch, inputs)))
    for i, (units, columns) in enumerate(spec.layer_shapes):
        layer = i + 1
        if "intermediates" in spec.includes:
            entries += [
                (f"x_B{layer}", (batch, columns)),
                (f"z{layer}", (batch, units)),
                (f"a{layer}", (batch, units)),
            ]
        if "local_gradients" in spec.includes:
            if layer == 1:
                entries.append(("grad loss/predictions", (batch, units_last)))
            entries += [
                (f"grad a{layer}/z{layer}", (batch, units)),
                (f"grad z{layer}/W{layer}", (units, columns)),
            ]
        if "jacobians" in spec.includes:
            entries += [
                (f"jacobian a{layer}/z{layer}", (batch, units, units)),
                (f"jacobian z{layer}/W{layer}", (batch, units, units, columns)),
            ]
    return entries


LANES = 16
"""Values per SIMD packet of the widest vector unit TensorFlow's CPU kernels use (AVX-512: 16 float32)."""


def _whole_packets(size: int) -> int:
    """`size` rounded up to a whole number of SIMD packets."""
    return -(-size // LANES) * LANES


def _lanewise(function: Callable[..., Any], *tensors: Any) -> Any:
    """`function` applied elementwise to tensors of one shape (R, ...), each request's values padded to
    whole SIMD packets.

    TensorFlow's CPU kernels for exp, log, tanh, erf and the like compute a tensor packet by packet and
    its last `size % packet` values with scalar code, which rounds differently. Which values those are
    depends on the whole tensor's size, and so on how many requests were merged; padded, every request's
    values are computed by the packet code, alone or merged, and come out bit for bit the same.
    """
    shape = tensors[0].shape
    size = math.prod(shape[1:])
    padded = _whole_packets(size)
    if padded == size:
        return function(*tensors)
    rows = [tf.pad(tf.reshape(t, (-1, size)), ((0, 0), (0, padded - size))) for t in tensors]
    return tf.reshape(function(*rows)[:, :size], (-1, *shape[1:]))


def _rowwise(function: Callable[[Any], Any], z: Any) -> Any:
    """A function of the last axis (softmax) on z (R, B, u), each request's rows padded with zero rows so
    that its values fill whole SIMD packets (see `_lanewise`)."""
    batch, units = z.shape[1:]
    step = LANES // math.gcd(LANES, units)  # rows * units is a whole number of packets when step divides rows
    rows = -(-batch // step) * step
    if rows == batch:
        return function(z)
    return function(tf.pad(z, ((0, 0), (0, rows - batch), (0, 0))))[:, :batch]


def _activate(name: str, z_rows: Any, alpha_rows: Any) -> Any:
    """Activation `name` on z_rows; `alpha_rows` (broadcast against z_rows) are leaky_relu's slopes."""
    if name == "leaky_relu":
        # alpha varies per merged request, and tf.nn.leaky_relu only takes a Python float; same kink
        # convention (slope alpha at z = 0)
        return tf.where(z_rows > 0, z_rows, alpha_rows * z_rows)
    return ACTIVATION_FUNCTIONS[name](z_rows, DEFAULT_ALPHA)


def _activate_packed(name: str, z_rows: Any, alpha_rows: Any, batch: int) -> Any:
    """`_activate` on z_rows (R·B, u), one row per sample, each request's values in whole SIMD packets
    (see `_lanewise`): a request's activations come out the same alone or merged."""
    if name == "leaky_relu":  # no rounding to speak of: compares and products only
        return _activate(name, z_rows, alpha_rows)
    function = ACTIVATION_FUNCTIONS[name]
    units = z_rows.shape[-1]
    z = tf.reshape(z_rows, (-1, batch, units))
    if name in ELEMENTWISE:
        a = _lanewise(lambda values: function(values, DEFAULT_ALPHA), z)
    else:
        a = _rowwise(lambda values: function(values, DEFAULT_ALPHA), z)
    return tf.reshape(a, (-1, units))


_PARALLEL_PRODUCT = 128 * 128
"""TensorFlow's CPU BatchMatMul parallelises inside each product above this cost (rows × inner × columns),
whatever the batch size (kMaxCostOuterParallelism in batch_matmul_op_impl.h)."""


def _per_request_matmul(x: Any, w: Any) -> Any:
    """x (R, B, c) times w (R, u, c) transposed: (R, B, u), each request's product computed alike for every R.

    TensorFlow's CPU BatchMatMul multiplies a batch of one pair of matrices with a different kernel
    (Eigen's contraction, parallel inside the matrix) than a batch of several small ones (one matrix
    product per thread), and the two round differently: a request alone and the same request merged
    would differ in the last bits. Multiplying each request's two halves of rows as two products makes
    the batch 2R, never one. TensorFlow uses one kernel for every batch size when a matrix has one row
    (B = 1, the per-thread kernel) or the product costs more than `_PARALLEL_PRODUCT` multiply-adds (the
    contraction): such products are left whole.
    """
    batch, columns = x.shape[1:]
    if batch == 1 or batch * columns * w.shape[1] > _PARALLEL_PRODUCT:
        return tf.linalg.matmul(x, w, transpose_b=True)
    halves = tf.reshape(x, (-1, 2, batch // 2, columns))
    z = tf.linalg.matmul(halves, w[:, None], transpose_b=True)
    return tf.reshape(z, (-1, batch, w.shape[1]))


def _per_sample_loss(loss: Loss, predictions: Any, targets: Any) -> Any:
    """(R, B, k) -> (R, B), on the last layer's output as is (no clipping, no logits)."""
    if loss == "cross_entropy":
        # xlogy: a class with target 0 adds 0 even where ŷ = 0 (0·log 0 = 0); log 0 of a target class is inf
        return -tf.reduce_sum(_lanewise(tf.math.xlogy, targets, predictions), axis=-1)
    if loss == "binary_cross_entropy":
        return -tf.reduce_mean(
            _lanewise(tf.math.xlogy, targets, predictions) + _lanewise(tf.math.xlogy, 1 - targets, 1 - predictions),
            axis=-1,
        )
    return tf.reduce_mean(tf.math.squared_difference(predictions, targets), axis=-1)


def _reduce(reduction: Reduction, per_sample: Any, mask: Any) -> Any:
    """(R, B) -> (R,) or (R, B); padded samples (mask 0) count for nothing, not even in the mean."""
    # where, not a product: a padded copy of a sample with an infinite loss must not turn the sum into NaN
    per_sample = tf.where(mask > 0, per_sample, tf.zeros_like(per_sample))
    if reduction == "sum":
        return tf.reduce_sum(per_sample, axis=1)
    if reduction == "mean":
        return tf.reduce_sum(per_sample, axis=1) / tf.reduce_sum(mask, axis=1)
    return per_sample


def _network_outputs(spec: NetworkSpec, unpacked: dict[str, Any]) -> dict[str, Any]:
    """Every requested output of the network, each with a leading request axis R."""
    batch = spec.batch
    includes = spec.includes
    features, targets, alphas, mask = (unpacked[name] for name in ("features", "targets", "alphas", "mask"))
    weights = [unpacked[f"W{i + 1}"] for i in range(len(spec.layer_shapes))]
    layer_inputs, zs, z_rows_list, a_rows_list, z_flat_list, activations = [], [], [], [], [], []
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        tape.watch(weights)
        x = features
        for i, (w, name) in enumerate(zip(weights, spec.activations, strict=True)):
            units = spec.layer_shapes[i][0]
            x_b = tf.concat([x, tf.ones_like(x[..., :1])], axis=-1) if spec.bias == "augmented" else x
            z = _per_request_matmul(x_b, w)
            # one row per sample, made inside the tape so that batch_jacobian sees each sample's activation
            z_rows = tf.reshape(z, (-1, units))
            alpha_rows = None
            if name == "leaky_relu":
                alpha_rows = tf.reshape(tf.repeat(alphas[:, i], batch), (-1, 1))
            a_rows = _activate_packed(name, z_rows, alpha_rows, batch)
            a = tf.reshape(a_rows, tf.shape(z))
            if "jacobians" in includes:
                # (R, B*u) against W (R, u, c): requests are independent, so batch_jacobian is exact
                z_flat_list.append(tf.reshape(z, (-1, batch * units)))
            layer_inputs.append(x_b)
            zs.append(z)
            z_rows_list.append(z_rows)
            a_rows_list.append(a_rows)
            activations.append(a)
            x = a
        predictions = x
        per_request_loss = _reduce(spec.reduction, _per_sample_loss(spec.loss, predictions, targets), mask)

    zero = tf.UnconnectedGradients.ZERO
    sources = [*weights, features] if "input_gradients" in includes else weights
    # a non-scalar target (R requests, or reduction none) differentiates its sum: each request its own
    gradients = tape.gradient(per_request_loss, sources, unconnected_gradients=zero)
    out: dict[str, Any] = {"loss": per_request_loss, "predictions": predictions}
    for i in range(len(weights)):
        out[f"dL/dW{i + 1}"] = gradients[i]
    if "input_gradients" in includes:
        out["dL/dfeatures"] = gradients[-1]
    if "intermediates" in includes:
        for i in range(len(weights)):
            out[f"x_B{i + 1}"], out[f"z{i + 1}"], out[f"a{i + 1}"] = layer_inputs[i], zs[i], activations[i]
    if "local_gradients" in includes:
        out["grad loss/predictions"] = tape.gradient(per_request_loss, predictions, unconnected_gradients=zero)
        for i, w in enumerate(weights):
            out[f"grad a{i + 1}/z{i + 1}"] = tape.gradient(a_rows_list[i], z_rows_list[i], unconnected_gradients=zero)
            # the gradient of the sum of z over the request's real samples: padded rows weigh 0
            real_rows = tf.broadcast_to(mask[..., None], tf.shape(zs[i]))
            out[f"grad z{i + 1}/W{i + 1}"] = tape.gradient(
                zs[i], w, output_gradients=real_rows, unconnected_gradients=zero
            )
    if "jacobians" in includes:
        for i, w in enumerate(weights):
            out[f"jacobian a{i + 1}/z{i + 1}"] = tape.batch_jacobian(
                a_rows_list[i], z_rows_list[i], unconnected_gradients=zero
            )
            out[f"jacobian z{i + 1}/W{i + 1}"] = tape.batch_jacobian(z_flat_list[i], w, unconnected_gradients=zero)
    del tape
    return out


class _CompiledNetwork:
    """The concrete function for one spec: a packed (R, P) row per request in, a packed (R, Q) row out.

    One input and one output tensor keep the per-call Python overhead of conversion and argument
    binding far below that of one tensor per array.
    """

    def __init__(self, spec: NetworkSpec, on_trace: Callable[[], None], jit_compile: bool) -> None:
        self.spec = spec
        self.jit_compile = jit_compile
        self.compiled_rows: set[int] = set()
        """Request counts XLA has compiled this function for."""
        self.inputs, self.input_size = _packing(_input_entries(spec))
        self.outputs, self.output_size = _packing(_output_entries(spec))
        dtype = tf.as_dtype(spec.dtype)

        def network(packed: Any) -> Any:
            on_trace()
            unpacked = {
                slot.name: tf.reshape(packed[:, slot.offset : slot.offset + slot.size], (-1, *slot.shape))
                for slot in self.inputs
            }
            out = _network_outputs(spec, unpacked)
            return tf.concat([tf.reshape(out[slot.name], (-1, slot.size)) for slot in self.outputs], axis=1)

        compiled = tf.function(
            network,
            input_signature=(tf.TensorSpec((None, self.input_size), dtype, name="packed"),),
            autograph=False,
            jit_compile=jit_compile,
        )
        self.concrete = compiled.get_concrete_function()
        self._call = self._direct_call() or self._concrete_call

    def _concrete_call(self, packed: Array) -> Array:
        result: Array = self.concrete(tf.constant(packed)).numpy()
        return result

    def _direct_call(self) -> Callable[[Array], Array] | None:
        """The concrete function called as the one op it is registered as, as `ConcreteFunction.__call__`
        ends up doing (`AtomicFunction.call_flat` -> `Context.call_function`) without its ~100 µs of Python
        argument binding per call: that is half the seed's whole computation. None when this TensorFlow
        does not expose the pieces (the plain call is used then)."""
        try:
            atomic = self.concrete._inference_function
            name = atomic.name.decode() if isinstance(atomic.name, bytes) else str(atomic.name)
            context = tf_context.context()
            attrs = tuple(itertools.chain(*context.function_call_options.as_attrs().items()))
            dtype = tf.as_dtype(self.spec.dtype)
            execute = tf_execute.execute
            if self.concrete.captured_inputs or len(atomic.function_type.flat_outputs) != 1:
                return None
        except AttributeError:
            return None

        def direct(packed: Array) -> Array:
            (result,) = execute(name, num_outputs=1, inputs=[tf.constant(packed, dtype)], attrs=attrs, ctx=context)
            array: Array = result.numpy()
            return array

        return direct

    def _rows(self, requests: int) -> int:
        """How many request rows to run: XLA compiles once per shape, so pad R (zero rows, answers dropped)
        to the smallest size already compiled, else to the next power of two."""
        if not self.jit_compile:
            return requests
        compiled = [rows for rows in self.compiled_rows if rows >= requests]
        rows = min(compiled) if compiled else 1 << (requests - 1).bit_length()
        self.compiled_rows.add(rows)
        return rows

    def _pack_padded(self, row: Array, problem: NetworkProblem) -> None:
        """One request's row; padded samples repeat its last real one (finite wherever the real ones are)
        and are masked out."""
        features, targets, *weights, alphas, mask = self.inputs
        batch, samples = self.spec.batch, problem.samples
        padded_features = row[features.offset : features.offset + features.size].reshape(batch, -1)
        padded_features[:samples] = problem.features
        padded_features[samples:] = problem.features[-1]
        padded_targets = row[targets.offset : targets.offset + targets.size].reshape(batch, -1)
        padded_targets[:samples] = problem.targets
        padded_targets[samples:] = problem.targets[-1]
        row[mask.offset : mask.offset + samples] = 1
        row[mask.offset + samples : mask.offset + batch] = 0
        for slot, w in zip(weights, problem.weights, strict=True):
            row[slot.offset : slot.offset + slot.size] = w.reshape(-1)
        row[alphas.offset : alphas.offset + alphas.size] = problem.alphas

    def __call__(self, problems: Sequence[NetworkProblem]) -> tuple[dict[str, Array], bool]:
        """Every output by name, with the request axis first; and whether all of them are finite."""
        spec = self.spec
        requests = len(problems)
        rows = self._rows(requests)
        packed = np.empty((rows, self.input_size), dtype=spec.dtype)
        packed[requests:] = 0
        features, targets, *weights, alphas, mask = self.inputs
        batch = spec.batch
        if all(problem.samples == batch for problem in problems):
            # no padding (one sample, or a full power-of-two batch: the common case): one stacking copy per
            # slot for all requests instead of ten small copies per request
            head = packed[:requests]
            for slot, arrays in (
                (features, [problem.features for problem in problems]),
                (targets, [problem.targets for problem in problems]),
                *((slot, [problem.weights[i] for problem in problems]) for i, slot in enumerate(weights)),
                (alphas, [problem.alphas for problem in problems]),
            ):
                head[:, slot.offset : slot.offset + slot.size] = np.asarray(arrays).reshape(requests, slot.size)
            head[:, mask.offset : mask.offset + batch] = 1
        else:
            for r, problem in enumerate(problems):
                self._pack_padded(packed[r], problem)
        result = self._call(packed)
        outputs = {
            slot.name: result[:, slot.offset : slot.offset + slot.size].reshape(-1, *slot.shape)
            for slot in self.outputs
        }
        # one check for the whole batch (padding rows included: they repeat real rows or are zero rows)
        return outputs, bool(np.isfinite(result).all())


def _split(spec: NetworkSpec, out: dict[str, Array], r: int, samples: int, finite: bool) -> NetworkResult:
    """Request r's answer from the merged outputs: padded samples cut off, the batch axis dropped for one sample."""

    def sample(name: str) -> Array:
        values: Array = out[name][r, 0] if spec.single else out[name][r, :samples]
        return values

    layers = range(1, len(spec.layer_shapes) + 1)
    result = NetworkResult(
        loss=sample("loss") if spec.reduction == "none" else out["loss"][r, ...],
        predictions=sample("predictions"),
        weight_gradients=[out[f"dL/dW{i}"][r] for i in layers],
        finite=finite,
    )
    if "input_gradients" in spec.includes:
        result.input_gradients = sample("dL/dfeatures")
    if "intermediates" in spec.includes:
        result.intermediates = [
            {"inputs": sample(f"x_B{i}"), "z": sample(f"z{i}"), "a": sample(f"a{i}")} for i in layers
        ]
    if "local_gradients" in spec.includes:
        local = [("loss", "predictions", sample("grad loss/predictions"))]
        for i in layers:
            local.append((f"a{i}", f"z{i}", sample(f"grad a{i}/z{i}")))
            local.append((f"z{i}", f"W{i}", out[f"grad z{i}/W{i}"][r]))
        result.local_gradients = local
    if "jacobians" in spec.includes:
        jacobians = []
        for i in layers:
            jacobians.append((f"a{i}", f"z{i}", sample(f"jacobian a{i}/z{i}")))
            jacobians.append((f"z{i}", f"W{i}", sample(f"jacobian z{i}/W{i}")))
        result.jacobians = jacobians
    return result


class NetworkEngine:
    """Compiled network functions, one per `NetworkSpec`, in a bounded LRU cache.

    Runs in the caller's thread and device context (`with tf.device(...)` around `run`); it picks no
    device itself.
    """

    def __init__(self, cache_size: int = 128, jit_compile: bool = False) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._cache_size = cache_size
        self._jit_compile = jit_compile
        self._functions: OrderedDict[NetworkSpec, _CompiledNetwork] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._traces = 0

    def _count_trace(self) -> None:
        self._traces += 1

    def _compiled(self, spec: NetworkSpec) -> _CompiledNetwork:
        with self._lock:
            compiled = self._functions.get(spec)
            if compiled is not None:
                self._functions.move_to_end(spec)
                self._hits += 1
                return compiled
            self._misses += 1
            # traced under the lock: concurrent first requests of one spec trace once
            compiled = _CompiledNetwork(spec, self._count_trace, self._jit_compile)
            self._functions[spec] = compiled
            while len(self._functions) > self._cache_size:
                self._functions.popitem(last=False)
            return compiled

    def run(self, problems: Sequence[NetworkProblem]) -> list[NetworkResult]:
        """Compute every problem (all of one spec) in one compiled call; results in the order given."""
        if not problems:
            raise ValueError("run needs at least one problem")
        spec = problems[0].spec
        if any(problem.spec != spec for problem in problems[1:]):
            raise ValueError("problems merged into one run must share one NetworkSpec")
        outputs, finite = self._compiled(spec)(problems)
        return [_split(spec, outputs, r, problem.samples, finite) for r, problem in enumerate(problems)]

    def stats(self) -> dict[str, int]:
        """Cache hits and misses, functions traced, and functions held."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "traces": self._traces,
                "size": len(self._functions),
            }

    def warmup(self, merged_sizes: Sequence[int] = ()) -> None:
        """Trace and run the seed's case, with every include and with none, so first requests are fast;
        with XLA, also compile the seed without includes for each merged request count in `merged_sizes`."""
        self.run([seed_problem(includes=INCLUDES)])
        self.run([seed_problem(includes=())])
        if self._jit_compile:
            for size in merged_sizes:
                self.run([seed_problem(includes=()) for _ in range(size)])
