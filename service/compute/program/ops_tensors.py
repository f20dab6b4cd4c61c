"""The op table, tensor half: linear algebra, shapes and indexing, creating tensors, types and the tape.
Each entry is an `OpSpec` built by keyword; add a function by adding one.
"""

from __future__ import annotations

from functools import partial

import tensorflow as tf

from service.compute.program import sizes
from service.compute.program.opspec import OpSpec, keyword_only, params

X = params("x")

# The families: OpSpec with the parameters, size rule and data a family shares; rows give the rest by keyword.
constant_of_shape = partial(
    OpSpec, params=params("shape", dtype=tf.float32), size=sizes.shaped("shape"), float_dtype_param=True
)
"""A tensor of `shape` filled with one value, float32 unless `dtype` says else."""
constant_like = partial(OpSpec, params=params("input", dtype=None), data=("input",))
"""A tensor of `input`'s shape (and dtype) filled with one value."""
same_values = partial(OpSpec, params=params("input"), data=("input",))
"""`input`'s values unchanged (what differs is the gradient)."""
measure = partial(OpSpec, params=params("input", out_type=None))
"""A count read off `input`'s shape, as an int32 tensor unless `out_type` says else."""

TENSORS: tuple[OpSpec, ...] = (
    # linear algebra
    OpSpec(
        fn=tf.linalg.matmul,
        tf_names=("tf.matmul", "tf.linalg.matmul"),
        params=params("a", "b", transpose_a=False, transpose_b=False, adjoint_a=False, adjoint_b=False),
        summary="Matrix product a @ b over the last two axes (batch axes broadcast).",
        size=sizes.matmul,
        data=("a", "b"),
        work=sizes.matmul_work,
    ),
    OpSpec(
        fn=tf.linalg.matvec,
        tf_names=("tf.linalg.matvec",),
        params=params("a", "b", transpose_a=False, adjoint_a=False),
        summary="Matrix-vector product: a (…, m, n) times b (…, n) gives (…, m).",
        size=sizes.matvec,
        data=("a", "b"),
        work=sizes.matvec_work,
    ),
    OpSpec(
        fn=tf.tensordot,
        tf_names=("tf.tensordot", "tf.linalg.tensordot"),
        params=params("a", "b", "axes"),
        summary="Contract the last axes of a with the first of b (axes: a count), or the listed [a_axes, b_axes].",
        size=sizes.tensordot,
        data=("a", "b"),
        work=sizes.tensordot_work,
    ),
    OpSpec(
        fn=tf.linalg.trace, tf_names=("tf.linalg.trace",), params=X, summary="Sum of the main diagonal.", data=("x",)
    ),
    OpSpec(
        fn=tf.linalg.diag,
        tf_names=("tf.linalg.diag",),
        params=params("diagonal"),
        summary="A (…, n, n) matrix with diagonal (…, n) on its main diagonal.",
        size=sizes.diag,
        data=("diagonal",),
    ),
    OpSpec(fn=tf.linalg.diag_part, tf_names=("tf.linalg.diag_part",), params=params("input"), summary="Main diagonal."),
    OpSpec(
        fn=tf.eye,
        tf_names=("tf.eye", "tf.linalg.eye"),
        params=params("num_rows", num_columns=None, batch_shape=None, dtype=tf.float32),
        summary="Identity matrix (or a batch of them).",
        size=sizes.eye,
        float_dtype_param=True,
    ),
    OpSpec(
        fn=tf.linalg.matrix_transpose,
        tf_names=("tf.linalg.matrix_transpose",),
        params=params("a"),
        summary="Swap the last two axes.",
        data=("a",),
    ),
    # shapes and indexing
    OpSpec(
        fn=tf.concat,
        tf_names=("tf.concat",),
        params=params("values", "axis"),
        summary="Join a list of tensors along an existing axis.",
        size=sizes.list_total,
        data=("values",),
    ),
    OpSpec(
        fn=tf.stack,
        tf_names=("tf.stack",),
        params=params("values", axis=0),
        summary="Join a list of same-shaped tensors along a new axis.",
        size=sizes.list_total,
        data=("values",),
    ),
    OpSpec(
        fn=tf.unstack,
        tf_names=("tf.unstack",),
        params=params("value", num=None, axis=0),
        summary="Split a tensor into a list along axis.",
        size=sizes.unstack,
        data=("value",),
    ),
    OpSpec(
        fn=tf.split,
        tf_names=("tf.split",),
        params=params("value", "num_or_size_splits", axis=0, num=None),
        summary="A list of pieces along axis: num_or_size_splits equal ones, or pieces of the listed sizes "
        "(one may be -1). Unpack it (a, b = tf.split(x, 2)) or subscript it.",
        size=sizes.split,
        data=("value",),
    ),
    OpSpec(
        fn=tf.reshape,
        tf_names=("tf.reshape",),
        params=params("tensor", "shape"),
        summary="Same elements, new shape (-1 infers one dimension).",
        data=("tensor",),
    ),
    OpSpec(
        fn=tf.transpose,
        tf_names=("tf.transpose",),
        params=params("a", perm=None),
        summary="Permute the axes (default: reverse them).",
        data=("a",),
    ),
    OpSpec(
        fn=tf.expand_dims,
        tf_names=("tf.expand_dims",),
        params=params("input", "axis"),
        summary="Insert an axis of length 1.",
        data=("input",),
    ),
    OpSpec(
        fn=tf.squeeze,
        tf_names=("tf.squeeze",),
        params=params("input", axis=None),
        summary="Remove axes of length 1.",
        data=("input",),
    ),
    OpSpec(
        fn=tf.tile,
        tf_names=("tf.tile",),
        params=params("input", "multiples"),
        summary="Repeat the tensor multiples[i] times along axis i.",
        size=sizes.tile,
        data=("input",),
    ),
    OpSpec(
        fn=tf.gather,
        tf_names=("tf.gather",),
        params=params("params", "indices", validate_indices=None, axis=None, batch_dims=0),
        summary="Slices of params at indices along axis.",
        size=sizes.gather,
        data=("params",),
    ),
    OpSpec(
        fn=tf.reverse,
        tf_names=("tf.reverse",),
        params=params("tensor", "axis"),
        summary="Reverse the order along the given axes.",
        data=("tensor",),
    ),
    OpSpec(
        fn=tf.one_hot,
        tf_names=("tf.one_hot",),
        params=params("indices", "depth", on_value=None, off_value=None, axis=None, dtype=None),
        summary="One-hot rows of length depth for integer indices (float32 unless on/off values or dtype say else).",
        size=sizes.one_hot,
        data=("on_value", "off_value"),
        float_dtype_param=True,
    ),
    # creating tensors
    OpSpec(
        fn=tf.constant,
        tf_names=("tf.constant",),
        params=params("value", dtype=None, shape=None),
        summary="A tensor from numbers or lists (integer lists give int32, as in TensorFlow).",
        size=sizes.constant,
        data=("value",),
    ),
    constant_of_shape(fn=tf.ones, tf_names=("tf.ones",), summary="A tensor of ones."),
    constant_of_shape(fn=tf.zeros, tf_names=("tf.zeros",), summary="A tensor of zeros."),
    constant_like(fn=tf.ones_like, tf_names=("tf.ones_like",), summary="Ones with the shape (and dtype) of input."),
    constant_like(fn=tf.zeros_like, tf_names=("tf.zeros_like",), summary="Zeros with the shape (and dtype) of input."),
    OpSpec(
        fn=tf.fill,
        tf_names=("tf.fill",),
        params=params("dims", "value"),
        summary="A tensor of shape dims filled with the scalar value.",
        size=sizes.shaped("dims"),
        data=("value",),
    ),
    OpSpec(
        fn=tf.broadcast_to,
        tf_names=("tf.broadcast_to",),
        params=params("input", "shape"),
        summary="Broadcast input to shape.",
        size=sizes.shaped("shape"),
        data=("input",),
    ),
    OpSpec(
        fn=tf.linspace,
        tf_names=("tf.linspace",),
        params=params("start", "stop", "num") + keyword_only(axis=0),
        summary="num evenly spaced values from start to stop inclusive (integer ends give float64, as in TensorFlow).",
        size=sizes.linspace,
        data=("start", "stop"),
    ),
    OpSpec(
        fn=tf.range,
        tf_names=("tf.range",),
        params=params("start", limit=None, delta=1, dtype=None),
        summary="start, start + delta, … up to but excluding limit (range(n) counts from 0).",
        size=sizes.range_length,
        data=("start", "limit", "delta"),
    ),
    # types and the tape
    OpSpec(
        fn=tf.cast,
        tf_names=("tf.cast", "tf.dtypes.cast"),
        params=params("x", "dtype"),
        summary="Convert to dtype (tf.float32, tf.float64, tf.int32, tf.int64, tf.bool).",
        data=("x",),
    ),
    same_values(fn=tf.identity, tf_names=("tf.identity",), summary="The same values."),
    same_values(
        fn=tf.stop_gradient, tf_names=("tf.stop_gradient",), summary="The same values, but no gradient flows through."
    ),
    measure(fn=tf.shape, tf_names=("tf.shape",), summary="The shape as an int32 tensor."),
    measure(fn=tf.size, tf_names=("tf.size",), summary="The number of elements as an int32 scalar."),
    OpSpec(fn=tf.rank, tf_names=("tf.rank",), params=params("input"), summary="The number of axes as an int32 scalar."),
)
