"""Size rules of the op table: the element count of an op's result (and a contraction's multiply-adds),
worked out from its arguments before TensorFlow allocates anything.

A size rule returns None when the result can be no larger than the op's largest argument.
"""

from __future__ import annotations

import math
from typing import Any

from service.compute.program.limits import MAX_LIST_LEAVES
from service.compute.program.opspec import Args, SizeRule
from service.compute.program.values import (
    PyList,
    Shape,
    SizeProblem,
    ValueProblem,
    broadcast_shape,
    element_count,
    is_tensor,
    product,
    shape_of,
    static_bool,
    static_int,
    static_int_array,
    static_int_vector,
    static_number,
    tensor_shape,
)


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


# --- lists of tensors, contractions, lookups and segments ------------------------------------------


def pieces(count: int, what: str) -> None:
    """A function returning a list of `count` tensors: TensorFlow builds them all before the list exists."""
    if count > MAX_LIST_LEAVES:
        raise SizeProblem(f"{what} would make {count:,} tensors, above {MAX_LIST_LEAVES:,}")


def unstack(args: Args) -> None:
    shape = shape_of(args["value"], "value")
    if args["num"] is not None:
        pieces(static_int(args["num"], "num"), "unstack")
    axis = static_int(args["axis"], "axis")
    if -len(shape) <= axis < len(shape):
        pieces(shape[axis], "unstack")


def split(args: Args) -> None:
    splits = args["num_or_size_splits"]
    if isinstance(splits, PyList) or (is_tensor(splits) and len(tensor_shape(splits)) == 1):
        count = len(splits.items) if isinstance(splits, PyList) else tensor_shape(splits)[0]
    else:
        count = static_int(splits, "num_or_size_splits")
        if count < 1:
            raise ValueProblem(f"num_or_size_splits must be at least 1, not {count}")
    pieces(count, "split")


def list_largest(args: Args) -> int | None:
    """add_n: as large as the largest of its inputs."""
    values = args["inputs"]
    if isinstance(values, PyList):
        return max((element_count(item) for item in values.items), default=0)
    return element_count(values)


def _tensordot_axes(args: Args, rank_a: int, rank_b: int) -> tuple[list[int], list[int]]:
    axes = args["axes"]
    if isinstance(axes, PyList) and len(axes.items) == 2:
        pair = [static_int_vector(side, "axes") for side in axes.items]
        if len(pair[0]) != len(pair[1]):
            raise ValueProblem(f"axes: {len(pair[0])} axes of a against {len(pair[1])} of b")
        return (
            [axis + rank_a if axis < 0 else axis for axis in pair[0]],
            [axis + rank_b if axis < 0 else axis for axis in pair[1]],
        )
    count = static_int(axes, "axes")
    if not 0 <= count <= min(rank_a, rank_b):
        raise ValueProblem(f"axes must be between 0 and {min(rank_a, rank_b)} (the smaller rank), not {count}")
    return list(range(rank_a - count, rank_a)), list(range(count))


def tensordot_dims(args: Args) -> tuple[int, int, int]:
    """(free elements of a, free elements of b, contracted elements) of tf.tensordot."""
    a, b = shape_of(args["a"], "a"), shape_of(args["b"], "b")
    axes_a, axes_b = _tensordot_axes(args, len(a), len(b))
    for axes, shape, side in ((axes_a, a, "a"), (axes_b, b, "b")):
        if any(not 0 <= axis < len(shape) for axis in axes) or len(set(axes)) != len(axes):
            raise ValueProblem(f"axes: {side} has rank {len(shape)}; its axes must be distinct and within it")
    free_a = product(d for i, d in enumerate(a) if i not in axes_a)
    free_b = product(d for i, d in enumerate(b) if i not in axes_b)
    return free_a, free_b, product(a[i] for i in axes_a)


def tensordot(args: Args) -> int:
    free_a, free_b, _ = tensordot_dims(args)
    return free_a * free_b


def tensordot_work(args: Args) -> int:
    free_a, free_b, contracted = tensordot_dims(args)
    return free_a * free_b * contracted


def embedding_lookup(args: Args) -> int:
    params = args["params"]
    shards = params.items if isinstance(params, PyList) and params.has_tensor else (params,)
    first = shape_of(shards[0], "params") if shards else ()
    if not first:
        raise ValueProblem("params must be a tensor of rank 1 or more (or a list of such shards)")
    return element_count(args["ids"]) * product(first[1:])


def _segment_rows(data: Shape, ids: Shape) -> int:
    """Elements of one output row: data's shape after segment_ids' (which must lead it)."""
    if data[: len(ids)] != ids:
        raise ValueProblem(f"data.shape = {list(data)} does not start with segment_ids.shape = {list(ids)}")
    return product(data[len(ids) :])


def segments(args: Args) -> int:
    """segment_*: one row per id up to the largest (the ids are sorted), each of data's trailing shape."""
    data = shape_of(args["data"], "data")
    ids = static_int_array(args["segment_ids"], "segment_ids")
    row = _segment_rows(data, tuple(ids.shape))
    return (int(ids.max()) + 1 if ids.size else 0) * row


def unsorted_segments(args: Args) -> int:
    data = shape_of(args["data"], "data")
    row = _segment_rows(data, shape_of(args["segment_ids"], "segment_ids"))
    count = static_int(args["num_segments"], "num_segments")
    if count < 0:
        raise ValueProblem(f"num_segments must be non-negative, not {count}")
    return count * row
