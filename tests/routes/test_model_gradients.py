"""`:gradients` of served models against `tf.GradientTape` in process on the same model and batch."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from tests import model_repo
from tests.model_repo import values as _values

RNG = np.random.default_rng(13)
TWO = "/v1/models/two:gradients"


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return model_repo.two_and_quad(tmp_path_factory, "gradients")


@pytest.fixture(scope="module")
def served(repository: pathlib.Path) -> Iterator[TestClient]:
    with model_repo.serving(repository) as client:
        yield client


@pytest.fixture(scope="module")
def model(repository: pathlib.Path) -> keras.Model:
    return model_repo.load_keras(repository, "two")


def _batch(size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    return RNG.normal(size=(size, 2)).astype(np.float32), RNG.normal(size=(size, 3)).astype(np.float32)


def _tape(model: keras.Model, a: np.ndarray, b: np.ndarray, target: Any, variables: bool = False) -> list[Any]:
    xa, xb = tf.constant(a), tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch([xa, xb])
        risk, scores = model([xa, xb], training=False)
        value = target(risk, scores)
    sources = [variable.value for variable in model.trainable_variables] if variables else [xa, xb]
    return [None if grad is None else grad.numpy() for grad in tape.gradient(value, sources)]


def _post(client: TestClient, body: dict[str, Any], path: str = TWO) -> dict[str, Any]:
    return model_repo.post_ok(client, path, body)


def test_an_output_w_r_t_both_named_inputs(served: TestClient, model: keras.Model) -> None:
    a, b = _batch()
    body = {"inputs": {"a": a.tolist(), "b": b.tolist()}, "output": "scores"}
    document = _post(served, body)
    expected = _tape(model, a, b, lambda risk, scores: scores)
    np.testing.assert_allclose(_values(document["input_gradients"]["a"]), expected[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_values(document["input_gradients"]["b"]), expected[1], rtol=1e-5, atol=1e-7)
    assert document["model_spec"] == {"name": "two", "version": "1", "signature_name": "serving_default"}
    assert set(document["outputs"]) == {"risk", "scores"} and document["variable_gradients"] == []


def test_a_class_index_per_instance_in_row_format(served: TestClient, model: keras.Model) -> None:
    a, b = _batch(3)
    classes = [1, 0, 1]
    instances = [{"a": a[i].tolist(), "b": b[i].tolist()} for i in range(3)]
    body = {"instances": instances, "output": "scores", "class_index": classes, "sources": ["b"]}
    document = _post(served, body, "/v1/models/two/versions/1:gradients")
    expected = _tape(model, a, b, lambda risk, scores: tf.gather(scores, classes, axis=1, batch_dims=1))
    assert set(document["input_gradients"]) == {"b"}
    np.testing.assert_allclose(_values(document["input_gradients"]["b"]), expected[1], rtol=1e-5, atol=1e-7)


def test_output_gradients_are_a_vector_jacobian_product(served: TestClient, model: keras.Model) -> None:
    a, b = _batch()
    cotangent = RNG.normal(size=(4, 2)).astype(np.float32)
    body = {"inputs": {"a": a.tolist(), "b": b.tolist()}, "output": "scores", "output_gradients": cotangent.tolist()}
    document = _post(served, {**body, "response_encoding": "b64"})
    expected = _tape(model, a, b, lambda risk, scores: tf.reduce_sum(scores * cotangent))
    np.testing.assert_allclose(_values(document["input_gradients"]["a"]), expected[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_a_loss_with_labels_w_r_t_the_variables(served: TestClient, model: keras.Model, reduction: str) -> None:
    a, b = _batch()
    labels = [1, 0, 0, 1]
    loss = {"kind": "cross_entropy", "labels": labels, "reduction": reduction}
    body = {"inputs": {"a": a.tolist(), "b": b.tolist()}, "output": "scores", "loss": loss, "sources": ["variables"]}
    document = _post(served, body)
    targets = np.eye(2, dtype=np.float32)[labels]

    def cross_entropy(risk: Any, scores: Any) -> Any:
        per_instance = -tf.reduce_sum(targets * tf.math.log(scores), axis=1)
        return tf.reduce_sum(per_instance) if reduction == "sum" else tf.reduce_mean(per_instance)

    expected = _tape(model, a, b, cross_entropy, variables=True)
    names = [entry["name"] for entry in document["variable_gradients"]]
    assert names == [variable.path for variable in model.trainable_variables]
    for entry, wanted in zip(document["variable_gradients"], expected, strict=True):
        if wanted is None:  # the risk head does not feed the scores
            assert entry["value"] is None
        else:
            np.testing.assert_allclose(_values(entry["value"]), wanted, rtol=1e-5, atol=1e-6)
    risk, scores = model([a, b], training=False)
    np.testing.assert_allclose(_values(document["loss"]), cross_entropy(risk, scores).numpy(), rtol=1e-5)


def test_a_float64_saved_model_in_float64(served: TestClient) -> None:
    x = np.array([[1.0, 2.0], [-0.5, 0.25]])
    body = {"signature_name": "score", "inputs": {"x": x.tolist()}, "output": "y", "sources": ["inputs", "variables"]}
    document = _post(served, body, "/v1/models/quad:gradients")
    w = model_repo.QUADRATIC_W
    gradient = _values(document["input_gradients"]["x"])
    assert gradient.dtype == np.float64
    # d sum((x*x) @ w) / dx = 2 x * (w summed over its columns); / dw = (x*x) summed over the batch, per row
    np.testing.assert_allclose(gradient, 2 * x * w.sum(axis=1), rtol=1e-15)
    ((variable,),) = [document["variable_gradients"]]
    np.testing.assert_allclose(_values(variable["value"]), np.repeat((x * x).sum(axis=0)[:, None], 2, 1), rtol=1e-15)


X2 = {"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]}
HOSTILE = [
    ({"inputs": X2}, ("body", "output"), "name one"),
    ({"inputs": X2, "output": "nope"}, ("body", "output"), "no output 'nope'"),
    ({"inputs": X2, "output": "scores", "class_index": 2}, ("body", "class_index"), "[0, 2)"),
    ({"inputs": X2, "output": "scores", "class_index": [0, 1]}, ("body", "class_index"), "expected 1"),
    ({"inputs": X2, "output": "scores", "class_index": 1, "loss": {"labels": [1]}}, ("body",), "at most one"),
    ({"inputs": X2, "output": "scores", "sources": ["c"]}, ("body", "sources", 0), "'c'"),
    ({"inputs": X2, "output": "scores", "sources": []}, ("body", "sources"), None),
    ({"inputs": X2, "output": "scores", "loss": {"labels": [1], "targets": [[0, 1]]}}, ("body", "loss"), None),
    ({"inputs": X2, "output": "scores", "loss": {"kind": "hinge", "labels": [1]}}, ("body", "loss", "kind"), None),
    ({"inputs": X2, "output": "scores", "output_gradients": [[1.0, 2.0, 3.0]]}, ("body", "output_gradients"), "[1, 2]"),
    ({"inputs": X2, "output": "scores", "loss": {"targets": [[1.0, 0.0]] * 2}}, ("body", "loss", "targets"), "[1, 2]"),
    ({"inputs": X2, "output": "scores", "output_gradients": [["x", 1.0]]}, ("body", "output_gradients", 0, 0), None),
    ({"inputs": X2, "output": "scores", "unconnected": "zeros"}, ("body", "unconnected"), None),
    ({"inputs": X2, "output": "scores", "response_encoding": "hex"}, ("body", "response_encoding"), None),
]


@pytest.mark.parametrize(("body", "loc", "says"), HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_gradients_requests_name_the_field(
    served: TestClient, body: dict[str, Any], loc: tuple[Any, ...], says: str | None
) -> None:
    response = served.post(TWO, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["error"] == problem["detail"]
    assert any(tuple(item["loc"])[: len(loc)] == loc for item in problem["errors"]), problem
    if says is not None:
        assert says in problem["detail"]
    assert served.post(TWO, json={"inputs": X2, "output": "risk"}).status_code == 200
