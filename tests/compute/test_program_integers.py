"""Integer targets, sources and watches (issue 15): TensorFlow's answer (None, or what it computes) and
its warning in its own words, read back from TensorFlow's source and from its log."""

from __future__ import annotations

import ast
import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import backprop, forwardprop

from service.compute.program import ComputeRequest, TapeInput
from service.compute.program.dtype_warnings import (
    GRADIENT_SOURCE,
    GRADIENT_TARGET,
    JVP_TARGET,
    WATCHED_PRIMAL,
    WATCHED_TENSOR,
)
from service.compute.program.runner import run_tape

TARGET_INT32 = (
    "The dtype of the target tensor must be floating (e.g. tf.float32) when calling GradientTape.gradient, got tf.int32"
)
SOURCE_INT32 = (
    "The dtype of the source tensor must be floating (e.g. tf.float32) when calling GradientTape.gradient, got tf.int32"
)
WATCH_INT32 = "The dtype of the watched tensor must be floating (e.g. tf.float32), got tf.int32"
PROGRAM = "y = tf.reduce_sum(x * x)\nk = i * 2\nm = tf.stop_gradient(tf.argmax(x))\nf = x * tf.cast(i, tf.float32)"


def tensorflow_templates(module: Any) -> set[str]:
    """The 'must be floating' messages TensorFlow's module logs, as written in its source."""
    tree = ast.parse(inspect.getsource(module))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "must be floating" in node.value
    }


def test_the_wording_is_tensorflows_own() -> None:
    assert {WATCHED_TENSOR, GRADIENT_TARGET, GRADIENT_SOURCE} <= tensorflow_templates(backprop)
    assert WATCHED_PRIMAL in tensorflow_templates(forwardprop)
    assert JVP_TARGET not in tensorflow_templates(forwardprop)  # TensorFlow is silent there; ours, in its terms
    assert GRADIENT_TARGET % (tf.int32,) == TARGET_INT32


@contextmanager
def tensorflow_log() -> Iterator[list[str]]:
    """Everything TensorFlow's logger says meanwhile, its verbose (vlog 1) lines included."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = tf.get_logger()
    handler, level = Keep(level=1), logger.level
    logger.addHandler(handler)
    logger.setLevel(1)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def inputs() -> dict[str, TapeInput]:
    return {
        "x": TapeInput(np.array([1.0, 3.0, 2.0], dtype=np.float32)),
        "i": TapeInput(np.array([1, 2, 3], dtype=np.int32)),
    }


def in_process() -> tuple[Any, dict[str, Any]]:
    x, i = tf.constant([1.0, 3.0, 2.0]), tf.constant([1, 2, 3])
    tape = tf.GradientTape(persistent=True)
    with tape:
        tape.watch(x)
        values = {"x": x, "i": i, "y": tf.reduce_sum(x * x), "k": i * 2, "m": tf.stop_gradient(tf.argmax(x))}
        values["f"] = x * tf.cast(i, tf.float32)
    return tape, values


@pytest.mark.parametrize(
    ("target", "source", "warning"),
    [("k", "x", TARGET_INT32), ("m", "x", TARGET_INT32.replace("int32", "int64")), ("f", "i", SOURCE_INT32)],
)
def test_gradient_of_or_by_an_integer_is_null_with_tensorflows_log_line(target: str, source: str, warning: str) -> None:
    tape, values = in_process()
    with tensorflow_log() as lines:
        expected = tape.gradient(values[target], values[source])
    assert expected is None and warning in lines
    run = run_tape(inputs(), PROGRAM, compute=[ComputeRequest("gradient", target, (source,))], watch=["x"])
    assert run.results[0].values == [None]
    assert run.results[0].warnings == (warning,)


def test_unconnected_zero_gives_what_tensorflow_gives() -> None:
    tape, values = in_process()
    zero = tf.UnconnectedGradients.ZERO
    expected = [tape.gradient(values["k"], values["x"], unconnected_gradients=zero)]
    expected.append(tape.gradient(values["f"], values["i"], unconnected_gradients=zero))
    compute = [
        ComputeRequest("gradient", "k", ("x",), unconnected="zero"),
        ComputeRequest("gradient", "f", ("i",), unconnected="zero"),
    ]
    run = run_tape(inputs(), PROGRAM, compute=compute, watch=["x"], persistent=True)
    for result, want, warning in zip(run.results, expected, [TARGET_INT32, SOURCE_INT32], strict=True):
        got = result.values[0]
        assert got is not None and got.dtype == want.numpy().dtype  # float32 zeros by x; int32 zeros by i
        np.testing.assert_array_equal(got, want.numpy())
        assert result.warnings == (warning,)


def test_jacobians_and_hessians_of_integers_are_tensorflows() -> None:
    tape, values = in_process()
    assert tape.jacobian(values["k"], values["x"]) is None
    assert tape.jacobian(values["f"], values["i"]) is None
    batch = tape.batch_jacobian(tf.reshape(values["k"], [3, 1]), tf.reshape(values["f"], [3, 1]))
    program = PROGRAM + "\nk2 = tf.reshape(k, [3, 1])\nf2 = tf.reshape(f, [3, 1])\nfs = tf.reduce_sum(f)"
    compute = [
        ComputeRequest("jacobian", "k", ("x",)),
        ComputeRequest("jacobian", "f", ("i", "x")),
        ComputeRequest("batch_jacobian", "k2", ("f2",)),
        ComputeRequest("hessian", "fs", ("i",)),
    ]
    run = run_tape(inputs(), program, compute=compute, watch=["x"], persistent=True)
    assert run.results[0].values == [None] and run.results[0].warnings == (TARGET_INT32,)
    assert run.results[1].values[0] is None and run.results[1].warnings == (SOURCE_INT32,)
    by_x = run.results[1].values[1]
    assert by_x is not None
    np.testing.assert_allclose(by_x, np.diag([1.0, 2.0, 3.0]))
    # TensorFlow's batch_jacobian of an integer target is int32 zeros, not None: so is ours
    got = run.results[2].values[0]
    assert got is not None and got.dtype == batch.numpy().dtype
    np.testing.assert_array_equal(got, batch.numpy())
    assert run.results[2].warnings == (TARGET_INT32,)
    assert run.results[3].values == [None] and run.results[3].warnings == (SOURCE_INT32,)


def test_forward_mode_by_or_of_an_integer_is_null_with_the_accumulators_warning() -> None:
    i = tf.constant([1, 2, 3])
    with forwardprop.ForwardAccumulator(i, tf.constant([1, 1, 1])) as accumulator:
        k = i * 2
    assert accumulator.jvp(k) is None
    compute = [
        ComputeRequest("jvp", "f", ("i",), tangents=(np.ones(3),)),
        ComputeRequest("jvp", "k", ("x",), tangents=(np.ones(3),)),
        ComputeRequest("jvp", "f", ("i", "x"), tangents=(np.ones(3), np.ones(3))),
    ]
    run = run_tape(inputs(), PROGRAM, compute=compute)
    assert run.results[0].values == [None]
    assert run.results[0].warnings == (
        "The dtype of the watched primal must be floating (e.g. tf.float32), got tf.int32",
    )
    assert run.results[1].values == [None]
    assert run.results[1].warnings == (JVP_TARGET % (tf.int32,),)
    np.testing.assert_array_equal(run.results[2].values[0], [1.0, 2.0, 3.0])  # the float source's part


def test_watching_an_integer_warns_and_watches_as_tensorflow_does() -> None:
    run = run_tape(
        inputs(),
        "g.watch(i)\ng.watch([i, x])\nf = x * tf.cast(i, tf.float32)",
        compute=[ComputeRequest("gradient", "f", ("i", "x"))],
        watch=["i"],
    )
    assert run.warnings == (WATCH_INT32,)
    assert run.results[0].values[0] is None
    np.testing.assert_array_equal(run.results[0].values[1], [1.0, 2.0, 3.0])
    assert run.results[0].warnings == (SOURCE_INT32,)
    program_only = run_tape(inputs(), "b = tf.cast(i, tf.int64) > 1\ng.watch(b)", compute=[])
    assert program_only.warnings == (WATCHED_TENSOR % (tf.bool,),)
