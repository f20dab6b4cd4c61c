"""Size rules of the op table: the element count of an op's result (and a contraction's multiply-adds),
worked out from its arguments before TensorFlow allocates anything.

A size rule returns None when the result can be no larger than the op's largest argument.
"""

from __future__ import annotations

import math
from typing import Any

from service.compute.program.opspec import Args, SizeRule
from service.compute.program.values import (
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


def no_growth(args: Args) -> int | None:
    return None


def broadcast(*names: str) -> SizeRule:
    def rule(args: Args) -> int | None:
        shapes = [shape_of(args[n], n) for n in names if args.get(n) is not None]
        out = broadcast_shape(shapes)
        return None if out is None else product(out)

    return rule


def list_total(args: Args) -> int | None:
    values = args["values"]
    if isinstance(values, PyList):
        return sum(element_count(item) for item in values.items)
    return element_count(values)


def tile(args: Args) -> int:
    return element_count(args["input"]) * product(static_int_vector(args["multiples"], "multiples"))


def gather(args: Args) -> int | None:
    params = shape_of(args["params"], "params")
    indices = shape_of(args["indices"], "indices")
    batch_dims = static_int(args["batch_dims"], "batch_dims")
    axis = batch_dims if args["axis"] is None else static_int(args["axis"], "axis")
    axis = axis + len(params) if axis < 0 else axis
    batch_dims = batch_dims + len(indices) if batch_dims < 0 else batch_dims
    if not 0 <= axis < len(params) or not 0 <= batch_dims <= len(indices):
        return None  # TensorFlow rejects the axis before allocating
    return product(params[:axis]) * product(indices[batch_dims:]) * product(params[axis + 1 :])


def one_hot(args: Args) -> int:
    return element_count(args["indices"]) * max(static_int(args["depth"], "depth"), 0)


def shaped(param: str) -> SizeRule:
    def rule(args: Args) -> int:
        return product(static_int_vector(args[param], param))

    return rule


def constant(args: Args) -> int | None:
    if args["shape"] is None:
        return None
    return product(static_int_vector(args["shape"], "shape"))


def linspace(args: Args) -> int:
    ends = broadcast_shape([shape_of(args["start"], "start"), shape_of(args["stop"], "stop")])
    return product(ends or ()) * max(static_int(args["num"], "num"), 0)


def range_length(args: Args) -> int:
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


def eye(args: Args) -> int:
    rows = static_int(args["num_rows"], "num_rows")
    columns = rows if args["num_columns"] is None else static_int(args["num_columns"], "num_columns")
    batch = 1 if args["batch_shape"] is None else product(static_int_vector(args["batch_shape"], "batch_shape"))
    return batch * max(rows, 0) * max(columns, 0)


def diag(args: Args) -> int | None:
    shape = shape_of(args["diagonal"], "diagonal")
    return product(shape) * shape[-1] if shape else None


def where(args: Args) -> int | None:
    if args["x"] is None and args["y"] is None:
        condition = shape_of(args["condition"], "condition")
        return product(condition) * max(len(condition), 1)
    return broadcast("condition", "x", "y")(args)


def matmul_dims(args: Args) -> tuple[Shape, int, int, int] | None:
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


def matmul(args: Args) -> int | None:
    dims = matmul_dims(args)
    return None if dims is None else product(dims[0]) * dims[1] * dims[3]


def matmul_work(args: Args) -> int:
    dims = matmul_dims(args)
    return 0 if dims is None else product(dims[0]) * dims[1] * dims[2] * dims[3]


def matvec_dims(args: Args) -> tuple[Shape, int, int] | None:
    a, b = shape_of(args["a"], "a"), shape_of(args["b"], "b")
    if len(a) < 2 or len(b) < 1:
        return None
    flip = static_bool(args["transpose_a"], "transpose_a") or static_bool(args["adjoint_a"], "adjoint_a")
    m, n = (a[-1], a[-2]) if flip else (a[-2], a[-1])
    batch = broadcast_shape([a[:-2], b[:-1]])
    return None if batch is None else (batch, m, n)


def matvec(args: Args) -> int | None:
    dims = matvec_dims(args)
    return None if dims is None else product(dims[0]) * dims[1]


def matvec_work(args: Args) -> int:
    dims = matvec_dims(args)
    return 0 if dims is None else product(dims[0]) * dims[1] * dims[2]


def matmul_operator_args(left: Any, right: Any) -> dict[str, Any]:
    """The arguments `a @ b` passes to tf.matmul, for the size and work rules."""
    return {"a": left, "b": right, "transpose_a": False, "transpose_b": False, "adjoint_a": False, "adjoint_b": False}
