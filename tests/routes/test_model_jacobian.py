"""`:jacobian` of served models against the tape's `batch_jacobian` in process on the same model and batch."""

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

RNG = np.random.default_rng(17)
TWO = "/v1/models/two:jacobian"
MAX_ELEMENTS = 5000


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return model_repo.two_and_quad(tmp_path_factory, "jacobians")


@pytest.fixture(scope="module")
def served(repository: pathlib.Path) -> Iterator[TestClient]:
    with model_repo.serving(repository, max_elements=MAX_ELEMENTS) as client:
        yield client


@pytest.fixture(scope="module")
def model(repository: pathlib.Path) -> keras.Model:
    return model_repo.load_keras(repository, "two")


def _post(client: TestClient, body: dict[str, Any], path: str = TWO) -> dict[str, Any]:
    return model_repo.post_ok(client, path, body)


def test_batch_jacobians_equal_the_tape_s(served: TestClient, model: keras.Model) -> None:
    a, b = RNG.normal(size=(5, 2)).astype(np.float32), RNG.normal(size=(5, 3)).astype(np.float32)
    document = _post(served, {"inputs": {"a": a.tolist(), "b": b.tolist()}, "output": "scores", "input": "b"})
    xb = tf.constant(b)
    with tf.GradientTape() as tape:
        tape.watch(xb)
        scores = model([tf.constant(a), xb], training=False)[1]
    expected = tape.batch_jacobian(scores, xb).numpy()
    assert document["jacobian"]["shape"] == [5, 2, 3]
    np.testing.assert_allclose(document["jacobian"]["values"], expected, rtol=1e-5, atol=1e-7)
    classes = [1, 0, 0, 1, 1]
    body = {"inputs": {"a": a.tolist(), "b": b.tolist()}, "output": "scores", "input": "b", "class_index": classes}
    picked = _post(served, body, "/v1/models/two/versions/1:jacobian")
    np.testing.assert_allclose(picked["jacobian"]["values"], expected[np.arange(5), classes], rtol=1e-5, atol=1e-7)


def test_a_float64_saved_model_s_jacobian_is_its_closed_form(served: TestClient) -> None:
    x = np.array([[1.0, 2.0], [-0.5, 0.25]])
    document = _post(
        served, {"signature_name": "score", "instances": x.tolist(), "output": "y"}, "/v1/models/quad:jacobian"
    )
    w = model_repo.QUADRATIC_W
    # y_j = sum_i x_i^2 w_ij: dy_j / dx_i = 2 x_i w_ij
    expected = np.stack([2 * row[None, :] * w.T for row in x])
    assert document["jacobian"]["dtype"] == "float64"
    np.testing.assert_allclose(document["jacobian"]["values"], expected, rtol=1e-15)


X2 = {"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]}
HOSTILE = [
    ({"inputs": X2, "input": "a"}, ("body", "output"), "name one", "validation"),
    ({"inputs": X2, "output": "scores"}, ("body", "input"), "name one", "validation"),
    ({"inputs": X2, "output": "scores", "input": "c"}, ("body", "input"), "no input 'c'", "validation"),
    (
        {"inputs": X2, "output": "scores", "input": "a", "class_index": 5},
        ("body", "class_index"),
        "[0, 2)",
        "validation",
    ),
    ({"inputs": X2, "output": "scores", "input": "a", "hessian": True}, ("body", "hessian"), None, "validation"),
    (
        {"inputs": {"a": [[1.0, 2.0]] * 1000, "b": [[1.0, 2.0, 3.0]] * 1000}, "output": "scores", "input": "b"},
        None,
        "TAPESERVE_MAX_ELEMENTS",
        "limit-exceeded",
    ),
]


@pytest.mark.parametrize(("body", "loc", "says", "slug"), HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_jacobian_requests_are_refused(
    served: TestClient, body: dict[str, Any], loc: tuple[Any, ...] | None, says: str | None, slug: str
) -> None:
    response = served.post(TWO, json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["type"] == f"https://tapeserve.dev/problems/{slug}" and problem["error"] == problem["detail"]
    if loc is not None:
        assert any(tuple(item["loc"])[: len(loc)] == loc for item in problem["errors"]), problem
    if says is not None:
        assert says in problem["detail"]
