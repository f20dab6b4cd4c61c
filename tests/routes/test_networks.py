"""POST /v1/networks/gradients over HTTP, against in-process TensorFlow and numpy closed forms."""

from __future__ import annotations

import base64
import copy
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from schemas.networks import SEED_FEATURES, SEED_REQUEST, SEED_WEIGHTS, NetworkResponse

ALL = ["intermediates", "local_gradients", "jacobians", "input_gradients"]


def values(tensor: dict[str, Any]) -> np.ndarray:
    return np.asarray(tensor["values"], dtype=np.float64)


def post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/networks/gradients", json=body)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    NetworkResponse.model_validate(document)
    return document


def seed_reference() -> dict[str, np.ndarray]:
    """The seed notebook's cell, written out with a plain persistent tape."""
    x = tf.constant(SEED_FEATURES, dtype=tf.float32)
    y = tf.constant(1)  # the diabetic class; the seed's y = [0, 1] is that one-hot row
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        x_b = tf.concat([x, 1.0 * tf.ones(1)], axis=0)
        w = tf.Variable(SEED_WEIGHTS, dtype=tf.float32)
        z = tf.linalg.matvec(w, x_b)
        a = tf.nn.softmax(z)
        loss = tf.reduce_sum(-tf.one_hot(indices=y, depth=2) * tf.math.log(a))
    reference = {
        "loss": loss,
        "a": a,
        "z": z,
        "x_b": x_b,
        "dL_dW": tape.gradient(loss, w),
        "dL_dx": tape.gradient(loss, x),
        "dL_dyhat": tape.gradient(loss, a),
        "da_dz": tape.gradient(a, z),
        "dz_dW": tape.gradient(z, w),
        "J_a_z": tape.jacobian(a, z),
        "J_z_W": tape.jacobian(z, w),
    }
    return {name: np.asarray(value) for name, value in reference.items()}


def test_seed_sample_matches_tensorflow_and_closed_form(client: TestClient) -> None:
    document = post(client, SEED_REQUEST)
    ref = seed_reference()
    assert document["dtype"] == "float32" and document["loss"]["shape"] == []
    np.testing.assert_allclose(values(document["loss"]), ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(values(document["predictions"]), ref["a"], rtol=1e-5)
    assert document["gradients"][0]["layer"] == 1 and document["gradients"][0]["weights"]["shape"] == [2, 4]
    np.testing.assert_allclose(values(document["gradients"][0]["weights"]), ref["dL_dW"], rtol=1e-5, atol=1e-6)
    # the pen-and-paper form the seed was after: dL/dW = (a - y) ⊗ x_B
    closed = np.outer(ref["a"] - np.array([0.0, 1.0]), np.array([*SEED_FEATURES, 1.0]))
    np.testing.assert_allclose(values(document["gradients"][0]["weights"]), closed, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(values(document["input_gradients"]), ref["dL_dx"], rtol=1e-5, atol=1e-7)

    layer = document["intermediates"][0]
    np.testing.assert_allclose(values(layer["inputs"]), ref["x_b"])
    np.testing.assert_allclose(values(layer["z"]), ref["z"], rtol=1e-5)
    np.testing.assert_allclose(values(layer["a"]), ref["a"], rtol=1e-5)

    local = {(g["target"], g["source"]): g["value"] for g in document["local_gradients"]}
    assert list(local) == [("loss", "predictions"), ("a1", "z1"), ("z1", "W1")]
    np.testing.assert_allclose(values(local["loss", "predictions"]), ref["dL_dyhat"], rtol=1e-5)
    np.testing.assert_allclose(values(local["a1", "z1"]), [0.0, 0.0], atol=1e-6)  # the seed's puzzle
    np.testing.assert_allclose(values(local["z1", "W1"]), ref["dz_dW"])
    np.testing.assert_allclose(values(local["z1", "W1"]), [[*SEED_FEATURES, 1.0]] * 2)

    jac = {(g["target"], g["source"]): g["value"] for g in document["jacobians"]}
    assert jac["a1", "z1"]["shape"] == [2, 2] and jac["z1", "W1"]["shape"] == [2, 2, 4]
    np.testing.assert_allclose(values(jac["a1", "z1"]), ref["J_a_z"], rtol=1e-5, atol=1e-7)
    a = ref["a"].astype(np.float64)
    np.testing.assert_allclose(values(jac["a1", "z1"]), np.diag(a) - np.outer(a, a), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(values(jac["z1", "W1"]), ref["J_z_W"])


def test_float64_matches_closed_form_to_1e_12(client: TestClient) -> None:
    body = {**SEED_REQUEST, "dtype": "float64"}
    document = post(client, body)
    x_b = np.array([*SEED_FEATURES, 1.0])
    z = np.asarray(SEED_WEIGHTS) @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert document["dtype"] == "float64" and document["loss"]["dtype"] == "float64"
    np.testing.assert_allclose(values(document["loss"]), -np.log(a[1]), rtol=1e-12)
    np.testing.assert_allclose(values(document["gradients"][0]["weights"]), np.outer(a - [0, 1], x_b), rtol=1e-12)


def two_layer_batch(reduction: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 3)) * [10.0, 20.0, 1.0] + [76.0, 120.0, 37.5]
    w1 = rng.normal(size=(4, 4)) * 0.02
    w2 = rng.normal(size=(2, 5)) * 0.5
    labels = [1, 0, 1, 1, 0]
    body = {
        "features": x.tolist(),
        "labels": labels,
        "reduction": reduction,
        "dtype": "float64",
        "layers": [
            {"weights": w1.tolist(), "activation": "tanh"},
            {"weights": w2.tolist(), "activation": "softmax"},
        ],
        "include": ALL,
    }
    xt = tf.constant(x)
    v1, v2 = tf.Variable(w1), tf.Variable(w2)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        ones = tf.ones((5, 1), dtype=tf.float64)
        a1 = tf.tanh(tf.concat([xt, ones], 1) @ tf.transpose(v1))
        a2 = tf.nn.softmax(tf.concat([a1, ones], 1) @ tf.transpose(v2))
        per_sample = -tf.reduce_sum(tf.one_hot(labels, 2, dtype=tf.float64) * tf.math.log(a2), axis=1)
        loss = {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "none": tf.identity}[reduction](per_sample)
    ref = {
        "loss": loss,
        "a2": a2,
        "dW1": tape.gradient(loss, v1),
        "dW2": tape.gradient(loss, v2),
        "dx": tape.gradient(loss, xt),
    }
    return body, {k: np.asarray(v) for k, v in ref.items()}


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_two_layer_tanh_softmax_batch(client: TestClient, reduction: str) -> None:
    body, ref = two_layer_batch(reduction)
    document = post(client, body)
    assert document["loss"]["shape"] == ([5] if reduction == "none" else [])
    np.testing.assert_allclose(values(document["loss"]), ref["loss"], rtol=1e-12)
    np.testing.assert_allclose(values(document["predictions"]), ref["a2"], rtol=1e-12)
    np.testing.assert_allclose(values(document["gradients"][0]["weights"]), ref["dW1"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(values(document["gradients"][1]["weights"]), ref["dW2"], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(values(document["input_gradients"]), ref["dx"], rtol=1e-10, atol=1e-14)
    jac = {(g["target"], g["source"]): g["value"]["shape"] for g in document["jacobians"]}
    assert jac == {
        ("a1", "z1"): [5, 4, 4],
        ("z1", "W1"): [5, 4, 4, 4],
        ("a2", "z2"): [5, 2, 2],
        ("z2", "W2"): [5, 2, 2, 5],
    }


def test_targets_equal_labels(client: TestClient) -> None:
    body, _ = two_layer_batch("mean")
    one_hot = np.eye(2)[body.pop("labels")].tolist()
    with_labels = post(client, two_layer_batch("mean")[0])
    with_targets = post(client, {**body, "targets": one_hot})
    for key in ("loss", "predictions", "input_gradients"):
        assert with_labels[key] == with_targets[key]
    assert with_labels["gradients"] == with_targets["gradients"]


def test_bias_none(client: TestClient) -> None:
    w = [[0.01, -0.02, 0.03], [-0.01, 0.02, -0.015]]
    document = post(
        client,
        {
            "features": SEED_FEATURES,
            "labels": 0,
            "bias": "none",
            "layers": [{"weights": w, "activation": "softmax"}],
            "dtype": "float64",
        },
    )
    x = np.array(SEED_FEATURES)
    z = np.asarray(w) @ x
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(values(document["gradients"][0]["weights"]), np.outer(a - [1, 0], x), rtol=1e-12)


def test_tensor_forms_are_interchangeable(client: TestClient) -> None:
    plain = post(client, SEED_REQUEST)
    flat = copy.deepcopy(SEED_REQUEST)
    flat["features"] = {"shape": [3], "data": SEED_FEATURES}
    raw = np.asarray(SEED_WEIGHTS, dtype="<f4").tobytes()
    flat["layers"][0]["weights"] = {
        "shape": [2, 4],
        "dtype": "float32",
        "b64": base64.b64encode(raw).decode(),
    }
    assert post(client, flat)["gradients"] == plain["gradients"]


def test_b64_response_encoding(client: TestClient) -> None:
    plain = post(client, SEED_REQUEST)
    encoded = post(client, {**SEED_REQUEST, "response_encoding": "b64"})
    tensor = encoded["gradients"][0]["weights"]
    decoded = np.frombuffer(base64.b64decode(tensor["b64"]), dtype="<f4").reshape(tensor["shape"])
    np.testing.assert_array_equal(decoded, values(plain["gradients"][0]["weights"]).astype(np.float32))


def test_infinite_loss_is_strict_json(client: TestClient) -> None:
    body = {
        "features": SEED_FEATURES,
        "labels": 0,
        "layers": [{"weights": [[-10.0, -10.0, -10.0, 0.0], [10.0, 10.0, 10.0, 0.0]], "activation": "softmax"}],
    }
    response = client.post("/v1/networks/gradients", json=body)
    assert response.status_code == 200
    assert b"NaN" not in response.content.replace(b'"NaN"', b"") and b"Infinity" in response.content
    assert response.json()["loss"]["values"] == "Infinity"


def test_device_is_reported(client: TestClient) -> None:
    assert post(client, SEED_REQUEST)["device"].endswith("device:CPU:0")


# ----------------------------------------------------------------------------------------- 4xx paths


def problem(client: TestClient, body: Any, status: int = 422, **kwargs: Any) -> dict[str, Any]:
    response = (
        client.post("/v1/networks/gradients", json=body, **kwargs)
        if "content" not in kwargs
        else client.post("/v1/networks/gradients", **kwargs)
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    document: dict[str, Any] = response.json()
    assert document["status"] == status and document["type"] and document["title"] and document["detail"]
    assert "Traceback" not in response.text
    return document


def locs(document: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in document.get("errors", [])]


def test_labels_written_as_one_hot_row_points_to_targets(client: TestClient) -> None:
    document = problem(client, {**SEED_REQUEST, "labels": [0, 1]})
    assert ["body", "labels"] in locs(document)
    assert "targets" in document["detail"] and "2" in document["detail"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"features": [[1, 2], [3]]}, ["body", "features", 1]),
        ({"features": [76, True, 37.5]}, ["body", "features", 1]),
        ({"features": [76, "NaN", 37.5]}, ["body", "features", 1]),
        (
            {"layers": [{"weights": [[0.1] * 5] * 2, "activation": "softmax"}]},
            ["body", "layers", 0, "weights"],
        ),
        (
            {"layers": [{"weights": SEED_WEIGHTS, "activation": "softmaxx"}]},
            ["body", "layers", 0, "activation"],
        ),
        (
            {"layers": [{"weights": SEED_WEIGHTS, "activation": "softmax", "alpha": 0.1}]},
            ["body", "layers", 0, "alpha"],
        ),
        ({"labels": 2}, ["body", "labels"]),
        ({"labels": True}, ["body", "labels", "int"]),
        ({"dtype": "float16"}, ["body", "dtype"]),
        ({"reduction": "avg"}, ["body", "reduction"]),
        ({"include": ["hessians"]}, ["body", "include", 0]),
        ({"layerz": []}, ["body", "layerz"]),
        ({"layers": []}, ["body", "layers"]),
        ({"targets": [0, 1]}, ["body"]),
    ],
)
def test_bad_requests_name_the_field(client: TestClient, change: dict[str, Any], loc: list[Any]) -> None:
    document = problem(client, {**SEED_REQUEST, **change})
    assert any(found[: len(loc)] == loc for found in locs(document)), locs(document)


def test_targets_of_wrong_shape(client: TestClient) -> None:
    body = {k: v for k, v in SEED_REQUEST.items() if k != "labels"}
    document = problem(client, {**body, "targets": [0, 1, 0]})
    assert ["body", "targets"] in locs(document)


def test_too_many_elements(client: TestClient) -> None:
    document = problem(client, {**SEED_REQUEST, "features": {"shape": [5000, 5000], "data": []}})
    assert document["type"].endswith("/limit-exceeded")


def test_not_json_is_400(client: TestClient) -> None:
    problem(client, None, 400, content=b"{not json", headers={"content-type": "application/json"})
    problem(client, None, 400, content=b'{"features": NaN}', headers={"content-type": "application/json"})
    problem(client, None, 400, content=b'{"features": [1e400]}', headers={"content-type": "application/json"})


def test_wrong_content_type_is_415(client: TestClient) -> None:
    problem(
        client,
        None,
        415,
        content=b"features=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    problem(client, None, 415, content=b"{}", headers={"content-type": "text/plain"})


def test_empty_body_is_400_as_a_body_that_is_not_json(client: TestClient) -> None:
    problem(client, None, 400, content=b"", headers={"content-type": "application/json"})
    problem(client, None, 400, content=b" \r\n\t", headers={"content-type": "application/json"})
    # API.md §7: on every POST, the ordinary routes as the fast lane
    posts = [path for path, item in client.app.openapi()["paths"].items() if "post" in item]  # type: ignore[attr-defined]
    assert {"/v1/networks/gradients", "/v1/tape", "/v1/activations"} <= set(posts)
    for path in posts:
        response = client.post(path, content=b"", headers={"content-type": "application/json"})
        assert response.status_code == 400, (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")


def test_unknown_path_and_wrong_verb(client: TestClient) -> None:
    response = client.get("/v1/networks/gradients")
    assert response.status_code == 405 and response.headers["content-type"].startswith("application/problem+json")
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["status"] == 404
