"""The network engine's call into TensorFlow's private fast path: every piece it relies on still exists, and
its answers are `ConcreteFunction.__call__`'s bit for bit. A TensorFlow upgrade that changes either fails here."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context as tf_context
from tensorflow.python.eager import execute as tf_execute

from service.compute.networks import seed_problem
from service.compute.networks.engine import NetworkEngine
from service.compute.networks.fastpath import direct_call, fastest_call, public_call
from service.compute.networks.problem import INCLUDES, FloatDType


def test_the_private_pieces_the_fast_path_uses_exist() -> None:
    concrete = tf.function(lambda x: 2.0 * x, input_signature=(tf.TensorSpec((None,), tf.float32),))
    concrete = concrete.get_concrete_function()
    atomic = concrete._inference_function
    assert isinstance(atomic.name, bytes | str) and atomic.name
    assert len(atomic.function_type.flat_outputs) == 1
    assert list(concrete.captured_inputs) == []
    attrs = tf_context.context().function_call_options.as_attrs()
    assert isinstance(attrs, dict) and attrs
    assert callable(tf_execute.execute)
    call = direct_call(concrete, "float32")
    assert call is not None, "the fast path no longer applies with this TensorFlow"
    np.testing.assert_array_equal(call(np.array([1.5, -2.0], np.float32)), [3.0, -4.0])


def test_a_function_with_captures_takes_the_public_call() -> None:
    captured = tf.constant([1.0, 2.0])
    concrete = tf.function(lambda x: x + captured, input_signature=(tf.TensorSpec((2,), tf.float32),))
    concrete = concrete.get_concrete_function()
    assert direct_call(concrete, "float32") is None
    np.testing.assert_array_equal(fastest_call(concrete, "float32")(np.zeros(2, np.float32)), [1.0, 2.0])


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_direct_op_call_equals_the_concrete_function_call(jit_compile: bool, dtype: FloatDType) -> None:
    engine = NetworkEngine(jit_compile=jit_compile)
    problem = seed_problem(includes=INCLUDES, dtype=dtype)
    engine.run([problem])
    compiled = engine._compiled(problem.spec)
    direct = direct_call(compiled.concrete, dtype)
    assert direct is not None  # the fast path is in use with this TensorFlow
    plain = public_call(compiled.concrete, dtype)
    packed = np.random.default_rng(3).normal(size=(2, compiled.layout.input_size)).astype(dtype)
    fast, slow = direct(packed), plain(packed)
    assert fast.dtype == slow.dtype == np.dtype(dtype)
    assert fast.tobytes() == slow.tobytes()
    np.testing.assert_array_equal(compiled._call(packed), slow)
    assert engine.stats()["traces"] == 1
