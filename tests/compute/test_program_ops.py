"""The ops TensorFlow's own gradient tests use (issue 15): every one's value, gradient and forward-mode
product against the same TensorFlow code run in-process on a GradientTape / ForwardAccumulator, in
float32 and float64, and its gradient against central finite differences where it is smooth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf

from service.compute.errors import ProgramError, TapeSemanticsError
from service.compute.program import ComputeRequest, TapeInput, TapeRun
from service.compute.program.ops import list_ops
from service.compute.program.runner import run_tape

Array = npt.NDArray[Any]
Tensors = dict[str, Any]

RNG = np.random.default_rng(15)


def grid(*shape: int, low: float = 0.5, high: float = 2.0) -> Array:
    """Distinct values (no ties for max / min / pools), away from kinks."""
    count = int(np.prod(shape))
    values = np.linspace(low, high, count)
    return RNG.permutation(values).reshape(shape)


@dataclass(frozen=True)
class Case:
    id: str
    program: str
    """Assigns `y` from the float inputs (and integer ones in `ints`)."""
    floats: dict[str, Array]
    ints: dict[str, Array] = field(default_factory=dict)
    smooth: bool = True
    """Finite differences are a fair reference (no kink or jump near the inputs)."""

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self.floats)

    def reference(self, given: Tensors) -> Any:
        """The same program run as Python on TensorFlow in-process, on the same inputs: its `y`."""
        scope = dict(given)
        exec(self.program, {"tf": tf}, scope)  # noqa: S102 - the test's own program text
        return scope["y"]


X23 = grid(2, 3)
W23 = grid(2, 3, low=0.7, high=1.9)
IMAGE = grid(2, 5, 4, 3)  # NHWC
FILTERS = grid(3, 2, 3, 4, low=-1.0, high=1.0)
DEPTHWISE = grid(2, 2, 3, 2, low=-1.0, high=1.0)
SIGNAL = grid(2, 7, 3)  # NWC
FILTERS_1D = grid(3, 3, 2, low=-1.0, high=1.0)
TABLE = grid(4, 3)
SHARD = grid(3, 3, low=3.0, high=4.0)
SEGMENT_DATA = grid(4, 2)
LOGITS = grid(3, 4, low=-2.0, high=2.0)
LABELS = np.array([[0.1, 0.2, 0.3, 0.4], [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
"""Distributions along the last axis: TensorFlow's gradient by the logits, softmax - labels, is the
derivative only where the labels sum to 1 (elsewhere the answer is still TensorFlow's, as tested)."""


def on(floats: dict[str, Array], programs: dict[str, str], *, smooth: bool = True) -> list[Case]:
    """One case per `id: program`, every one on the same float inputs."""
    return [Case(id, program, floats, smooth=smooth) for id, program in programs.items()]


XW = {"x": X23, "w": W23}

CASES: list[Case] = [
    *on(
        {"x": X23},
        {
            "reduce_euclidean_norm": "y = tf.math.reduce_euclidean_norm(x, axis=1)",
            "reduce_euclidean_norm_all_keepdims": "y = tf.math.reduce_euclidean_norm(x, keepdims=True)",
            "reduce_euclidean_norm_negative_axis": "y = tf.math.reduce_euclidean_norm(x, axis=-2)",
            "split_unpacked": "a, b = tf.split(x, 2, axis=0)\ny = a * b + tf.reduce_sum(b)",
            "split_sizes_subscripted": "p = tf.split(x, [1, -1], 1)\ny = p[0] * p[1][:, 1:] + p[-1][:, :1]",
            "split_negative_axis": "c, d, e = tf.split(x, num_or_size_splits=3, axis=-1)\ny = c * d * e",
            "l2_loss": "y = tf.nn.l2_loss(x)",
        },
    ),
    *on(
        XW,
        {
            "xlogy": "y = tf.math.xlogy(x, w)",
            "xlog1py": "y = tf.math.xlog1py(x, w)",
            "xdivy": "y = tf.math.xdivy(x, w)",
            "tensordot_count": "y = tf.tensordot(x, tf.transpose(w), 1)",
            "tensordot_lists": "y = tf.tensordot(x, w, [[1, 0], [-1, 0]])",
            "tensordot_outer": "y = tf.linalg.tensordot(x, w, axes=0)",
            "add_n": "y = tf.math.add_n([x, w, x * w])",
        },
    ),
    *on(
        XW,
        {
            # TensorFlow's gradient by x is 0 where x is 0; finite differences disagree
            "xlogy_xdivy_at_zero": "y = tf.math.xlogy(x * 0.0, w) + tf.math.xdivy(x * 0.0, w) "
            "+ tf.math.xlog1py(x * 0.0, w)",
            # a step of one ulp: finite differences see the identity, or nothing
            "nextafter": "y = tf.math.nextafter(x, w)",
            # jumps where x·3 / w crosses an integer
            "floormod": "y = tf.math.floormod(x * 3.0, w)",
            "mod_negative": "y = tf.math.mod(-x, w)",
            "divide_no_nan": "y = tf.math.divide_no_nan(x, tf.nn.relu(w - 1.2))",
        },
        smooth=False,
    ),
    Case("multiply_no_nan", "y = tf.math.multiply_no_nan(tf.math.log(x - 1.0), w - 1.0)", {"x": X23 + 0.75, "w": W23}),
    Case(
        "embedding_lookup",
        "y = tf.nn.embedding_lookup(x, ids)",
        {"x": TABLE},
        {"ids": np.array([[0, 2], [3, 2]], dtype=np.int32)},
    ),
    Case(
        "embedding_lookup_max_norm",
        "y = tf.nn.embedding_lookup(x, ids, max_norm=1.5)",
        {"x": TABLE},
        {"ids": np.array([1, 1, 3], dtype=np.int64)},
    ),
    Case("embedding_lookup_shards", "y = tf.nn.embedding_lookup([x, w], [0, 5, 2, 3])", {"x": TABLE, "w": SHARD}),
    *(
        Case(f"{op}_{kind}", f"y = tf.math.{op}_{kind}(x, ids{count})", {"x": SEGMENT_DATA}, {"ids": ids})
        for op, count, ids in (
            ("segment", "", np.array([0, 0, 2, 2], dtype=np.int32)),
            ("unsorted_segment", ", 3", np.array([2, 0, 2, 1], dtype=np.int64)),
        )
        for kind in ("sum", "mean", "max", "min")
    ),
    Case(
        "unsorted_segment_sum_dropped_and_empty",
        "y = tf.math.unsorted_segment_sum(x, [-1, 0, 3, 0], num_segments=5)",
        {"x": SEGMENT_DATA},
    ),
    *on(
        {"x": IMAGE, "w": FILTERS},
        {
            "conv2d_same": "y = tf.nn.conv2d(x, w, strides=1, padding='SAME')",
            "conv2d_valid_strided": "y = tf.nn.conv2d(x, w, [1, 2, 1, 1], 'VALID')",
            "conv2d_explicit": "y = tf.nn.conv2d(x, w, 1, [[0, 0], [1, 2], [0, 1], [0, 0]])",
        },
    ),
    *on(
        {"x": SIGNAL, "w": FILTERS_1D},
        {
            "conv1d": "y = tf.nn.conv1d(x, w, stride=2, padding='SAME')",
            "conv1d_valid": "y = tf.nn.conv1d(x, w, 1, 'VALID')",
        },
    ),
    *on(
        {"x": IMAGE, "w": DEPTHWISE},
        {
            "depthwise_conv2d": "y = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], 'SAME')",
            "depthwise_conv2d_strided": "y = tf.nn.depthwise_conv2d(x, w, strides=[1, 2, 2, 1], padding='VALID')",
        },
    ),
    *on(
        {"x": IMAGE},
        {
            "max_pool2d": "y = tf.nn.max_pool2d(x, ksize=2, strides=2, padding='SAME')",
            "max_pool2d_overlapping": "y = tf.nn.max_pool2d(x, [3, 2], [1, 1], 'VALID')",
            "avg_pool2d": "y = tf.nn.avg_pool2d(x, 2, 2, 'SAME')",
            "avg_pool2d_valid": "y = tf.nn.avg_pool2d(x, [1, 2, 3, 1], [1, 1, 1, 1], padding='VALID')",
        },
    ),
    *on(
        {"x": LOGITS, "w": LABELS},
        {
            "softmax_cross_entropy_with_logits": "y = tf.nn.softmax_cross_entropy_with_logits(labels=w, logits=x)",
            "sigmoid_cross_entropy_with_logits": "y = tf.nn.sigmoid_cross_entropy_with_logits(labels=w, logits=x)",
        },
    ),
    Case(
        "softmax_cross_entropy_with_logits_axis0",
        "y = tf.nn.softmax_cross_entropy_with_logits(w, x, axis=0)",
        {"x": LOGITS, "w": LABELS / LABELS.sum(axis=0)},
    ),
    Case(
        "sparse_softmax_cross_entropy_with_logits",
        "y = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=k, logits=x)",
        {"x": LOGITS},
        {"k": np.array([3, 0, 2], dtype=np.int32)},
    ),
]


def tensors(case: Case, dtype: tf.DType) -> Tensors:
    return {name: tf.constant(v, dtype=dtype) for name, v in case.floats.items()} | {
        name: tf.constant(v) for name, v in case.ints.items()
    }


def tangents(case: Case) -> dict[str, Array]:
    return {name: np.cos(np.arange(v.size)).reshape(v.shape) for name, v in case.floats.items()}


def in_process(case: Case, dtype: tf.DType) -> tuple[Array, list[Array], Array]:
    """The case's value, its gradient by each float input, and its jvp, straight from TensorFlow."""
    given = tensors(case, dtype)
    sources = [given[name] for name in case.sources]
    with tf.GradientTape() as tape:
        tape.watch(sources)
        y = case.reference(given)
    gradients = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(y, sources)]
    with tf.autodiff.ForwardAccumulator(sources, [tf.constant(t, dtype) for t in tangents(case).values()]) as acc:
        forward = case.reference(given)
    return y.numpy(), gradients, tf.convert_to_tensor(acc.jvp(forward)).numpy()


def served(case: Case, dtype: str) -> tuple[Array, list[Array], Array]:
    inputs = {name: TapeInput(v.astype(dtype)) for name, v in case.floats.items()} | {
        name: TapeInput(v) for name, v in case.ints.items()
    }
    run = run_tape(
        inputs,
        case.program,
        compute=[
            ComputeRequest("gradient", "y", case.sources),
            ComputeRequest("jvp", "y", case.sources, tangents=tuple(tangents(case).values())),
        ],
        watch=case.sources,
        outputs=["y"],
        float_dtype=dtype,
    )
    gradients, jvp = run.results[0].values, run.results[1].values[0]
    assert all(g is not None for g in gradients) and jvp is not None
    assert run.warnings == () and all(not r.warnings for r in run.results)
    return run.values["y"], [g for g in gradients if g is not None], jvp


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_value_gradient_and_jvp_equal_tensorflows_in_process(case: Case, dtype: str) -> None:
    value, gradients, jvp = served(case, dtype)
    expected_value, expected_gradients, expected_jvp = in_process(case, tf.as_dtype(dtype))
    assert value.dtype == np.dtype(dtype) and jvp.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(value, expected_value)
    for gradient, expected in zip(gradients, expected_gradients, strict=True):
        assert gradient.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(gradient, expected)
    np.testing.assert_array_equal(jvp, expected_jvp)


def finite_differences(case: Case, name: str, epsilon: float = 1e-6) -> Array:
    """d Σy / d input by central differences in float64, through TensorFlow's forward pass only."""
    base = tensors(case, tf.float64)
    flat = case.floats[name].reshape(-1)
    result = np.empty(flat.size)
    for k in range(flat.size):
        sums = []
        for step in (epsilon, -epsilon):
            moved = flat.copy()
            moved[k] += step
            given = base | {name: tf.constant(moved.reshape(case.floats[name].shape), tf.float64)}
            sums.append(float(tf.reduce_sum(case.reference(given)).numpy()))
        result[k] = (sums[0] - sums[1]) / (2 * epsilon)
    return result.reshape(case.floats[name].shape)


SMOOTH = [c for c in CASES if c.smooth]


@pytest.mark.parametrize("case", SMOOTH, ids=[c.id for c in SMOOTH])
def test_gradient_matches_finite_differences(case: Case) -> None:
    _, gradients, _ = served(case, "float64")
    for name, gradient in zip(case.sources, gradients, strict=True):
        np.testing.assert_allclose(gradient, finite_differences(case, name), rtol=1e-6, atol=1e-7)


def test_every_new_op_is_covered_and_listed() -> None:
    names = {op.name for op in list_ops()}
    new = {
        "reduce_euclidean_norm",
        "xlogy",
        "xlog1py",
        "xdivy",
        "embedding_lookup",
        *(f"{prefix}segment_{kind}" for prefix in ("", "unsorted_") for kind in ("sum", "mean", "max", "min")),
        "nextafter",
        "conv1d",
        "conv2d",
        "depthwise_conv2d",
        "max_pool2d",
        "avg_pool2d",
        "softmax_cross_entropy_with_logits",
        "sparse_softmax_cross_entropy_with_logits",
        "sigmoid_cross_entropy_with_logits",
        "split",
        "tensordot",
        "add_n",
        "l2_loss",
        "floormod",
        "divide_no_nan",
        "multiply_no_nan",
    }
    assert new <= names
    covered = " ".join(c.program for c in CASES)
    assert all(f"{name}(" in covered for name in new)


def test_what_tensorflow_cannot_do_on_this_device_is_its_own_error() -> None:
    """A float64 NCHW convolution and the backward pass of a dilated one have no CPU kernel: the
    answer is TensorFlow's message as a 422, where in-process code raises it. A float32 NCHW one
    answers as in-process TensorFlow does on this CPU: it runs where oneDNN's kernels are on (the
    default on CPUs with AVX-512), and is the same 422 where they are not."""
    program = "y = tf.nn.conv2d(tf.transpose(x, [0, 3, 1, 2]), w, [1, 2], 'SAME', data_format='NCHW')"
    inputs = {"x": IMAGE, "w": FILTERS}
    compute = [ComputeRequest("gradient", "y", ("x", "w"))]

    inputs64 = {n: TapeInput(v) for n, v in inputs.items()}

    def gradient_in_float64(text: str) -> TapeRun:
        return run_tape(inputs64, text, compute=compute, watch=["x", "w"], float_dtype="float64")

    def gradient_in_float32() -> TapeRun:
        inputs32 = {n: TapeInput(v.astype(np.float32)) for n, v in inputs.items()}
        return run_tape(inputs32, program, compute=compute, watch=["x", "w"])

    tensors32 = {name: tf.constant(v, tf.float32) for name, v in inputs.items()}
    try:
        with tf.GradientTape() as tape:
            tape.watch(list(tensors32.values()))
            y = tf.nn.conv2d(
                tf.transpose(tensors32["x"], [0, 3, 1, 2]), tensors32["w"], [1, 2], "SAME", data_format="NCHW"
            )
        expected = tape.gradient(y, list(tensors32.values()))
    except tf.errors.UnimplementedError as unimplemented:
        with pytest.raises(ProgramError) as refused:
            gradient_in_float32()
        assert unimplemented.message.split("}} ")[-1].split(" [Op:")[0] in refused.value.message
    else:
        for got, want in zip(gradient_in_float32().results[0].values, expected, strict=True):
            np.testing.assert_array_equal(got, want.numpy())
    with pytest.raises(tf.errors.UnimplementedError) as raised:
        tf.nn.conv2d(
            tf.ones([1, 3, 4, 4], tf.float64), tf.ones([2, 2, 3, 1], tf.float64), 1, "SAME", data_format="NCHW"
        )
    with pytest.raises(ProgramError) as error:
        gradient_in_float64(program)
    assert raised.value.message.split("}} ")[-1].split(" [Op:")[0] in error.value.message
    assert error.value.message.startswith("line 1, column 5: conv2d(): UnimplementedError:")
    dilated = "y = tf.nn.conv2d(x, w, 1, 'SAME', dilations=[2, 1])"
    with pytest.raises(TapeSemanticsError, match="dilation rates larger than 1") as semantics:
        gradient_in_float64(dilated)
    assert semantics.value.loc == ("compute", 0)
    forward = run_tape(inputs64, dilated, compute=[], float_dtype="float64")
    reference = tf.nn.conv2d(tf.constant(IMAGE), tf.constant(FILTERS), 1, "SAME", dilations=[2, 1])
    np.testing.assert_array_equal(forward.values["y"], reference.numpy())


def test_indexed_slices_are_densified_for_every_kind() -> None:
    """By a variable, tf.gather's and embedding_lookup's gradients are IndexedSlices in TensorFlow, and
    segment_sum's forward-mode product is too: every result is their dense form."""
    table = tf.Variable(TABLE)
    ids = tf.constant([[0, 2], [3, 2]])
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape(persistent=True) as tape:
            looked = tf.nn.embedding_lookup(table, ids)
            gathered = tf.gather(table, [1, 1, 0])
            loss = tf.reduce_sum(looked**3) + tf.reduce_sum(tf.sin(gathered))
        first = tape.gradient(loss, table)
    assert isinstance(first, tf.IndexedSlices)
    hessian = outer.jacobian(first, table)
    jacobian = tape.jacobian(gathered, table)
    with tf.autodiff.ForwardAccumulator(table, tf.ones_like(table)) as accumulator:
        segments = tf.math.segment_sum(table, [0, 0, 1, 1])
    assert isinstance(accumulator.jvp(segments), tf.IndexedSlices)
    program = (
        "looked = tf.nn.embedding_lookup(table, ids)\ngathered = tf.gather(table, [1, 1, 0])\n"
        "loss = tf.reduce_sum(looked ** 3) + tf.reduce_sum(tf.sin(gathered))\n"
        "segments = tf.math.segment_sum(table, [0, 0, 1, 1])"
    )
    run = run_tape(
        {"table": TapeInput(TABLE, variable=True), "ids": TapeInput(ids.numpy())},
        program,
        compute=[
            ComputeRequest("gradient", "loss", ("table",)),
            ComputeRequest("jacobian", "gathered", ("table",)),
            ComputeRequest("hessian", "loss", ("table",)),
            ComputeRequest("jvp", "segments", ("table",), tangents=(np.ones(TABLE.shape),)),
        ],
        persistent=True,
        float_dtype="float64",
    )
    expected = [tf.convert_to_tensor(first), jacobian, hessian, tf.convert_to_tensor(accumulator.jvp(segments))]
    for result, want in zip(run.results, expected, strict=True):
        np.testing.assert_array_equal(result.values[0], want.numpy())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_jacobian_and_hessian_equal_tensorflows_in_process(case: Case) -> None:
    """jacobian of y and the Hessian of Σy² by the first float input, as nested in-process tapes give them
    (or TensorFlow's own error, where it has no second derivative)."""
    given = tensors(case, tf.float64)
    source = given[case.sources[0]]
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(source)
        with tf.GradientTape(persistent=True) as inner:
            inner.watch(source)
            y = case.reference(given)
            s = tf.reduce_sum(y * y)
        jacobian = inner.jacobian(y, source)
        first = inner.gradient(s, source)
    inputs = {name: TapeInput(v) for name, v in case.floats.items()} | {
        name: TapeInput(v) for name, v in case.ints.items()
    }
    compute = [
        ComputeRequest("jacobian", "y", case.sources[:1]),
        ComputeRequest("hessian", "s", case.sources[:1]),
    ]
    program = case.program + "\ns = tf.reduce_sum(y * y)"
    try:
        hessian = outer.jacobian(first, source)
    except (LookupError, tf.errors.OpError) as error:
        with pytest.raises(TapeSemanticsError) as refused:
            run_tape(inputs, program, compute=compute, watch=case.sources, persistent=True, float_dtype="float64")
        assert refused.value.compute_index == 1 and type(error).__name__ in refused.value.message
        return
    run = run_tape(inputs, program, compute=compute, watch=case.sources, persistent=True, float_dtype="float64")
    np.testing.assert_array_equal(run.results[0].values[0], jacobian.numpy())
    np.testing.assert_array_equal(run.results[1].values[0], hessian.numpy())
