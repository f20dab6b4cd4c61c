"""POST /v1/gradient-check over HTTP, against numpy closed forms and the seed's own pen-and-paper cell."""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from schemas.gradient_check import GradientCheckResponse
from schemas.networks import SEED_FEATURES, SEED_WEIGHTS
from schemas.tape import SEED_PROGRAM

W = np.array(SEED_WEIGHTS)
X_B = np.array([*SEED_FEATURES, 1.0])
Y = np.array([0.0, 1.0])
SEED_NETWORK = {"features": SEED_FEATURES, "labels": 1, "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}]}
SEED_TAPE: dict[str, Any] = {
    "inputs": {
        "x": {"value": SEED_FEATURES},
        "y": {"value": 1, "dtype": "int32"},
        "W": {"value": SEED_WEIGHTS, "variable": True},
    },
    "program": SEED_PROGRAM,
    "compute": [{"kind": "gradient", "target": "L", "sources": ["W"]}],
}


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = np.exp(z - z.max(axis=axis, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=axis, keepdims=True))


def closed_form() -> np.ndarray:
    """dL/dW = (a − y) ⊗ x_B for softmax and cross-entropy."""
    return np.outer(softmax(W @ X_B) - Y, X_B)


def seed_numpy_attempt() -> tuple[np.ndarray, np.ndarray]:
    """The seed's pen-and-paper cell, as written: its printed dL/dW, and its local gradients chained to W's shape.

    Its softmax Jacobian uses z where a belongs: (I − z) * a instead of diag(a) − a aᵀ.
    """
    xb_np = X_B.reshape(-1, 1)
    y = np.array([0, 1])
    z = np.dot(W, xb_np)
    a = softmax(z, axis=0).flatten()
    yhat = a
    grad_l_yhat = -y / yhat
    grad_a_z = (np.identity(np.size(z)) - z.reshape(-1, z.shape[0]).T) * a.reshape(a.shape[0], 1)
    grad_z_w = np.zeros((W.shape[0], W.shape[1], a.shape[0]))
    grad_z_w[range(W.shape[0]), :, range(a.shape[0])] = xb_np.flatten()
    printed = np.dot(grad_l_yhat, np.dot(grad_z_w.transpose(0, 2, 1), grad_a_z.reshape(1, -1).T)).squeeze()
    # dL/dW[i, j] = Σₖ dL/dŷₖ · (its ∂aₖ/∂zᵢ) · x_B[j]
    chained = np.outer(grad_a_z.T @ grad_l_yhat, X_B)
    return printed, chained


def check(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/gradient-check", json=body)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    GradientCheckResponse.model_validate(document)
    return document


def values(tensor: dict[str, Any]) -> np.ndarray:
    return np.asarray(tensor["values"], dtype=np.float64)


def test_seed_network_passes_in_float64(client: TestClient) -> None:
    document = check(client, {"network": SEED_NETWORK})
    assert document["passed"] is True and document["verdict"] == "excellent"
    assert document["dtype"] == "float64" and document["epsilon"] == 1e-6
    assert document["max_rel_error"] <= 1e-7
    assert [c["source"] for c in document["checks"]] == ["W1", "features"]
    w1 = document["checks"][0]
    assert w1["autodiff"]["dtype"] == "float64" and w1["autodiff"]["shape"] == [2, 4]
    np.testing.assert_allclose(values(w1["autodiff"]), closed_form(), rtol=1e-12)
    np.testing.assert_allclose(values(w1["numerical"]), closed_form(), rtol=1e-7)
    assert w1["max_rel_error"] <= 1e-7 and w1["passed"] is True and "claimed" not in w1
    assert any("dtype float32 is replaced by the check's dtype float64" in note for note in document["notes"])


def test_the_seeds_own_numpy_attempt_fails_at_the_right_element(client: TestClient) -> None:
    printed, chained = seed_numpy_attempt()
    assert printed.shape == (2,) and printed[0] == 0.0  # the seed's "[0, −120.98]"-style vector
    document = check(client, {"network": SEED_NETWORK, "sources": ["W1"], "claimed": {"W1": chained.tolist()}})
    (w1,) = document["checks"]
    claimed = w1["claimed"]
    error = np.abs(chained - closed_form())
    assert claimed["worst_index"] == list(np.unravel_index(int(np.argmax(error)), error.shape))
    np.testing.assert_allclose(claimed["max_abs_error"], error.max(), rtol=1e-9)
    assert claimed["passed"] is False and w1["passed"] is True
    np.testing.assert_array_equal(values(claimed["value"]), chained)
    assert document["passed"] is False and document["verdict"] == "wrong"

    # the vector the seed printed does not even have W's shape
    response = client.post("/v1/gradient-check", json={"network": SEED_NETWORK, "claimed": {"W1": printed.tolist()}})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "claimed", "W1"]
    assert "[2, 4]" in response.json()["detail"]


def test_the_closed_form_claim_passes(client: TestClient) -> None:
    document = check(client, {"network": SEED_NETWORK, "claimed": {"W1": closed_form().tolist()}})
    claimed = document["checks"][0]["claimed"]
    assert claimed["passed"] is True and claimed["max_rel_error"] < 1e-12
    assert document["passed"] is True and document["verdict"] == "excellent"


def test_relu_at_its_kink_is_reported_as_a_mismatch(client: TestClient) -> None:
    network = {
        "features": SEED_FEATURES,
        "labels": 1,
        "layers": [
            # unit 0: 0.5·76 − 38 = 0 exactly, ReLU's kink
            {"weights": [[0.5, 0.0, 0.0, -38.0], [0.01, 0.02, -0.03, 0.1]], "activation": "relu"},
            {"weights": [[0.3, -0.2, 0.1], [-0.1, 0.4, 0.0]], "activation": "softmax"},
        ],
    }
    document = check(client, {"network": network})
    w1 = next(c for c in document["checks"] if c["source"] == "W1")
    assert values(w1["autodiff"])[0].tolist() == [0.0, 0.0, 0.0, 0.0]  # ReLU′(0) = 0 on the tape
    assert np.all(np.abs(values(w1["numerical"])[0]) > 0.01)  # finite differences straddle the kink
    assert w1["passed"] is False and w1["worst_index"][0] == 0
    assert document["passed"] is False and document["verdict"] == "wrong"
    assert any("kink of relu" in note for note in document["notes"])


def test_tape_program_check(client: TestClient) -> None:
    document = check(client, {"tape": SEED_TAPE})
    (w,) = document["checks"]
    assert w["source"] == "W" and document["passed"] is True and document["verdict"] == "excellent"
    np.testing.assert_allclose(values(w["autodiff"]), closed_form(), rtol=1e-12)
    np.testing.assert_allclose(values(w["numerical"]), closed_form(), rtol=1e-7)
    assert document["perturbed_elements"] == 8


def test_float32_inputs_are_cast_up_and_said_so(client: TestClient) -> None:
    tape = copy.deepcopy(SEED_TAPE)
    tape["inputs"]["x"]["value"] = {"shape": [3], "dtype": "float32", "data": SEED_FEATURES}
    tape["compute"][0]["sources"] = ["W", "x"]
    tape["watch"] = ["x"]
    document = check(client, {"tape": tape})
    assert document["passed"] is True and document["dtype"] == "float64"
    assert any("body.tape.inputs.x.value was sent as float32" in note for note in document["notes"])
    x = document["checks"][1]
    assert x["autodiff"]["dtype"] == "float64"
    np.testing.assert_allclose(values(x["autodiff"]), (softmax(W @ X_B) - Y) @ W[:, :3], rtol=1e-12)


def test_float32_check_on_request(client: TestClient) -> None:
    document = check(client, {"network": SEED_NETWORK, "dtype": "float32", "epsilon": 1e-2, "rtol": 1e-2})
    assert document["dtype"] == "float32" and document["checks"][0]["numerical"]["dtype"] == "float32"
    assert not any("replaced" in note for note in document["notes"])
    response = client.post("/v1/gradient-check", json={"network": SEED_NETWORK, "dtype": "float32"})
    assert response.status_code == 422 and response.json()["errors"][0]["loc"] == ["body", "epsilon"]


def test_hundred_by_hundred_check_is_fast(client: TestClient) -> None:
    rng = np.random.default_rng(2)
    network = {
        "features": rng.normal(size=99).tolist(),
        "labels": 4,
        "layers": [{"weights": (rng.normal(size=(100, 100)) * 0.1).tolist(), "activation": "softmax"}],
        "dtype": "float64",
    }
    body = {"network": network, "sources": ["W1"]}
    check(client, body)  # the first request traces the network's compiled function
    started = time.perf_counter()
    document = check(client, body)
    elapsed = time.perf_counter() - started
    assert document["passed"] is True and document["perturbed_elements"] == 10_000
    assert elapsed < 2.0, elapsed


def test_perturbing_more_than_the_cap_is_422_with_the_cap(client: TestClient) -> None:
    network = {
        "features": [1.0] * 149,
        "labels": 0,
        "layers": [{"weights": {"shape": [150, 150], "data": [0.001] * 22_500}, "activation": "softmax"}],
    }
    response = client.post("/v1/gradient-check", json={"network": network})
    assert response.status_code == 422
    document = response.json()
    assert document["type"].endswith("/limit-exceeded")
    assert "20,000" in document["detail"] and "22,649" in document["detail"]
    tape = {
        "inputs": {"b": {"value": {"shape": [1001], "data": [0.5] * 1001}}},
        "program": "L = tf.reduce_sum(b * b)",
        "watch": ["b"],
        "compute": [{"kind": "gradient", "target": "L", "sources": ["b"]}],
    }
    response = client.post("/v1/gradient-check", json={"tape": tape})
    assert response.status_code == 422 and "1,000" in response.json()["detail"]
    assert response.json()["errors"][0]["loc"] == ["body", "tape", "compute", 0, "sources"]


def two_entries() -> dict[str, Any]:
    tape = copy.deepcopy(SEED_TAPE)
    tape["compute"].append({"kind": "gradient", "target": "L", "sources": ["W"]})
    return tape


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"network": SEED_NETWORK, "tape": SEED_TAPE}, ["body"]),
        ({}, ["body"]),
        ({"tape": SEED_TAPE, "sources": ["W"]}, ["body"]),
        ({"tape": two_entries()}, ["body", "tape", "compute"]),
        ({"tape": {**SEED_TAPE, "compute": [{"kind": "jacobian", "target": "L", "sources": ["W"]}]}},
         ["body", "tape", "compute"]),
        ({"tape": {**SEED_TAPE, "compute": [{"kind": "gradient", "target": "L", "sources": ["z"]}]}},
         ["body", "tape", "compute", 0, "sources", 0]),
        ({"tape": {**SEED_TAPE, "program": "L = tf.nope(W)"}}, ["body", "tape", "program"]),
        ({"tape": {**SEED_TAPE, "inputs": {**SEED_TAPE["inputs"], "x": {"value": [1.0, "a", 3.0]}}}},
         ["body", "tape", "inputs", "x", "value", 1]),
        ({"network": SEED_NETWORK, "claimed": {"W9": [1.0]}}, ["body", "claimed", "W9"]),
        ({"network": SEED_NETWORK, "sources": ["W1", "W2"]}, ["body", "sources", 1]),
        ({"network": {**SEED_NETWORK, "layers": [{"weights": [[0.1] * 5] * 2, "activation": "softmax"}]}},
         ["body", "network", "layers", 0, "weights"]),
        ({"network": {**SEED_NETWORK, "labels": [0, 1]}}, ["body", "network", "labels"]),
        ({"network": {**SEED_NETWORK, "features": [76, True, 37.5]}}, ["body", "network", "features", 1]),
        ({"network": SEED_NETWORK, "epsilon": 0}, ["body", "epsilon"]),
        ({"network": SEED_NETWORK, "rtol": -1}, ["body", "rtol"]),
    ],
)  # fmt: skip
def test_bad_requests_name_the_field(client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    response = client.post("/v1/gradient-check", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    found = [error["loc"] for error in response.json().get("errors", [])]
    assert any(item[: len(loc)] == loc for item in found), found


def test_an_integer_target_is_a_422_in_tensorflows_words(client: TestClient) -> None:
    x = tf.constant([1.25, 2.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        k = tf.cast(x * 3.0, tf.int32)
    assert tape.gradient(k, x) is None  # TensorFlow: an integer target has no gradient (and it logs why)
    program = {"inputs": {"x": {"value": [1.25, 2.5]}}, "program": "k = tf.cast(x * 3.0, tf.int32)"}
    entry = {"kind": "gradient", "target": "k", "sources": ["x"]}
    answered = client.post("/v1/tape", json={**program, "watch": ["x"], "compute": [entry]}).json()["results"][0]
    assert answered["values"] == [None]
    (warning,) = answered["warnings"]
    assert warning.startswith("The dtype of the target tensor must be floating") and warning.endswith("tf.int32")

    response = client.post("/v1/gradient-check", json={"tape": {**program, "watch": ["x"], "compute": [entry]}})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    (error,) = response.json()["errors"]
    assert error["loc"] == ["body", "tape", "compute", 0, "target"]
    assert warning in error["msg"] and "not watched" not in error["msg"]
