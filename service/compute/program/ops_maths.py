"""The op table, maths half: element-wise functions, activations, broadcasting binary functions and
comparisons, reductions. Each entry is an `OpSpec` built by keyword; add a function by adding one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import tensorflow as tf

from service.compute.program import sizes
from service.compute.program.opspec import OpSpec, params

X = params("x")
XY = params("x", "y")
FEATURES = params("features")
REDUCE = params("input_tensor", axis=None, keepdims=False)


# The families: OpSpec with the parameters, size rule and data a family shares; rows give the rest by keyword.
unary = partial(OpSpec, params=X, data=("x",))
"""An element-wise function of `x`: its result has x's size."""
activation = partial(OpSpec, params=FEATURES, data=("features",))
"""An activation of `features` (a row may add parameters after it): its result has features' size."""
binary = partial(OpSpec, params=XY, size=sizes.broadcast("x", "y"), data=("x", "y"))
"""A broadcasting function of `x` and `y`."""
reduction = partial(OpSpec, params=REDUCE, data=("input_tensor",))
"""A reduction of `input_tensor` over `axis` (all axes by default)."""
normalisation = partial(OpSpec, params=params("logits", axis=None), data=("logits",))
"""A function of `logits` normalised along `axis` (the last by default), with logits' size."""


def boolean(name: str, fn: Callable[..., Any], operator: str) -> OpSpec:
    """`tf.<name>`, also `tf.math.<name>`: x <operator> y element-wise, broadcasting, as a bool tensor."""
    return binary(fn=fn, tf_names=(f"tf.{name}", f"tf.math.{name}"), summary=f"x {operator} y as a bool tensor.")


def arg_reduction(name: str, fn: Callable[..., Any], which: str) -> OpSpec:
    """`tf.<name>`, also `tf.math.<name>`: the index of the `which` entry along `axis` (0 by default), as int64
    unless `output_type` says else."""
    return OpSpec(
        fn=fn,
        tf_names=(f"tf.{name}", f"tf.math.{name}"),
        params=params("input", axis=None, output_type=tf.int64),
        summary=f"Index of the {which} entry along axis (default 0).",
    )


MATHS: tuple[OpSpec, ...] = (
    # element-wise maths
    unary(fn=tf.math.abs, tf_names=("tf.abs", "tf.math.abs"), summary="|x| element-wise."),
    unary(fn=tf.math.exp, tf_names=("tf.exp", "tf.math.exp"), summary="e^x element-wise."),
    unary(fn=tf.math.log, tf_names=("tf.math.log",), summary="Natural logarithm element-wise."),
    unary(fn=tf.math.log1p, tf_names=("tf.math.log1p",), summary="log(1 + x) element-wise."),
    unary(fn=tf.math.sqrt, tf_names=("tf.sqrt", "tf.math.sqrt"), summary="Square root element-wise."),
    unary(fn=tf.math.rsqrt, tf_names=("tf.math.rsqrt",), summary="1 / sqrt(x) element-wise."),
    unary(fn=tf.math.square, tf_names=("tf.square", "tf.math.square"), summary="x² element-wise."),
    unary(fn=tf.math.sin, tf_names=("tf.sin", "tf.math.sin"), summary="Sine element-wise."),
    unary(fn=tf.math.cos, tf_names=("tf.cos", "tf.math.cos"), summary="Cosine element-wise."),
    unary(fn=tf.math.tan, tf_names=("tf.tan", "tf.math.tan"), summary="Tangent element-wise."),
    unary(fn=tf.math.sigmoid, tf_names=("tf.sigmoid", "tf.math.sigmoid", "tf.nn.sigmoid"), summary="1 / (1 + e^-x)."),
    unary(fn=tf.math.tanh, tf_names=("tf.tanh", "tf.math.tanh", "tf.nn.tanh"), summary="Hyperbolic tangent."),
    unary(fn=tf.math.sign, tf_names=("tf.sign", "tf.math.sign"), summary="-1, 0 or 1 element-wise."),
    unary(fn=tf.math.negative, tf_names=("tf.negative", "tf.math.negative"), summary="-x element-wise."),
    unary(fn=tf.math.reciprocal, tf_names=("tf.math.reciprocal",), summary="1 / x element-wise."),
    unary(fn=tf.math.floor, tf_names=("tf.floor", "tf.math.floor"), summary="Largest integer ≤ x."),
    unary(fn=tf.math.ceil, tf_names=("tf.math.ceil",), summary="Smallest integer ≥ x."),
    unary(fn=tf.math.round, tf_names=("tf.round", "tf.math.round"), summary="Round half to even."),
    # activations
    activation(fn=tf.nn.relu, tf_names=("tf.nn.relu",), summary="max(features, 0)."),
    activation(fn=tf.nn.relu6, tf_names=("tf.nn.relu6",), summary="min(max(features, 0), 6)."),
    activation(
        fn=tf.nn.leaky_relu,
        tf_names=("tf.nn.leaky_relu",),
        summary="features if > 0 else alpha·features; alpha defaults to 0.2 as in TensorFlow (the seed uses 0.01). "
        "TensorFlow keeps alpha as a float32 attribute, so in float64 alpha=0.01 acts as 0.009999999776482582, "
        "as it does in-process; tf.maximum(0.01 * features, features) is exact (as /v1/activations computes it).",
        params=FEATURES + params(alpha=0.2),
    ),
    activation(fn=tf.nn.elu, tf_names=("tf.nn.elu",), summary="Exponential linear unit."),
    activation(fn=tf.nn.selu, tf_names=("tf.nn.selu",), summary="Scaled exponential linear unit."),
    activation(
        fn=tf.nn.gelu,
        tf_names=("tf.nn.gelu",),
        summary="Gaussian error linear unit.",
        params=FEATURES + params(approximate=False),
    ),
    activation(fn=tf.math.softplus, tf_names=("tf.math.softplus", "tf.nn.softplus"), summary="log(1 + e^features)."),
    activation(
        fn=tf.math.softsign, tf_names=("tf.math.softsign", "tf.nn.softsign"), summary="features / (1 + |features|)."
    ),
    activation(
        fn=tf.nn.silu,
        tf_names=("tf.nn.silu", "tf.nn.swish"),
        params=FEATURES + params(beta=1.0),
        summary="Swish: features · sigmoid(beta · features).",
        aliases=("swish",),
    ),
    normalisation(
        fn=tf.nn.softmax,
        tf_names=("tf.nn.softmax", "tf.math.softmax"),
        summary="exp(logits) / sum(exp(logits)) along axis (default: last).",
    ),
    normalisation(
        fn=tf.nn.log_softmax,
        tf_names=("tf.nn.log_softmax", "tf.math.log_softmax"),
        summary="logits - log(sum(exp(logits))) along axis (default: last).",
    ),
    # binary maths and comparisons (broadcasting)
    binary(fn=tf.math.add, tf_names=("tf.add", "tf.math.add"), summary="x + y with broadcasting."),
    binary(fn=tf.math.subtract, tf_names=("tf.subtract", "tf.math.subtract"), summary="x - y with broadcasting."),
    binary(fn=tf.math.multiply, tf_names=("tf.multiply", "tf.math.multiply"), summary="x · y with broadcasting."),
    binary(fn=tf.math.divide, tf_names=("tf.divide", "tf.math.divide"), summary="x / y with broadcasting."),
    binary(fn=tf.math.pow, tf_names=("tf.pow", "tf.math.pow"), summary="x ** y with broadcasting."),
    binary(fn=tf.math.maximum, tf_names=("tf.maximum", "tf.math.maximum"), summary="Element-wise max (broadcasting)."),
    binary(fn=tf.math.minimum, tf_names=("tf.minimum", "tf.math.minimum"), summary="Element-wise min (broadcasting)."),
    binary(fn=tf.math.squared_difference, tf_names=("tf.math.squared_difference",), summary="(x - y)²."),
    binary(
        fn=tf.math.floormod,
        tf_names=("tf.math.floormod", "tf.math.mod"),
        summary="x - floor(x / y) · y: the remainder with y's sign.",
    ),
    binary(fn=tf.math.divide_no_nan, tf_names=("tf.math.divide_no_nan",), summary="x / y, and 0 where y is 0."),
    binary(
        fn=tf.math.multiply_no_nan,
        tf_names=("tf.math.multiply_no_nan",),
        summary="x · y, and 0 where y is 0 (even if x is NaN or infinite).",
    ),
    binary(fn=tf.math.xlogy, tf_names=("tf.math.xlogy",), summary="x · log(y), and 0 where x is 0."),
    binary(fn=tf.math.xlog1py, tf_names=("tf.math.xlog1py",), summary="x · log(1 + y), and 0 where x is 0."),
    binary(fn=tf.math.xdivy, tf_names=("tf.math.xdivy",), summary="x / y, and 0 where x is 0."),
    OpSpec(
        fn=tf.math.nextafter,
        tf_names=("tf.math.nextafter",),
        params=params("x1", "x2"),
        summary="The next representable value after x1 towards x2 (float32 or float64); its gradient is 1 by x1.",
        size=sizes.broadcast("x1", "x2"),
        data=("x1", "x2"),
    ),
    OpSpec(
        fn=tf.math.add_n,
        tf_names=("tf.add_n", "tf.math.add_n"),
        params=params("inputs"),
        summary="The sum of a list of tensors of one shape and dtype.",
        size=sizes.list_largest,
        data=("inputs",),
    ),
    boolean("equal", tf.math.equal, "=="),
    boolean("not_equal", tf.math.not_equal, "!="),
    boolean("less", tf.math.less, "<"),
    boolean("less_equal", tf.math.less_equal, "<="),
    boolean("greater", tf.math.greater, ">"),
    boolean("greater_equal", tf.math.greater_equal, ">="),
    boolean("logical_and", tf.math.logical_and, "and"),
    boolean("logical_or", tf.math.logical_or, "or"),
    OpSpec(
        fn=tf.math.logical_not, tf_names=("tf.logical_not", "tf.math.logical_not"), params=X, summary="not x, bool."
    ),
    OpSpec(
        fn=tf.where,
        tf_names=("tf.where",),
        params=params("condition", x=None, y=None),
        summary="x where condition else y (broadcasting); with condition only, the indices of True entries.",
        size=sizes.where,
        data=("x", "y"),
    ),
    OpSpec(
        fn=tf.clip_by_value,
        tf_names=("tf.clip_by_value",),
        params=params("t", "clip_value_min", "clip_value_max"),
        summary="t clipped into [clip_value_min, clip_value_max].",
        size=sizes.broadcast("t", "clip_value_min", "clip_value_max"),
        data=("t", "clip_value_min", "clip_value_max"),
    ),
    # reductions
    reduction(fn=tf.math.reduce_sum, tf_names=("tf.reduce_sum", "tf.math.reduce_sum"), summary="Sum over axis (all)."),
    reduction(fn=tf.math.reduce_mean, tf_names=("tf.reduce_mean", "tf.math.reduce_mean"), summary="Mean over axis."),
    reduction(fn=tf.math.reduce_max, tf_names=("tf.reduce_max", "tf.math.reduce_max"), summary="Max over axis."),
    reduction(fn=tf.math.reduce_min, tf_names=("tf.reduce_min", "tf.math.reduce_min"), summary="Min over axis."),
    reduction(fn=tf.math.reduce_prod, tf_names=("tf.reduce_prod", "tf.math.reduce_prod"), summary="Product over axis."),
    reduction(
        fn=tf.math.reduce_logsumexp,
        tf_names=("tf.reduce_logsumexp", "tf.math.reduce_logsumexp"),
        summary="log(sum(exp(x))) over axis, computed stably.",
    ),
    reduction(
        fn=tf.math.reduce_euclidean_norm, tf_names=("tf.math.reduce_euclidean_norm",), summary="sqrt(Σ x²) over axis."
    ),
    arg_reduction("argmax", tf.math.argmax, "largest"),
    arg_reduction("argmin", tf.math.argmin, "smallest"),
    OpSpec(
        fn=tf.math.cumsum,
        tf_names=("tf.cumsum", "tf.math.cumsum"),
        params=params("x", axis=0, exclusive=False, reverse=False),
        summary="Cumulative sum along axis.",
        data=("x",),
    ),
    OpSpec(
        fn=tf.norm,
        tf_names=("tf.norm", "tf.linalg.norm"),
        params=params("tensor", ord="euclidean", axis=None, keepdims=None),
        summary="Vector or matrix norm (ord: a number; default Euclidean).",
        data=("tensor",),
    ),
)
