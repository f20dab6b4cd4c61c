"""The function table of the tape-program language: each TensorFlow function it may call, by plain name
and by TensorFlow name, with its parameters and a rule that sizes its result before it runs.

Only functions listed here are ever called; every one is pure tensor maths (no files, network,
Python callbacks, sessions, randomness or state). A size rule returns the element count of the
result, or None when the result can be no larger than the op's largest argument.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from service.compute.program_values import (
    PyList,
    Shape,
    SizeProblem,
    ValueProblem,
    broadcast_shape,
    element_count,
    product,
    shape_of,
    static_bool,
    static_int,
    static_int_vector,
    static_number,
)


class _Required(enum.Enum):
    REQUIRED = enum.auto()


REQUIRED = _Required.REQUIRED

Args = Mapping[str, Any]
SizeRule = Callable[[Args], int | None]
WorkRule = Callable[[Args], int]


@dataclass(frozen=True)
class Param:
    name: str
    default: Any = REQUIRED
    keyword_only: bool = False


@dataclass(frozen=True)
class OpSpec:
    name: str
    fn: Callable[..., Any]
    tf_names: tuple[str, ...]
    params: tuple[Param, ...]
    summary: str
    size: SizeRule
    data: tuple[str, ...]
    """Parameters holding tensor data whose float dtype follows the other operands."""
    aliases: tuple[str, ...] = ()
    float_dtype_param: bool = False
    """The op's `dtype` parameter makes float32 when not given (and no float tensor decides)."""
    work: WorkRule | None = None
    """Multiply-adds of a contraction, bounded separately from the result's size."""

    @property
    def signature(self) -> str:
        parts: list[str] = []
        star = False
        for param in self.params:
            if param.keyword_only and not star:
                parts.append("*")
                star = True
            parts.append(param.name if param.default is REQUIRED else f"{param.name}={_show(param.default)}")
        return f"{self.name}({', '.join(parts)})"

    def bind(self, positional: list[Any], keywords: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, as Python would bind them to TensorFlow's signature."""
        positional_params = [p for p in self.params if not p.keyword_only]
        if len(positional) > len(positional_params):
            raise ValueProblem(
                f"{self.name}() takes at most {len(positional_params)} positional arguments ({len(positional)} given)"
            )
        bound = {param.name: value for param, value in zip(positional_params, positional, strict=False)}
        names = {p.name for p in self.params}
        for key, value in keywords.items():
            if key not in names:
                raise ValueProblem(f"{self.name}() got an unexpected keyword argument '{key}'")
            if key in bound:
                raise ValueProblem(f"{self.name}() got multiple values for argument '{key}'")
            bound[key] = value
        missing = [p.name for p in self.params if p.default is REQUIRED and p.name not in bound]
        if missing:
            raise ValueProblem(f"{self.name}() is missing required argument '{missing[0]}'")
        return bound

    def with_defaults(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        return {p.name: bound.get(p.name, p.default) for p in self.params}


def _show(value: Any) -> str:
    if isinstance(value, tf.DType):
        return f"tf.{value.name}"
    return repr(value)


def _params(*required: str, **optional: Any) -> tuple[Param, ...]:
    return tuple(Param(name) for name in required) + tuple(Param(k, v) for k, v in optional.items())


def _keyword_only(**optional: Any) -> tuple[Param, ...]:
    return tuple(Param(k, v, keyword_only=True) for k, v in optional.items())


# --- size rules ----------------------------------------------------------------------------------


def _no_growth(args: Args) -> int | None:
    return None


def _broadcast(*names: str) -> SizeRule:
    def rule(args: Args) -> int | None:
        shapes = [shape_of(args[n], n) for n in names if args.get(n) is not None]
        out = broadcast_shape(shapes)
        return None if out is None else product(out)

    return rule


def _list_total(args: Args) -> int | None:
    values = args["values"]
    if isinstance(values, PyList):
        return sum(element_count(item) for item in values.items)
    return element_count(values)


def _tile(args: Args) -> int:
    return element_count(args["input"]) * product(static_int_vector(args["multiples"], "multiples"))


def _gather(args: Args) -> int | None:
    params = shape_of(args["params"], "params")
    indices = shape_of(args["indices"], "indices")
    batch_dims = static_int(args["batch_dims"], "batch_dims")
    axis = batch_dims if args["axis"] is None else static_int(args["axis"], "axis")
    axis = axis + len(params) if axis < 0 else axis
    batch_dims = batch_dims + len(indices) if batch_dims < 0 else batch_dims
    if not 0 <= axis < len(params) or not 0 <= batch_dims <= len(indices):
        return None  # TensorFlow rejects the axis before allocating
    return product(params[:axis]) * product(indices[batch_dims:]) * product(params[axis + 1 :])


def _one_hot(args: Args) -> int:
    return element_count(args["indices"]) * max(static_int(args["depth"], "depth"), 0)


def _shaped(param: str) -> SizeRule:
    def rule(args: Args) -> int:
        return product(static_int_vector(args[param], param))

    return rule


def _constant(args: Args) -> int | None:
    if args["shape"] is None:
        return None
    return product(static_int_vector(args["shape"], "shape"))


def _linspace(args: Args) -> int:
    ends = broadcast_shape([shape_of(args["start"], "start"), shape_of(args["stop"], "stop")])
    return product(ends or ()) * max(static_int(args["num"], "num"), 0)


def _range(args: Args) -> int:
    start, limit = args["start"], args["limit"]
    if limit is None:
        start, limit = 0, start
    first = static_number(start, "start")
    last = static_number(limit, "limit")
    delta = static_number(args["delta"], "delta")
    if delta == 0:
        raise ValueProblem("range() needs a non-zero delta")
    span = (last - first) / delta
    if not math.isfinite(span):
        raise SizeProblem("range() would create more elements than any limit allows")
    return max(math.ceil(span), 0)


def _eye(args: Args) -> int:
    rows = static_int(args["num_rows"], "num_rows")
    columns = rows if args["num_columns"] is None else static_int(args["num_columns"], "num_columns")
    batch = 1 if args["batch_shape"] is None else product(static_int_vector(args["batch_shape"], "batch_shape"))
    return batch * max(rows, 0) * max(columns, 0)


def _diag(args: Args) -> int | None:
    shape = shape_of(args["diagonal"], "diagonal")
    return product(shape) * shape[-1] if shape else None


def _where(args: Args) -> int | None:
    if args["x"] is None and args["y"] is None:
        condition = shape_of(args["condition"], "condition")
        return product(condition) * max(len(condition), 1)
    return _broadcast("condition", "x", "y")(args)


def _matmul_dims(args: Args) -> tuple[Shape, int, int, int] | None:
    """(batch shape, m, k, n) of a matmul, or None when the ranks are wrong (TensorFlow says so)."""
    a, b = shape_of(args["a"], "a"), shape_of(args["b"], "b")
    if len(a) < 2 or len(b) < 2:
        return None
    flip_a = static_bool(args["transpose_a"], "transpose_a") or static_bool(args["adjoint_a"], "adjoint_a")
    flip_b = static_bool(args["transpose_b"], "transpose_b") or static_bool(args["adjoint_b"], "adjoint_b")
    m, k = (a[-1], a[-2]) if flip_a else (a[-2], a[-1])
    n = b[-2] if flip_b else b[-1]
    batch = broadcast_shape([a[:-2], b[:-2]])
    return None if batch is None else (batch, m, k, n)


def _matmul(args: Args) -> int | None:
    dims = _matmul_dims(args)
    return None if dims is None else product(dims[0]) * dims[1] * dims[3]


def _matmul_work(args: Args) -> int:
    dims = _matmul_dims(args)
    return 0 if dims is None else product(dims[0]) * dims[1] * dims[2] * dims[3]


def _matvec_dims(args: Args) -> tuple[Shape, int, int] | None:
    a, b = shape_of(args["a"], "a"), shape_of(args["b"], "b")
    if len(a) < 2 or len(b) < 1:
        return None
    flip = static_bool(args["transpose_a"], "transpose_a") or static_bool(args["adjoint_a"], "adjoint_a")
    m, n = (a[-1], a[-2]) if flip else (a[-2], a[-1])
    batch = broadcast_shape([a[:-2], b[:-1]])
    return None if batch is None else (batch, m, n)


def _matvec(args: Args) -> int | None:
    dims = _matvec_dims(args)
    return None if dims is None else product(dims[0]) * dims[1]


def _matvec_work(args: Args) -> int:
    dims = _matvec_dims(args)
    return 0 if dims is None else product(dims[0]) * dims[1] * dims[2]


def matmul_operator_args(left: Any, right: Any) -> dict[str, Any]:
    """The arguments `a @ b` passes to tf.matmul, for the size and work rules."""
    return {"a": left, "b": right, "transpose_a": False, "transpose_b": False, "adjoint_a": False, "adjoint_b": False}


matmul_size = _matmul
matmul_work = _matmul_work
broadcast_size = _broadcast


# --- the table -----------------------------------------------------------------------------------

_X = _params("x")
_XY = _params("x", "y")
_FEATURES = _params("features")
_REDUCE = _params("input_tensor", axis=None, keepdims=False)


def _unary(name: str, fn: Callable[..., Any], tf_names: tuple[str, ...], summary: str) -> OpSpec:
    return OpSpec(name, fn, tf_names, _X, summary, _no_growth, ("x",))


def _activation(name: str, fn: Callable[..., Any], tf_names: tuple[str, ...], summary: str, **extra: Any) -> OpSpec:
    return OpSpec(name, fn, tf_names, _FEATURES + _params(**extra), summary, _no_growth, ("features",))


def _binary(name: str, fn: Callable[..., Any], tf_names: tuple[str, ...], summary: str) -> OpSpec:
    return OpSpec(name, fn, tf_names, _XY, summary, _broadcast("x", "y"), ("x", "y"))


def _reduction(name: str, fn: Callable[..., Any], tf_names: tuple[str, ...], summary: str) -> OpSpec:
    return OpSpec(name, fn, tf_names, _REDUCE, summary, _no_growth, ("input_tensor",))


OPS: tuple[OpSpec, ...] = (
    # element-wise maths
    _unary("abs", tf.math.abs, ("tf.abs", "tf.math.abs"), "|x| element-wise."),
    _unary("exp", tf.math.exp, ("tf.exp", "tf.math.exp"), "e^x element-wise."),
    _unary("log", tf.math.log, ("tf.math.log",), "Natural logarithm element-wise."),
    _unary("log1p", tf.math.log1p, ("tf.math.log1p",), "log(1 + x) element-wise."),
    _unary("sqrt", tf.math.sqrt, ("tf.sqrt", "tf.math.sqrt"), "Square root element-wise."),
    _unary("rsqrt", tf.math.rsqrt, ("tf.math.rsqrt",), "1 / sqrt(x) element-wise."),
    _unary("square", tf.math.square, ("tf.square", "tf.math.square"), "x² element-wise."),
    _unary("sin", tf.math.sin, ("tf.sin", "tf.math.sin"), "Sine element-wise."),
    _unary("cos", tf.math.cos, ("tf.cos", "tf.math.cos"), "Cosine element-wise."),
    _unary("tan", tf.math.tan, ("tf.tan", "tf.math.tan"), "Tangent element-wise."),
    _unary("sigmoid", tf.math.sigmoid, ("tf.sigmoid", "tf.math.sigmoid", "tf.nn.sigmoid"), "1 / (1 + e^-x)."),
    _unary("tanh", tf.math.tanh, ("tf.tanh", "tf.math.tanh", "tf.nn.tanh"), "Hyperbolic tangent."),
    _unary("sign", tf.math.sign, ("tf.sign", "tf.math.sign"), "-1, 0 or 1 element-wise."),
    _unary("negative", tf.math.negative, ("tf.negative", "tf.math.negative"), "-x element-wise."),
    _unary("reciprocal", tf.math.reciprocal, ("tf.math.reciprocal",), "1 / x element-wise."),
    _unary("floor", tf.math.floor, ("tf.floor", "tf.math.floor"), "Largest integer ≤ x."),
    _unary("ceil", tf.math.ceil, ("tf.math.ceil",), "Smallest integer ≥ x."),
    _unary("round", tf.math.round, ("tf.round", "tf.math.round"), "Round half to even."),
    # activations
    _activation("relu", tf.nn.relu, ("tf.nn.relu",), "max(features, 0)."),
    _activation("relu6", tf.nn.relu6, ("tf.nn.relu6",), "min(max(features, 0), 6)."),
    _activation(
        "leaky_relu",
        tf.nn.leaky_relu,
        ("tf.nn.leaky_relu",),
        "features if > 0 else alpha·features; alpha defaults to 0.2 as in TensorFlow (the seed uses 0.01).",
        alpha=0.2,
    ),
    _activation("elu", tf.nn.elu, ("tf.nn.elu",), "Exponential linear unit."),
    _activation("selu", tf.nn.selu, ("tf.nn.selu",), "Scaled exponential linear unit."),
    _activation("gelu", tf.nn.gelu, ("tf.nn.gelu",), "Gaussian error linear unit.", approximate=False),
    _activation("softplus", tf.math.softplus, ("tf.math.softplus", "tf.nn.softplus"), "log(1 + e^features)."),
    _activation("softsign", tf.math.softsign, ("tf.math.softsign", "tf.nn.softsign"), "features / (1 + |features|)."),
    OpSpec(
        "silu",
        tf.nn.silu,
        ("tf.nn.silu", "tf.nn.swish"),
        _FEATURES + _params(beta=1.0),
        "Swish: features · sigmoid(beta · features).",
        _no_growth,
        ("features",),
        aliases=("swish",),
    ),
    OpSpec(
        "softmax",
        tf.nn.softmax,
        ("tf.nn.softmax", "tf.math.softmax"),
        _params("logits", axis=None),
        "exp(logits) / sum(exp(logits)) along axis (default: last).",
        _no_growth,
        ("logits",),
    ),
    OpSpec(
        "log_softmax",
        tf.nn.log_softmax,
        ("tf.nn.log_softmax", "tf.math.log_softmax"),
        _params("logits", axis=None),
        "logits - log(sum(exp(logits))) along axis (default: last).",
        _no_growth,
        ("logits",),
    ),
    # binary maths and comparisons (broadcasting)
    _binary("add", tf.math.add, ("tf.add", "tf.math.add"), "x + y with broadcasting."),
    _binary("subtract", tf.math.subtract, ("tf.subtract", "tf.math.subtract"), "x - y with broadcasting."),
    _binary("multiply", tf.math.multiply, ("tf.multiply", "tf.math.multiply"), "x · y with broadcasting."),
    _binary("divide", tf.math.divide, ("tf.divide", "tf.math.divide"), "x / y with broadcasting."),
    _binary("pow", tf.math.pow, ("tf.pow", "tf.math.pow"), "x ** y with broadcasting."),
    _binary("maximum", tf.math.maximum, ("tf.maximum", "tf.math.maximum"), "Element-wise max (broadcasting)."),
    _binary("minimum", tf.math.minimum, ("tf.minimum", "tf.math.minimum"), "Element-wise min (broadcasting)."),
    _binary("squared_difference", tf.math.squared_difference, ("tf.math.squared_difference",), "(x - y)²."),
    _binary("equal", tf.math.equal, ("tf.equal", "tf.math.equal"), "x == y as a bool tensor."),
    _binary("not_equal", tf.math.not_equal, ("tf.not_equal", "tf.math.not_equal"), "x != y as a bool tensor."),
    _binary("less", tf.math.less, ("tf.less", "tf.math.less"), "x < y as a bool tensor."),
    _binary("less_equal", tf.math.less_equal, ("tf.less_equal", "tf.math.less_equal"), "x <= y as a bool tensor."),
    _binary("greater", tf.math.greater, ("tf.greater", "tf.math.greater"), "x > y as a bool tensor."),
    _binary("greater_equal", tf.math.greater_equal, ("tf.greater_equal", "tf.math.greater_equal"), "x >= y as bool."),
    _binary("logical_and", tf.math.logical_and, ("tf.logical_and", "tf.math.logical_and"), "x and y, bool."),
    _binary("logical_or", tf.math.logical_or, ("tf.logical_or", "tf.math.logical_or"), "x or y, bool."),
    OpSpec(
        "logical_not",
        tf.math.logical_not,
        ("tf.logical_not", "tf.math.logical_not"),
        _X,
        "not x, bool.",
        _no_growth,
        (),
    ),
    OpSpec(
        "where",
        tf.where,
        ("tf.where",),
        _params("condition", x=None, y=None),
        "x where condition else y (broadcasting); with condition only, the indices of True entries.",
        _where,
        ("x", "y"),
    ),
    OpSpec(
        "clip_by_value",
        tf.clip_by_value,
        ("tf.clip_by_value",),
        _params("t", "clip_value_min", "clip_value_max"),
        "t clipped into [clip_value_min, clip_value_max].",
        _broadcast("t", "clip_value_min", "clip_value_max"),
        ("t", "clip_value_min", "clip_value_max"),
    ),
    # reductions
    _reduction("reduce_sum", tf.math.reduce_sum, ("tf.reduce_sum", "tf.math.reduce_sum"), "Sum over axis (all)."),
    _reduction("reduce_mean", tf.math.reduce_mean, ("tf.reduce_mean", "tf.math.reduce_mean"), "Mean over axis."),
    _reduction("reduce_max", tf.math.reduce_max, ("tf.reduce_max", "tf.math.reduce_max"), "Max over axis."),
    _reduction("reduce_min", tf.math.reduce_min, ("tf.reduce_min", "tf.math.reduce_min"), "Min over axis."),
    _reduction("reduce_prod", tf.math.reduce_prod, ("tf.reduce_prod", "tf.math.reduce_prod"), "Product over axis."),
    _reduction(
        "reduce_logsumexp",
        tf.math.reduce_logsumexp,
        ("tf.reduce_logsumexp", "tf.math.reduce_logsumexp"),
        "log(sum(exp(x))) over axis, computed stably.",
    ),
    OpSpec(
        "argmax",
        tf.math.argmax,
        ("tf.argmax", "tf.math.argmax"),
        _params("input", axis=None, output_type=tf.int64),
        "Index of the largest entry along axis (default 0).",
        _no_growth,
        (),
    ),
    OpSpec(
        "argmin",
        tf.math.argmin,
        ("tf.argmin", "tf.math.argmin"),
        _params("input", axis=None, output_type=tf.int64),
        "Index of the smallest entry along axis (default 0).",
        _no_growth,
        (),
    ),
    OpSpec(
        "cumsum",
        tf.math.cumsum,
        ("tf.cumsum", "tf.math.cumsum"),
        _params("x", axis=0, exclusive=False, reverse=False),
        "Cumulative sum along axis.",
        _no_growth,
        ("x",),
    ),
    OpSpec(
        "norm",
        tf.norm,
        ("tf.norm", "tf.linalg.norm"),
        _params("tensor", ord="euclidean", axis=None, keepdims=None),
        "Vector or matrix norm (ord: a number; default Euclidean).",
        _no_growth,
        ("tensor",),
    ),
    # linear algebra
    OpSpec(
        "matmul",
        tf.linalg.matmul,
        ("tf.matmul", "tf.linalg.matmul"),
        _params("a", "b", transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False),
        "Matrix product a @ b over the last two axes (batch axes broadcast).",
        _matmul,
        ("a", "b"),
        work=_matmul_work,
    ),
    OpSpec(
        "matvec",
        tf.linalg.matvec,
        ("tf.linalg.matvec",),
        _params("a", "b", transpose_a=False, adjoint_a=False),
        "Matrix-vector product: a (…, m, n) times b (…, n) gives (…, m).",
        _matvec,
        ("a", "b"),
        work=_matvec_work,
    ),
    OpSpec("trace", tf.linalg.trace, ("tf.linalg.trace",), _X, "Sum of the main diagonal.", _no_growth, ("x",)),
    OpSpec(
        "diag",
        tf.linalg.diag,
        ("tf.linalg.diag",),
        _params("diagonal"),
        "A (…, n, n) matrix with diagonal (…, n) on its main diagonal.",
        _diag,
        ("diagonal",),
    ),
    OpSpec(
        "diag_part", tf.linalg.diag_part, ("tf.linalg.diag_part",), _params("input"), "Main diagonal.", _no_growth, ()
    ),
    OpSpec(
        "eye",
        tf.eye,
        ("tf.eye", "tf.linalg.eye"),
        _params("num_rows", num_columns=None, batch_shape=None, dtype=tf.float32),
        "Identity matrix (or a batch of them).",
        _eye,
        (),
        float_dtype_param=True,
    ),
    OpSpec(
        "matrix_transpose",
        tf.linalg.matrix_transpose,
        ("tf.linalg.matrix_transpose",),
        _params("a"),
        "Swap the last two axes.",
        _no_growth,
        ("a",),
    ),
    # shapes and indexing
    OpSpec(
        "concat",
        tf.concat,
        ("tf.concat",),
        _params("values", "axis"),
        "Join a list of tensors along an existing axis.",
        _list_total,
        ("values",),
    ),
    OpSpec(
        "stack",
        tf.stack,
        ("tf.stack",),
        _params("values", axis=0),
        "Join a list of same-shaped tensors along a new axis.",
        _list_total,
        ("values",),
    ),
    OpSpec(
        "unstack",
        tf.unstack,
        ("tf.unstack",),
        _params("value", num=None, axis=0),
        "Split a tensor into a list along axis.",
        _no_growth,
        ("value",),
    ),
    OpSpec(
        "reshape",
        tf.reshape,
        ("tf.reshape",),
        _params("tensor", "shape"),
        "Same elements, new shape (-1 infers one dimension).",
        _no_growth,
        ("tensor",),
    ),
    OpSpec(
        "transpose",
        tf.transpose,
        ("tf.transpose",),
        _params("a", perm=None),
        "Permute the axes (default: reverse them).",
        _no_growth,
        ("a",),
    ),
    OpSpec(
        "expand_dims",
        tf.expand_dims,
        ("tf.expand_dims",),
        _params("input", "axis"),
        "Insert an axis of length 1.",
        _no_growth,
        ("input",),
    ),
    OpSpec(
        "squeeze",
        tf.squeeze,
        ("tf.squeeze",),
        _params("input", axis=None),
        "Remove axes of length 1.",
        _no_growth,
        ("input",),
    ),
    OpSpec(
        "tile",
        tf.tile,
        ("tf.tile",),
        _params("input", "multiples"),
        "Repeat the tensor multiples[i] times along axis i.",
        _tile,
        ("input",),
    ),
    OpSpec(
        "gather",
        tf.gather,
        ("tf.gather",),
        _params("params", "indices", validate_indices=None, axis=None, batch_dims=0),
        "Slices of params at indices along axis.",
        _gather,
        ("params",),
    ),
    OpSpec(
        "reverse",
        tf.reverse,
        ("tf.reverse",),
        _params("tensor", "axis"),
        "Reverse the order along the given axes.",
        _no_growth,
        ("tensor",),
    ),
    OpSpec(
        "one_hot",
        tf.one_hot,
        ("tf.one_hot",),
        _params("indices", "depth", on_value=None, off_value=None, axis=None, dtype=None),
        "One-hot rows of length depth for integer indices (float32 unless on/off values or dtype say else).",
        _one_hot,
        ("on_value", "off_value"),
        float_dtype_param=True,
    ),
    # creating tensors
    OpSpec(
        "constant",
        tf.constant,
        ("tf.constant",),
        _params("value", dtype=None, shape=None),
        "A tensor from numbers or lists (integer lists give int32, as in TensorFlow).",
        _constant,
        ("value",),
    ),
    OpSpec(
        "ones",
        tf.ones,
        ("tf.ones",),
        _params("shape", dtype=tf.float32),
        "A tensor of ones.",
        _shaped("shape"),
        (),
        float_dtype_param=True,
    ),
    OpSpec(
        "zeros",
        tf.zeros,
        ("tf.zeros",),
        _params("shape", dtype=tf.float32),
        "A tensor of zeros.",
        _shaped("shape"),
        (),
        float_dtype_param=True,
    ),
    OpSpec(
        "ones_like",
        tf.ones_like,
        ("tf.ones_like",),
        _params("input", dtype=None),
        "Ones with the shape (and dtype) of input.",
        _no_growth,
        ("input",),
    ),
    OpSpec(
        "zeros_like",
        tf.zeros_like,
        ("tf.zeros_like",),
        _params("input", dtype=None),
        "Zeros with the shape (and dtype) of input.",
        _no_growth,
        ("input",),
    ),
    OpSpec(
        "fill",
        tf.fill,
        ("tf.fill",),
        _params("dims", "value"),
        "A tensor of shape dims filled with the scalar value.",
        _shaped("dims"),
        ("value",),
    ),
    OpSpec(
        "broadcast_to",
        tf.broadcast_to,
        ("tf.broadcast_to",),
        _params("input", "shape"),
        "Broadcast input to shape.",
        _shaped("shape"),
        ("input",),
    ),
    OpSpec(
        "linspace",
        tf.linspace,
        ("tf.linspace",),
        _params("start", "stop", "num") + _keyword_only(axis=0),
        "num evenly spaced values from start to stop inclusive (integer ends give float64, as in TensorFlow).",
        _linspace,
        ("start", "stop"),
    ),
    OpSpec(
        "range",
        tf.range,
        ("tf.range",),
        _params("start", limit=None, delta=1, dtype=None),
        "start, start + delta, … up to but excluding limit (range(n) counts from 0).",
        _range,
        ("start", "limit", "delta"),
    ),
    # types and the tape
    OpSpec(
        "cast",
        tf.cast,
        ("tf.cast", "tf.dtypes.cast"),
        _params("x", "dtype"),
        "Convert to dtype (tf.float32, tf.float64, tf.int32, tf.int64, tf.bool).",
        _no_growth,
        ("x",),
    ),
    OpSpec("identity", tf.identity, ("tf.identity",), _params("input"), "The same values.", _no_growth, ("input",)),
    OpSpec(
        "stop_gradient",
        tf.stop_gradient,
        ("tf.stop_gradient",),
        _params("input"),
        "The same values, but no gradient flows through.",
        _no_growth,
        ("input",),
    ),
    OpSpec(
        "shape",
        tf.shape,
        ("tf.shape",),
        _params("input", out_type=None),
        "The shape as an int32 tensor.",
        _no_growth,
        (),
    ),
    OpSpec(
        "size",
        tf.size,
        ("tf.size",),
        _params("input", out_type=None),
        "The number of elements as an int32 scalar.",
        _no_growth,
        (),
    ),
    OpSpec("rank", tf.rank, ("tf.rank",), _params("input"), "The number of axes as an int32 scalar.", _no_growth, ()),
)

OPS_BY_NAME: dict[str, OpSpec] = {alias: op for op in OPS for alias in (op.name, *op.aliases)}
OPS_BY_TF_NAME: dict[str, OpSpec] = {tf_name: op for op in OPS for tf_name in op.tf_names}

DTYPES: dict[str, tf.DType] = {
    f"{prefix}.{name}": dtype
    for prefix in ("tf", "tf.dtypes")
    for name, dtype in {
        "float32": tf.float32,
        "float64": tf.float64,
        "int32": tf.int32,
        "int64": tf.int64,
        "bool": tf.bool,
    }.items()
}
"""The dtype constants a program may name."""
