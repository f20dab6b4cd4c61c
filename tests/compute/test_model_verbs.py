"""`:gradients` and `:jacobian` of served models against tf.GradientTape in process on the same model and batch."""

from __future__ import annotations

import pathlib
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from service.compute.errors import InvalidInput, LimitExceeded
from service.compute.models.loading import ServedModel, load_version
from service.compute.models.verbs import GradientRequest, gradients, jacobian

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def two_headed(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, ServedModel]:
    """A functional model: inputs a (2,), b (3,); outputs risk (1,) sigmoid and scores (2,) softmax."""
    keras.utils.set_random_seed(3)
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(keras.layers.Concatenate()([a, b]))
    risk = keras.layers.Dense(1, activation="sigmoid", name="risk")(hidden)
    scores = keras.layers.Dense(2, activation="softmax", name="scores")(hidden)
    model = keras.Model([a, b], [risk, scores])
    folder = tmp_path_factory.mktemp("repo") / "two" / "1"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    return model, load_version(folder)


def _close(found: np.ndarray | None, wanted: Any, rtol: float, atol: float = 0.0) -> None:
    assert found is not None
    np.testing.assert_allclose(found, wanted, rtol=rtol, atol=atol)


def _batch() -> dict[str, np.ndarray]:
    return {"a": RNG.normal(size=(5, 2)).astype(np.float32), "b": RNG.normal(size=(5, 3)).astype(np.float32)}


def _tape(model: keras.Model, batch: dict[str, np.ndarray], target: Any, sources: str = "inputs") -> list[Any]:
    a, b = tf.constant(batch["a"]), tf.constant(batch["b"])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([a, b])
        risk, scores = model([a, b], training=False)
        value = target(risk, scores)
    watched = [a, b] if sources == "inputs" else [variable.value for variable in model.trainable_variables]
    return [None if grad is None else grad.numpy() for grad in tape.gradient(value, watched)]


def test_gradients_of_an_output_w_r_t_both_inputs(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    batch = _batch()
    result = gradients(served, "serving_default", batch, GradientRequest(output="scores", sources=("a", "b")))
    expected = _tape(model, batch, lambda risk, scores: scores)
    _close(result.input_gradients["a"], expected[0], rtol=1e-5, atol=1e-7)
    _close(result.input_gradients["b"], expected[1], rtol=1e-5, atol=1e-7)
    _close(result.outputs["risk"], model([batch["a"], batch["b"]])[0].numpy(), rtol=1e-6)


def test_a_class_index_per_instance(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    batch = _batch()
    classes = np.array([0, 1, 1, 0, 1], dtype=np.int32)
    request = GradientRequest(output="scores", sources=("b",), kind="class_index")
    result = gradients(served, "serving_default", batch, request, classes)
    picked = _tape(model, batch, lambda risk, scores: tf.gather(scores, classes, axis=1, batch_dims=1))
    _close(result.input_gradients["b"], picked[1], rtol=1e-5, atol=1e-7)


def test_output_gradients_are_a_vector_jacobian_product(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    batch = _batch()
    cotangent = RNG.normal(size=(5, 2)).astype(np.float32)
    request = GradientRequest(output="scores", sources=("a",), kind="output_gradients")
    result = gradients(served, "serving_default", batch, request, cotangent)
    expected = _tape(model, batch, lambda risk, scores: tf.reduce_sum(scores * cotangent))
    _close(result.input_gradients["a"], expected[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_a_cross_entropy_loss_w_r_t_the_variables(two_headed: tuple[keras.Model, ServedModel], reduction: str) -> None:
    model, served = two_headed
    batch = _batch()
    targets = np.eye(2, dtype=np.float32)[[1, 0, 1, 1, 0]]
    request = GradientRequest(output="scores", sources=(), kind="loss", reduction=reduction, variables=True)  # type: ignore[arg-type]
    result = gradients(served, "serving_default", batch, request, targets)

    def loss(risk: Any, scores: Any) -> Any:
        per_instance = -tf.reduce_sum(targets * tf.math.log(scores), axis=1)
        return {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "none": tf.identity}[reduction](per_instance)

    expected = _tape(model, batch, loss, sources="variables")
    names = [name for name, _ in result.variable_gradients]
    assert names == [variable.path for variable in model.trainable_variables]
    # the risk head does not feed the scores: its variables are unconnected (null), as the tape says
    assert [found is None for _, found in result.variable_gradients] == [wanted is None for wanted in expected]
    assert [name for name, found in result.variable_gradients if found is None] == ["risk/kernel", "risk/bias"]
    for (_, found), wanted in zip(result.variable_gradients, expected, strict=True):
        if wanted is not None:
            _close(found, wanted, rtol=1e-5, atol=1e-6)
    assert result.loss is not None
    risk, scores = model([batch["a"], batch["b"]], training=False)
    _close(result.loss, loss(risk, scores).numpy(), rtol=1e-5)


def test_unconnected_variables_are_null_or_zeros(two_headed: tuple[keras.Model, ServedModel]) -> None:
    _, served = two_headed
    batch = _batch()
    nulls = gradients(served, "serving_default", batch, GradientRequest(output="risk", sources=(), variables=True))
    zeros = gradients(
        served, "serving_default", batch, GradientRequest(output="risk", sources=(), variables=True, unconnected="zero")
    )
    # the scores head does not feed the risk
    assert dict(nulls.variable_gradients)["scores/kernel"] is None
    found = dict(zeros.variable_gradients)["scores/kernel"]
    assert found is not None and found.shape == (4, 2) and not found.any()
    assert dict(nulls.variable_gradients)["hidden/kernel"] is not None


def test_jacobians_equal_the_tape_s_batch_jacobian(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    batch = _batch()
    outputs, found = jacobian(served, "serving_default", batch, "scores", "b", class_index=None, max_elements=10_000)
    a, b = tf.constant(batch["a"]), tf.constant(batch["b"])
    with tf.GradientTape() as tape:
        tape.watch(b)
        scores = model([a, b], training=False)[1]
    _close(found, tape.batch_jacobian(scores, b).numpy(), rtol=1e-5, atol=1e-7)
    assert found.shape == (5, 2, 3)
    classes = np.array([1, 1, 0, 0, 1], dtype=np.int32)
    _, picked = jacobian(served, "serving_default", batch, "scores", "b", class_index=classes, max_elements=10_000)
    _close(picked, found[np.arange(5), classes], rtol=1e-5, atol=1e-7)
    assert set(outputs) == {"risk", "scores"}


def test_a_jacobian_too_large_is_refused_before_it_is_computed(two_headed: tuple[keras.Model, ServedModel]) -> None:
    _, served = two_headed
    with pytest.raises(LimitExceeded, match="30 elements"):
        jacobian(served, "serving_default", _batch(), "scores", "b", class_index=None, max_elements=29)


def _quadratic_module() -> Any:
    module = tf.Module()
    module.w = tf.Variable(np.array([[1.0, -2.0], [0.5, 3.0]]), name="w")

    def serve(x: tf.Tensor, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.matmul(x * x, module.w), "count": steps * 2}

    module.serve = tf.function(
        serve, input_signature=[tf.TensorSpec((None, 2), tf.float64, name="x"), tf.TensorSpec((None,), tf.int64)]
    )
    return module


def test_a_float64_saved_model_in_float64(tmp_path: pathlib.Path) -> None:
    module = _quadratic_module()
    tf.saved_model.save(module, str(tmp_path / "1"), signatures={"score": module.serve})
    served = load_version(tmp_path / "1")
    x = np.array([[1.0, 2.0], [-0.5, 0.25]])
    steps = np.array([1, 2], dtype=np.int64)
    request = GradientRequest(output="y", sources=("x", "steps"), variables=True)
    result = gradients(served, "score", {"x": x, "steps": steps}, request)
    w = module.w.numpy()
    # d sum((x*x) @ w) / dx = 2 x * (w summed over outputs); / dw = sum over the batch of (x*x) per column
    _close(result.input_gradients["x"], 2 * x * w.sum(axis=1), rtol=1e-15)
    assert result.input_gradients["x"] is not None and result.input_gradients["x"].dtype == np.float64
    assert result.input_gradients["steps"] is None  # an integer input has no gradient
    ((name, dw),) = result.variable_gradients
    assert name == module.w.name
    _close(dw, np.repeat((x * x).sum(axis=0)[:, None], 2, axis=1), rtol=1e-15)
    with pytest.raises(InvalidInput, match="int64"):
        gradients(served, "score", {"x": x, "steps": steps}, GradientRequest(output="count", sources=("x",)))
