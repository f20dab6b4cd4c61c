"""The calls into TensorFlow's private fast path (the network engine's and the served models' bucketed
functions'): every piece they rely on still exists, and their answers are `ConcreteFunction.__call__`'s bit
for bit. A TensorFlow upgrade that changes either fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.eager import context as tf_context
from tensorflow.python.eager import execute as tf_execute

from service.compute.fastpath import direct_call, fastest_call, public_call, structured_call
from service.compute.models.compiled import _Bucketed
from service.compute.models.loading import load_version
from service.compute.networks import seed_problem
from service.compute.networks.engine import NetworkEngine
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


def _same(fast: Any, slow: Any) -> None:
    """Two nested outputs of one structure, their tensors equal bit for bit."""
    tf.nest.assert_same_structure(fast, slow)
    for a, b in zip(tf.nest.flatten(fast), tf.nest.flatten(slow), strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.numpy().tobytes() == b.numpy().tobytes()


def test_the_structured_call_equals_the_concrete_function_call() -> None:
    """Dict keys given out of order, two inputs of one shape (a swap would show), a captured variable that
    changes between calls, a None output and a scalar one."""
    variable = tf.Variable([1.0, 2.0, 3.0])

    def graph(inputs: dict[str, Any], extras: dict[str, Any]) -> Any:
        rows = {"z": inputs["zeta"] - 2.0 * inputs["alpha"] + variable, "none": None, "e": extras["k"] * 3.0}
        return rows, {"sum": tf.reduce_sum(inputs["zeta"])}

    vector = tf.TensorSpec((3,), tf.float32)
    concrete = tf.function(graph).get_concrete_function({"zeta": vector, "alpha": vector}, {"k": vector})
    call = structured_call(concrete)
    assert call is not None, "the fast path no longer applies with this TensorFlow"
    inputs = {"zeta": tf.constant([10.0, 20.0, 30.0]), "alpha": tf.constant([1.0, -1.0, 0.5])}
    extras = {"k": tf.constant([1.0, 2.0, 3.0])}
    _same(call(inputs, extras), concrete(inputs, extras))
    np.testing.assert_array_equal(call(inputs, extras)[0]["z"], [9.0, 24.0, 32.0])
    variable.assign([0.0, 0.0, -1.0])  # the captures are read at each call
    _same(call(inputs, extras), concrete(inputs, extras))
    with pytest.raises(ValueError, match="takes 4 tensors"):
        call(inputs)


def test_a_function_answering_a_resource_takes_the_public_call() -> None:
    variable = tf.Variable(1.0)
    assert structured_call(tf.function(lambda: variable.handle).get_concrete_function()) is None


def test_a_served_models_bucketed_function_runs_its_op_after_its_first_call(tmp_path: Path) -> None:
    """A saved functional model of two inputs of one shape: after the first call a bucket runs the op
    itself, and predicts what the model called in process does."""
    left, right = keras.Input((3,), name="left"), keras.Input((3,), name="right")
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([left, right]))
    model = keras.Model({"left": left, "right": right}, keras.layers.Dense(2, activation="softmax")(hidden))
    (tmp_path / "1").mkdir()
    model.save(tmp_path / "1" / "model.keras")
    served = load_version(tmp_path / "1", xla=False)
    signature = next(iter(served.calls))
    rng = np.random.default_rng(5)
    inputs = {"left": rng.normal(size=(5, 3)).astype(np.float32), "right": rng.normal(size=(5, 3)).astype(np.float32)}
    first, second = served.predict(signature, inputs), served.predict(signature, inputs)
    buckets = [served.functions.get(key, lambda: None) for key in served.functions.compiled()]
    called = [bucket for bucket in buckets if isinstance(bucket, _Bucketed) and bucket.verified]
    assert called and all(bucket.call is not bucket.concrete for bucket in called)
    expected = model(inputs, training=False).numpy()
    for answer in (first, second):
        (output,) = answer.values()
        np.testing.assert_allclose(output, expected, rtol=1e-6, atol=1e-7)
    assert {name: value.tobytes() for name, value in first.items()} == {
        name: value.tobytes() for name, value in second.items()
    }
