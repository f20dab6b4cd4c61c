"""The tape-program interpreter: every result against GradientTape code written here, or numpy closed forms."""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf

from service.adapters.errors import located
from service.compute.errors import (
    InvalidInput,
    LimitExceeded,
    NonPersistentTapeError,
    ProgramError,
    ProgramLimitExceeded,
    TapeSemanticsError,
)
from service.compute.program import ComputeRequest, TapeInput, TapeRun
from service.compute.program.ops import list_ops
from service.compute.program.parse import parse_program
from service.compute.program.runner import run_tape

Array = npt.NDArray[Any]

SEED_W = 0.01 * np.array([[1.0, -2.0, 3.0, -4.0], [-1.0, 2.0, -3.0, 4.0]], dtype=np.float32)

# The seed's GradientTape cell: the tape body as written (OCR'd names fixed), with the x and y lines
# before it; the tape itself, W's random start and the g.gradient lines are the request's business.
SEED_CELL = """x = tf.constant([76., 120., 37.5], dtype = float)
y = tf.constant([0, 1])
xB = tf.concat([x, 1.0*tf.ones(1)], axis = 0)
z = tf.linalg.matvec(W, xB)
a = tf.nn.softmax(z)
yhat = a
L = tf.reduce_sum(-tf.one_hot(indices=y, depth=2))*tf.math.log(yhat)
L.numpy()
print('Loss = ', L.numpy())
"""

SEED_COMPUTE = [
    ComputeRequest("gradient", "L", ("yhat",)),
    ComputeRequest("gradient", "a", ("z",)),
    ComputeRequest("gradient", "z", ("W",)),
    ComputeRequest("gradient", "L", ("W",)),
]

# The seed's activation cell, tape body only (the stray g.gradient(L, W) line refers to another cell).
ACTIVATION_CELL = """z = tf.linspace(-10, 10, 129) # A tf.Tensor, not a tf.Variable
g.watch(z)
a_sigmoid = tf.math.sigmoid(z)
a_tanh = tf.math.tanh(z)
# a ReLU = z * tf.cast((z > 0), tf.float64)
a_ReLU = tf.maximum(0.0, z)
a_LReLU = tf.maximum(0.01*z, z)
a_ReLU_cast = z * tf.cast((z > 0), tf.float64)
a_LReLU_cast = z * tf.cast((z > 0.0), tf.float64) + 0.01 * z * tf.cast((z <= 0.0), tf.float64)
"""


def seed_reference(weights: Array, dtype: Any = tf.float32) -> dict[str, Any]:
    """The seed cell run with a real persistent GradientTape."""
    x = tf.constant([76.0, 120.0, 37.5], dtype=dtype)
    y = tf.constant([0, 1])
    x_b = tf.concat([x, 1.0 * tf.ones(1, dtype=dtype)], axis=0)
    w = tf.Variable(weights)
    with tf.GradientTape(persistent=True) as g:
        z = tf.linalg.matvec(w, x_b)
        a = tf.nn.softmax(z)
        yhat = a
        loss = tf.reduce_sum(-tf.one_hot(indices=y, depth=2, dtype=dtype)) * tf.math.log(yhat)
    return {
        "L": loss.numpy(),
        "z": z.numpy(),
        "L<-yhat": g.gradient(loss, yhat).numpy(),
        "a<-z": g.gradient(a, z).numpy(),
        "z<-W": g.gradient(z, w).numpy(),
        "L<-W": g.gradient(loss, w).numpy(),
        "jacobian a<-z": g.jacobian(a, z).numpy(),
    }


def only(run: TapeRun, index: int) -> Array:
    value = run.results[index].values[0]
    assert value is not None
    return value


# --- the seed ------------------------------------------------------------------------------------


def test_seed_cell_verbatim_matches_in_process_tape() -> None:
    run = run_tape(
        {"W": TapeInput(SEED_W, variable=True)},
        SEED_CELL,
        compute=[*SEED_COMPUTE, ComputeRequest("jacobian", "a", ("z",))],
        persistent=True,
    )
    expected = seed_reference(SEED_W)
    assert list(run.values) == ["x", "y", "xB", "z", "a", "yhat", "L"]
    np.testing.assert_allclose(run.values["L"], expected["L"], rtol=1e-6)
    np.testing.assert_allclose(run.values["z"], expected["z"], rtol=1e-6)
    assert run.values["y"].dtype == np.int32  # an integer literal list is int32, as in TensorFlow
    for index, key in enumerate(["L<-yhat", "a<-z", "z<-W", "L<-W", "jacobian a<-z"]):
        np.testing.assert_allclose(only(run, index), expected[key], rtol=1e-6, atol=1e-7)
        assert only(run, index).dtype == np.float32
    # the seed's puzzle: the gradient of a softmax's sum is zero, up to how far float32's Σa misses 1 on
    # this CPU's kernels (exactly 0 on some, ~1e-8 on others): bit for bit what TensorFlow's tape gives
    np.testing.assert_array_equal(only(run, 1), expected["a<-z"])
    np.testing.assert_allclose(only(run, 1), [0.0, 0.0], rtol=0, atol=1e-7)
    # and its explanation: z <- W on the tape is the gradient of sum(z), x_B in every row
    np.testing.assert_allclose(only(run, 2), [[76.0, 120.0, 37.5, 1.0]] * 2)


def test_seed_with_x_and_y_as_inputs() -> None:
    program = "\n".join(SEED_CELL.splitlines()[2:])
    run = run_tape(
        {
            "x": TapeInput(np.array([76.0, 120.0, 37.5], dtype=np.float32)),
            "y": TapeInput(np.array([0, 1], dtype=np.int32)),
            "W": TapeInput(SEED_W, variable=True),
        },
        program,
        compute=SEED_COMPUTE,
        persistent=True,
        outputs=["L", "z"],
    )
    expected = seed_reference(SEED_W)
    assert list(run.values) == ["L", "z"]
    np.testing.assert_allclose(only(run, 3), expected["L<-W"], rtol=1e-6)


def test_seed_non_persistent_tape_fails_at_the_second_entry_with_tensorflows_message() -> None:
    tape_message = ""
    x = tf.constant([1.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = x * x
    tape.gradient(y, x)
    with pytest.raises(RuntimeError) as raised:
        tape.gradient(y, x)
    tape_message = str(raised.value)

    with pytest.raises(NonPersistentTapeError) as error, located():
        run_tape({"W": TapeInput(SEED_W, variable=True)}, SEED_CELL, compute=SEED_COMPUTE, persistent=False)
    assert error.value.compute_index == 1
    assert error.value.message == tape_message
    assert "can only be used to compute one set of gradients" in error.value.message
    assert error.value.loc == ("body", "compute", 1)


def test_non_persistent_tape_answers_one_entry_and_hessian_jvp_do_not_consume_it() -> None:
    run = run_tape(
        {"W": TapeInput(SEED_W, variable=True)},
        SEED_CELL + "S = tf.reduce_sum(z * z)\n",
        compute=[
            ComputeRequest("hessian", "S", ("W",)),
            ComputeRequest("jvp", "S", ("W",), tangents=(np.ones((2, 4), dtype=np.float32),)),
            ComputeRequest("gradient", "L", ("W",)),
        ],
    )
    np.testing.assert_allclose(only(run, 2), seed_reference(SEED_W)["L<-W"], rtol=1e-6)
    with pytest.raises(NonPersistentTapeError) as error:
        run_tape(
            {"W": TapeInput(SEED_W, variable=True)},
            SEED_CELL,
            compute=[ComputeRequest("jacobian", "a", ("z",)), ComputeRequest("batch_jacobian", "a", ("z",))],
        )
    assert error.value.compute_index == 1


def test_seed_in_float64() -> None:
    weights = SEED_W.astype(np.float64)
    run = run_tape(
        {"W": TapeInput(weights, variable=True)},
        SEED_CELL,
        compute=SEED_COMPUTE,
        persistent=True,
        float_dtype="float64",
    )
    expected = seed_reference(weights, tf.float64)
    assert all(value.dtype == np.float64 for name, value in run.values.items() if name != "y")
    for index, key in enumerate(["L<-yhat", "a<-z", "z<-W", "L<-W"]):
        np.testing.assert_allclose(only(run, index), expected[key], rtol=1e-12)


def test_seed_end_to_end_time() -> None:
    inputs = {"W": TapeInput(SEED_W, variable=True)}
    run_tape(inputs, SEED_CELL, compute=SEED_COMPUTE, persistent=True)  # TensorFlow's first-call warm-up
    started = time.perf_counter()
    for _ in range(10):
        run_tape(inputs, parse_program(SEED_CELL), compute=SEED_COMPUTE, persistent=True)
    assert (time.perf_counter() - started) / 10 < 0.5


def test_activation_cell_matches_in_process_gradients() -> None:
    names = ["a_sigmoid", "a_tanh", "a_ReLU", "a_LReLU", "a_ReLU_cast", "a_LReLU_cast"]
    run = run_tape({}, ACTIVATION_CELL, compute=[ComputeRequest("gradient", n, ("z",)) for n in names], persistent=True)
    z = tf.linspace(-10, 10, 129)
    with tf.GradientTape(persistent=True) as g:
        g.watch(z)
        reference = {
            "a_sigmoid": tf.math.sigmoid(z),
            "a_tanh": tf.math.tanh(z),
            "a_ReLU": tf.maximum(0.0, z),
            "a_LReLU": tf.maximum(0.01 * z, z),
            "a_ReLU_cast": z * tf.cast((z > 0), tf.float64),
            "a_LReLU_cast": z * tf.cast((z > 0.0), tf.float64) + 0.01 * z * tf.cast((z <= 0.0), tf.float64),
        }
    assert run.values["z"].dtype == np.float64  # tf.linspace of integers is float64
    for index, name in enumerate(names):
        np.testing.assert_allclose(run.values[name], reference[name].numpy(), rtol=1e-15)
        np.testing.assert_allclose(only(run, index), g.gradient(reference[name], z).numpy(), rtol=1e-15)
    # the seed's question: sigmoid never amplifies, its local gradient peaks at 1/4
    assert only(run, 0).max() == pytest.approx(0.25)


# --- compute kinds -------------------------------------------------------------------------------


def test_hessian_matches_nested_tapes() -> None:
    rng = np.random.default_rng(1)
    x0, w0 = rng.normal(size=3), rng.normal(size=(2, 3))
    program = "f = tf.reduce_sum(tf.sin(x) * x ** 2) + tf.reduce_sum(tf.linalg.matvec(W, x) ** 3)"
    run = run_tape(
        {"x": TapeInput(x0), "W": TapeInput(w0, variable=True)},
        program,
        compute=[ComputeRequest("hessian", "f", ("x", "W"))],
        watch=["x"],
    )
    x, w = tf.constant(x0), tf.Variable(w0)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(x)
        with tf.GradientTape() as inner:
            inner.watch(x)
            f = tf.reduce_sum(tf.sin(x) * x**2) + tf.reduce_sum(tf.linalg.matvec(w, x) ** 3)
        gx, gw = inner.gradient(f, [x, w])
    hxx, hww = run.results[0].values
    assert hxx is not None and hww is not None
    assert hxx.shape == (3, 3) and hww.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(hxx, outer.jacobian(gx, x).numpy(), rtol=1e-12)
    np.testing.assert_allclose(hww, outer.jacobian(gw, w).numpy(), rtol=1e-12)
    # the x-block by numpy: d²/dx² of Σ sin(x)x² is diagonal, of Σ (Wx)³ is Σ_k 6 (Wx)_k w_k w_kᵀ
    closed = np.diag((2 - x0**2) * np.sin(x0) + 4 * x0 * np.cos(x0))
    closed += sum(6 * (w0 @ x0)[k] * np.outer(w0[k], w0[k]) for k in range(2))
    np.testing.assert_allclose(hxx, closed, rtol=1e-12)


def test_hessian_of_unwatched_source_is_none_or_zero() -> None:
    program = "f = tf.reduce_sum(x ** 3)"
    inputs = {"x": TapeInput(np.array([1.0, 2.0]))}
    none = run_tape(inputs, program, compute=[ComputeRequest("hessian", "f", ("x",))])
    zero = run_tape(inputs, program, compute=[ComputeRequest("hessian", "f", ("x",), unconnected="zero")])
    assert none.results[0].values == [None]
    np.testing.assert_array_equal(only(zero, 0), np.zeros((2, 2)))


def test_jvp_equals_jacobian_times_tangent() -> None:
    rng = np.random.default_rng(2)
    x0, w0 = rng.normal(size=3), rng.normal(size=(2, 3))
    tx, tw = rng.normal(size=3), rng.normal(size=(2, 3))
    run = run_tape(
        {"x": TapeInput(x0), "W": TapeInput(w0, variable=True)},
        "h = tf.linalg.matvec(W, x)\ny = tf.tanh(h)",
        compute=[
            ComputeRequest("jvp", "y", ("W", "x"), tangents=(tw, tx)),
            ComputeRequest("jvp", "y", ("h",), tangents=(np.array([1.0, -2.0]),)),
        ],
    )
    x, w = tf.constant(x0), tf.Variable(w0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = tf.tanh(tf.linalg.matvec(w, x))
    jw, jx = tape.jacobian(y, w).numpy(), tape.jacobian(y, x).numpy()
    expected = np.tensordot(jw, tw, axes=2) + jx @ tx
    np.testing.assert_allclose(only(run, 0), expected, rtol=1e-12)
    # a source the program computes: dy = (1 - y²) dh
    np.testing.assert_allclose(only(run, 1), (1 - np.tanh(w0 @ x0) ** 2) * np.array([1.0, -2.0]), rtol=1e-12)


def test_batch_jacobian_closed_form() -> None:
    rng = np.random.default_rng(3)
    x0, m0 = rng.normal(size=(4, 3)), rng.normal(size=(3, 2))
    run = run_tape(
        {"X": TapeInput(x0), "M": TapeInput(m0)},
        "Y = tf.tanh(X @ M)",
        compute=[ComputeRequest("batch_jacobian", "Y", ("X",))],
        watch=["X"],
    )
    y = np.tanh(x0 @ m0)
    expected = (1 - y**2)[:, :, None] * m0.T[None, :, :]  # J[b, i, j] = (1 - Y[b,i]²) M[j, i]
    np.testing.assert_allclose(only(run, 0), expected, rtol=1e-12)


def test_jacobian_of_softmax_closed_form() -> None:
    run = run_tape(
        {"W": TapeInput(SEED_W, variable=True)}, SEED_CELL, compute=[ComputeRequest("jacobian", "a", ("z",))]
    )
    a = run.values["a"].astype(np.float64)
    np.testing.assert_allclose(only(run, 0), np.diag(a) - np.outer(a, a), atol=1e-7)


def test_unwatched_constant_none_and_zero() -> None:
    inputs = {"c": TapeInput(np.array([1.0, 2.0], dtype=np.float32))}
    program = "d = c * c"
    run = run_tape(
        inputs,
        program,
        compute=[ComputeRequest("gradient", "d", ("c",)), ComputeRequest("jacobian", "d", ("c",), unconnected="zero")],
        persistent=True,
    )
    assert run.results[0].values == [None]
    np.testing.assert_array_equal(only(run, 1), np.zeros((2, 2), dtype=np.float32))
    watched = run_tape(inputs, program, compute=[ComputeRequest("gradient", "d", ("c",))], watch=["c"])
    np.testing.assert_allclose(only(watched, 0), [2.0, 4.0])


def test_non_trainable_variable_and_watch_accessed_variables() -> None:
    inputs = {
        "v": TapeInput(np.array([3.0]), variable=True, trainable=False),
        "w": TapeInput(np.array([5.0]), variable=True),
    }
    program = "p = v * w"
    compute = [ComputeRequest("gradient", "p", ("v", "w"))]
    assert [
        None if g is None else g.tolist() for g in run_tape(inputs, program, compute=compute).results[0].values
    ] == [
        None,
        [3.0],
    ]
    run = run_tape(inputs, program, compute=compute, watch_accessed_variables=False)
    assert run.results[0].values == [None, None]
    run = run_tape(inputs, program, compute=compute, watch_accessed_variables=False, watch=["v"])
    assert run.results[0].values[1] is None
    np.testing.assert_allclose(only(run, 0), [5.0])


def test_output_gradients_weight_the_vector_jacobian_product() -> None:
    x0, weights = np.array([1.0, -2.0, 3.0]), np.array([0.5, 2.0, -1.0])
    run = run_tape(
        {"x": TapeInput(x0)},
        "y = x * x",
        compute=[ComputeRequest("gradient", "y", ("x",), output_gradients=weights)],
        watch=["x"],
    )
    np.testing.assert_allclose(only(run, 0), 2 * x0 * weights)


def test_numpy_detaches_like_tensorflow() -> None:
    x0 = np.array([2.0, 3.0])
    run = run_tape(
        {"x": TapeInput(x0)}, "b = x.numpy() * x", compute=[ComputeRequest("gradient", "b", ("x",))], watch=["x"]
    )
    x = tf.constant(x0)
    with tf.GradientTape() as tape:
        tape.watch(x)
        b = x.numpy() * x
    np.testing.assert_allclose(only(run, 0), tape.gradient(b, x).numpy())


# --- the language --------------------------------------------------------------------------------


def test_subscripts_unpacking_and_augmented_assignment() -> None:
    m0 = np.arange(12.0).reshape(3, 4)
    program = """r = M[0, 1:3]
c = M[:, -1]
n = M[-1]
e = M[1:, None, ::2]
p, q = tf.unstack(M[:2, 0])
u, v = [M[0, 0], 2.5]
s = M[2, 3]
s += 1.0
s *= 2.0
t = M @ tf.transpose(M)
k = tf.range(5)[1:-1]
"""
    run = run_tape({"M": TapeInput(m0)}, program, compute=[])
    np.testing.assert_array_equal(run.values["r"], m0[0, 1:3])
    np.testing.assert_array_equal(run.values["c"], m0[:, -1])
    np.testing.assert_array_equal(run.values["n"], m0[-1])
    np.testing.assert_array_equal(run.values["e"], m0[1:, None, ::2])
    assert [run.values["p"].item(), run.values["q"].item()] == [0.0, 4.0]
    assert [run.values["u"].item(), run.values["v"].item()] == [0.0, 2.5]
    assert run.values["s"] == (11.0 + 1.0) * 2.0
    np.testing.assert_array_equal(run.values["t"], m0 @ m0.T)
    np.testing.assert_array_equal(run.values["k"], [1, 2, 3])


def test_functions_by_plain_name_and_keyword() -> None:
    x0 = np.array([[0.5, -1.0, 2.0]])
    program = """s = softmax(x)
l = log_softmax(logits=x, axis=-1)
r = leaky_relu(x)
w = swish(x)
o = one_hot(tf.constant([0, 2]), 3)
g = gather(x, [2, 0], axis=1)
m = tf.reduce_max(x, axis=1, keepdims=True)
c = tf.clip_by_value(x, -0.5, 1.0)
h = tf.where(x > 0, x, tf.zeros_like(x))
f = tf.fill([2], 7.0)
"""
    run = run_tape({"x": TapeInput(x0)}, program, compute=[])
    e = np.exp(x0 - x0.max())
    np.testing.assert_allclose(run.values["s"], e / e.sum())
    np.testing.assert_allclose(run.values["l"], np.log(e / e.sum()))
    np.testing.assert_allclose(run.values["r"], np.where(x0 > 0, x0, 0.2 * x0))  # TensorFlow's alpha 0.2
    np.testing.assert_allclose(run.values["w"], x0 / (1 + np.exp(-x0)))
    np.testing.assert_array_equal(run.values["o"], [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_array_equal(run.values["g"], x0[:, [2, 0]])
    np.testing.assert_array_equal(run.values["m"], [[2.0]])
    np.testing.assert_array_equal(run.values["c"], np.clip(x0, -0.5, 1.0))
    np.testing.assert_array_equal(run.values["h"], np.maximum(x0, 0))
    np.testing.assert_array_equal(run.values["f"], [7.0, 7.0])
    assert run.values["f"].dtype == np.float32


def test_print_is_a_no_op_that_evaluates_nothing() -> None:
    run = run_tape({}, "print('big', tf.ones([100000, 100000]))\na = 1.5", compute=[])
    assert run.values == {"a": np.asarray(1.5, dtype=np.float32)}


def test_python_numbers_become_tensors_as_tensorflow_converts_them() -> None:
    run = run_tape({}, "a = 2 * 3\nb = a * tf.ones(2)\nc = 0.5 + tf.constant([1, 2], tf.float64)", compute=[])
    assert run.values["a"] == 6 and run.values["a"].dtype == np.int32
    np.testing.assert_array_equal(run.values["b"], [6.0, 6.0])
    assert run.values["c"].dtype == np.float64


def test_outputs_skip_bools_by_default_and_reject_them_when_asked() -> None:
    program = "mask = x > 0\nn = tf.cast(mask, tf.float32)"
    inputs = {"x": TapeInput(np.array([-1.0, 1.0], dtype=np.float32))}
    assert list(run_tape(inputs, program, compute=[]).values) == ["n"]
    with pytest.raises(InvalidInput) as error, located():
        run_tape(inputs, program, compute=[], outputs=["n", "mask"])
    assert error.value.loc == ("body", "outputs", 1)
    with pytest.raises(InvalidInput) as error, located():
        run_tape(inputs, program, compute=[], outputs=["nothing"])
    assert error.value.loc == ("body", "outputs", 0)
    assert run_tape(inputs, program, compute=[], outputs=["x"]).values["x"].tolist() == [-1.0, 1.0]


def test_list_ops_names_resolve_to_tensorflow_and_signatures_match() -> None:
    required = [
        # linear algebra and shapes
        *("matvec", "matmul", "concat", "stack", "reshape", "transpose", "expand_dims", "squeeze", "tile", "gather"),
        # reductions and element-wise maths
        *("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "exp", "log", "sqrt", "square", "abs", "sin", "cos"),
        # activations
        *("sigmoid", "tanh", "relu", "leaky_relu", "elu", "selu", "gelu", "softplus", "silu", "softmax", "log_softmax"),
        # creating tensors and types
        *("one_hot", "ones", "zeros", "ones_like", "zeros_like", "fill", "linspace", "range", "cast"),
        # binary, selection and the tape
        *("maximum", "minimum", "where", "clip_by_value", "identity", "stop_gradient", "constant"),
    ]
    ops = {op.name: op for op in list_ops()}
    assert set(required) <= set(ops)
    assert "swish" in ops["silu"].summary
    for op in ops.values():
        functions = []
        for tf_name in op.tf_names:
            resolved: Any = tf
            for part in tf_name.split(".")[1:]:
                resolved = getattr(resolved, part)
            functions.append(resolved)
        assert all(f is functions[0] for f in functions), op.name
        tensorflow_params = inspect.signature(functions[0]).parameters
        ours = op.signature[len(op.name) + 1 : -1].replace("*, ", "").split(", ")
        for param in ours:
            name = param.split("=")[0]
            assert name in tensorflow_params, (op.name, name)
            if "=" in param:
                assert repr(tensorflow_params[name].default).replace("tf.", "") == param.split("=", 1)[1].replace(
                    "tf.", ""
                ), (op.name, name)
    assert "alpha=0.2" in ops["leaky_relu"].signature


# --- errors --------------------------------------------------------------------------------------


def test_tensorflow_error_names_line_and_character_column() -> None:
    inputs = {"x": TapeInput(np.array([1.0, 2.0], dtype=np.float32))}
    with pytest.raises(ProgramError) as error, located():
        run_tape(inputs, "a = x * 2.0\nb = tf.matmul(x, x)", compute=[])
    assert (error.value.line, error.value.column) == (2, 5)
    assert error.value.loc == ("body", "program", "line 2", "col 5")
    with pytest.raises(ProgramError) as error:
        run_tape(inputs, "é = x; c = tf.concat([é, tf.ones([2, 2])], 0)", compute=[])
    assert (error.value.line, error.value.column) == (1, 12)
    assert "function_node" not in error.value.message and "\n" not in error.value.message
    with pytest.raises(ProgramError) as error:
        run_tape(inputs, "a = x\nb = q + 1.0", compute=[])
    assert (error.value.line, error.value.column) == (2, 5)
    assert "'q' is not defined" in error.value.message


def test_syntax_error_has_a_line() -> None:
    with pytest.raises(ProgramError) as error:
        parse_program("a = 1\nb = (2 +\n")
    assert error.value.line == 2


def test_intermediate_over_the_limit_names_its_line() -> None:
    with pytest.raises(ProgramLimitExceeded) as error:
        run_tape({}, "a = tf.ones([10])\nb = tf.ones([10, 11])", compute=[], max_elements=100)
    assert isinstance(error.value, LimitExceeded)
    assert (error.value.line, error.value.column) == (2, 5)
    assert "110" in error.value.message


def test_input_watch_and_compute_validation() -> None:
    x = TapeInput(np.array([1.0]))
    for bad in ["__class__", "tf", "for", "1x", "float"]:
        with pytest.raises(InvalidInput) as error, located():
            run_tape({bad: x}, "a = 1.0", compute=[])
        assert error.value.loc == ("body", "inputs", bad)
    with pytest.raises(InvalidInput) as error, located():
        run_tape({"x": x}, "a = x", compute=[], watch=["x", "a"])
    assert error.value.loc == ("body", "watch", 1)
    # watching an integer input is TensorFlow's warning, not an error (issue 15)
    watched = run_tape({"i": TapeInput(np.array([1], dtype=np.int32))}, "a = i", compute=[], watch=["i"])
    assert watched.warnings == ("The dtype of the watched tensor must be floating (e.g. tf.float32), got tf.int32",)
    with pytest.raises(InvalidInput) as error, located():
        run_tape({"x": x}, "a = x", compute=[], float_dtype="float16")
    assert error.value.loc == ("body", "dtype")


@pytest.mark.parametrize(
    ("compute", "index", "words"),
    [
        ([ComputeRequest("gradient", "nope", ("x",))], 0, "unknown target"),
        ([ComputeRequest("gradient", "y", ("x",)), ComputeRequest("gradient", "y", ("zz",))], 1, "unknown source"),
        ([ComputeRequest("gradient", "n", ("x",))], 0, "not a tensor"),
        ([ComputeRequest("hessian", "y", ("x",))], 0, "scalar target"),
        ([ComputeRequest("batch_jacobian", "y", ("x", "x"))], 0, "exactly one source"),
        ([ComputeRequest("jvp", "y", ("x",), tangents=(np.ones(3),))], 0, "shape"),
        ([ComputeRequest("jvp", "y", ("x",))], 0, "one tangent per source"),
        ([ComputeRequest("gradient", "y", ("x",), output_gradients=np.ones(3))], 0, "output_gradients"),
        ([ComputeRequest("jacobian", "y", ("x",), output_gradients=np.ones(2))], 0, "gradient only"),
    ],
)
def test_compute_entries_that_cannot_run(compute: list[ComputeRequest], index: int, words: str) -> None:
    inputs = {"x": TapeInput(np.array([1.0, 2.0])), "i": TapeInput(np.array([1, 2], dtype=np.int32))}
    with pytest.raises(TapeSemanticsError) as error:
        run_tape(inputs, "y = x * x\nk = i * 2\nn = 2.0", compute=compute, watch=["x"], persistent=True)
    assert error.value.compute_index == index
    assert words in error.value.message


def test_jacobian_larger_than_the_limit_is_refused_before_computing() -> None:
    with pytest.raises(LimitExceeded) as error, located():
        run_tape(
            {"x": TapeInput(np.ones(2000))},
            "y = x * 2.0",
            compute=[ComputeRequest("jacobian", "y", ("x",))],
            watch=["x"],
            max_elements=1_000_000,
        )
    assert error.value.loc == ("body", "compute", 0)
    assert "4,000,000" in error.value.message


def test_hessian_by_a_tensor_the_program_computes() -> None:
    run = run_tape(
        {"W": TapeInput(SEED_W.astype(np.float64), variable=True)},
        SEED_CELL + "S = tf.reduce_sum(L)\n",
        compute=[ComputeRequest("hessian", "S", ("z",))],
        float_dtype="float64",
    )
    # the seed's bracket sums the whole one-hot matrix of y = [0, 1] first: L = -2 log a, so
    # S = -2 Σₖ log aₖ, ∇S = 2 (2a - 1) and ∇²S = 4 (diag(a) - a aᵀ)
    a = run.values["a"]
    np.testing.assert_allclose(only(run, 0), 4 * (np.diag(a) - np.outer(a, a)), rtol=1e-12)
