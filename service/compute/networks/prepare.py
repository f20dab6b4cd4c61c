"""Validation of one network request with numpy: `prepare_network` checks the arrays against each other and
fixes the request's structure (`NetworkSpec`); `prepare_small_network` finds the same for the common small
request in fewer steps. Errors name locations relative to `prepare_network`'s own arguments ("features",
("layers", i, "weights"), "labels", ...)."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from service.compute.errors import InvalidInput, Loc
from service.compute.networks.problem import (
    BIASES,
    FLOAT_DTYPES,
    INCLUDES,
    LOSSES,
    REDUCTIONS,
    SEED_FEATURES,
    SEED_LABEL,
    SEED_WEIGHTS,
    Array,
    Bias,
    FloatDType,
    Loss,
    NetworkProblem,
    Reduction,
    spec_of,
)
from service.vocabulary import ACTIVATIONS, DEFAULT_ALPHA

SMALL = 64
"""Tensors of at most this many elements may take `prepare_small_network`'s way."""
_FLOAT_BOUNDS = {"float32": float(np.finfo(np.float32).max), "float64": sys.float_info.max}
_DTYPES = {name: np.dtype(name) for name in _FLOAT_BOUNDS}
_EXACT_INTEGER = 2**53
_INCLUDE_SET = frozenset(INCLUDES)


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
        loc: Loc = ("layers", i, "weights")
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
        loc: Loc = ("layers", i, "alpha")
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
    loc: Loc = ("labels",)
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
    loc: Loc = ("targets",)
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


def _check_options(dtype: str, bias: str, loss: str, reduction: str, includes: Iterable[str]) -> frozenset[str]:
    _choice(dtype, FLOAT_DTYPES, ("dtype",), "dtype")
    _choice(bias, BIASES, ("bias",), "bias")
    _choice(loss, LOSSES, ("loss",), "loss")
    _choice(reduction, REDUCTIONS, ("reduction",), "reduction")
    include_set = frozenset(includes)
    unknown = sorted(include_set - _INCLUDE_SET)
    if unknown:
        raise InvalidInput(
            f"unknown include {', '.join(map(repr, unknown))}; expected any of {', '.join(INCLUDES)}", ("include",)
        )
    return include_set


def _check_features(features: Any, dtype: FloatDType) -> tuple[Array, bool]:
    """(samples, n) rows in the compute dtype, and whether one sample of shape (n,) was sent."""
    loc: Loc = ("features",)
    raw = _numeric(features, loc, "features")
    if raw.ndim not in (1, 2):
        raise InvalidInput(
            f"features must have shape (n,) for one sample or (batch, n), got rank {raw.ndim} "
            f"(shape {tuple(raw.shape)})",
            loc,
        )
    if raw.shape[-1] == 0:
        raise InvalidInput("features need at least one feature per sample", loc)
    if raw.shape[0] == 0:
        raise InvalidInput("features hold no samples", loc)
    return _as_float(raw, dtype, loc, "features").reshape(-1, raw.shape[-1]), raw.ndim == 1


def _check_activations(activations: Sequence[str]) -> None:
    for i, activation in enumerate(activations):
        if activation not in ACTIVATIONS:
            raise InvalidInput(
                f"unknown activation {activation!r} in layer {i + 1}; expected one of {', '.join(ACTIVATIONS)}",
                ("layers", i, "activation"),
            )


def _check_goal(labels: Any, targets: Any, *, single: bool, samples: int, units: int, dtype: FloatDType) -> Array:
    """The target rows, from exactly one of labels and targets."""
    if (labels is None) == (targets is None):
        raise InvalidInput(
            "send exactly one of labels (a class index per sample) and targets (rows shaped like the predictions)",
            (),
        )
    if labels is not None:
        return _check_labels(labels, samples, units, dtype)
    return _check_targets(targets, single, samples, units, dtype)


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

    Raises `InvalidInput` carrying the location of the offending value relative to these arguments
    (("features", 1), ("layers", 0, "weights"), ("labels",); () when the arguments disagree as a whole).
    """
    include_set = _check_options(dtype, bias, loss, reduction, includes)
    rows, single = _check_features(features, dtype)
    samples, inputs = rows.shape
    if len(weights) == 0:
        raise InvalidInput("a network needs at least one layer", ("layers",))
    if len(activations) != len(weights):
        raise ValueError(f"{len(activations)} activations for {len(weights)} layers")
    prepared_weights, layer_shapes = _check_weights(weights, inputs, bias, dtype)
    _check_activations(activations)
    prepared_alphas = _check_alphas(activations, alphas)
    target_rows = _check_goal(labels, targets, single=single, samples=samples, units=layer_shapes[-1][0], dtype=dtype)
    spec = spec_of((layer_shapes, tuple(activations), bias, dtype, loss, reduction, include_set, single), samples)
    return NetworkProblem(
        spec=spec, features=rows, targets=target_rows, weights=prepared_weights, alphas=prepared_alphas
    )


def small_array(value: Any, dtype: FloatDType, max_elements: int) -> Array | None:
    """`value` as an array of `dtype` when it is a non-empty rank-1 or rank-2 nested list of at most `SMALL`
    (and `max_elements`) plain numbers: floats that `dtype` holds as finite numbers, and ints of at most 2**53
    in magnitude (exact as floats); None for anything else. The array equals the one the codec and
    `prepare_network` make of the same value."""
    bound = _FLOAT_BOUNDS.get(dtype)
    if type(value) is not list or not value or bound is None:
        return None
    rows = value if type(value[0]) is list else (value,)
    width = len(rows[0])
    if width == 0 or len(rows) * width > min(SMALL, max_elements):
        return None
    for row in rows:
        if type(row) is not list or len(row) != width:
            return None
        for item in row:
            kind = type(item)
            if kind is float:
                if not -bound <= item <= bound:
                    return None
            elif kind is not int or not -_EXACT_INTEGER <= item <= _EXACT_INTEGER:
                return None
    # each number converted once, straight to dtype: the same values as numpy's int64 or float64 array cast
    # to dtype, as every number here is exact as a float64
    return np.array(value, dtype=_DTYPES[dtype])


def _small_shapes(inputs: int, matrices: Sequence[Array], bias: str) -> tuple[tuple[int, int], ...] | None:
    """The layers' weight shapes when every matrix takes the layer before's outputs (`_check_weights`'
    rule), else None."""
    shapes = []
    for matrix in matrices:
        if matrix.ndim != 2 or matrix.shape[1] != (inputs + 1 if bias == "augmented" else inputs):
            return None
        units, columns = matrix.shape
        shapes.append((units, columns))
        inputs = units
    return tuple(shapes)


def _plain_options(
    dtype: str,
    bias: str,
    loss: str,
    reduction: str,
    *,
    includes: frozenset[str],
    activations: Sequence[str],
    alphas: Sequence[float | None] | None,
) -> bool:
    """Whether `_check_options`, `_check_activations` and `_check_alphas` pass these as they are, with no alpha
    given (every layer then takes the default)."""
    return (
        dtype in FLOAT_DTYPES
        and bias in BIASES
        and loss in LOSSES
        and reduction in REDUCTIONS
        and includes <= _INCLUDE_SET
        and all(activation in ACTIVATIONS for activation in activations)
        and (alphas is None or all(alpha is None for alpha in alphas))
    )


def prepare_small_network(
    tensors: tuple[Any, Sequence[Any], Any],
    *,
    labels: int | Sequence[int] | None,
    layers: tuple[Sequence[str], Sequence[float | None] | None],
    options: tuple[Bias, Loss, Reduction, FloatDType, Iterable[str]],
    max_elements: int,
) -> NetworkProblem | None:
    """`prepare_network`'s problem for a request whose features, weights and targets are nested lists that
    `small_array` takes (a patient or a few, and a small network: the common request), found without the
    numpy checks that such lists cannot fail, with no layer's alpha given. None for any other request:
    `prepare_network` then takes it and words its errors. What this raises (a label or target that does not
    fit) is what `prepare_network` raises first for the same request.

    `prepare_network`'s arguments come grouped: `tensors` (features, weights, targets), `layers`
    (activations, alphas) and `options` (bias, loss, reduction, dtype, includes)."""
    (features, weights, targets), (activations, alphas) = tensors, layers
    bias, loss, reduction, dtype, includes = options
    rows = small_array(features, dtype, max_elements)
    read = (small_array(matrix, dtype, max_elements) for matrix in weights)
    matrices = [matrix for matrix in read if matrix is not None]
    goal = None if targets is None else small_array(targets, dtype, max_elements)
    if rows is None or (targets is not None and goal is None) or not len(weights) == len(matrices) == len(activations):
        return None
    layer_shapes = _small_shapes(rows.shape[-1], matrices, bias) if matrices else None
    if layer_shapes is None:
        return None
    include_set = frozenset(includes)
    if not _plain_options(dtype, bias, loss, reduction, includes=include_set, activations=activations, alphas=alphas):
        return None
    single = rows.ndim == 1
    samples = 1 if single else rows.shape[0]
    target_rows = _check_goal(labels, goal, single=single, samples=samples, units=layer_shapes[-1][0], dtype=dtype)
    spec = spec_of((layer_shapes, tuple(activations), bias, dtype, loss, reduction, include_set, single), samples)
    return NetworkProblem(
        spec=spec,
        features=rows.reshape(samples, -1),
        targets=target_rows,
        weights=tuple(matrices),
        alphas=(DEFAULT_ALPHA,) * len(matrices),
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
