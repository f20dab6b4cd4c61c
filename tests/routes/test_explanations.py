"""POST /v1/networks/explanations over HTTP: the seed's patient against in-process TensorFlow, the PNG, bad input."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from matplotlib import image as mpimg

from schemas.explain import (
    SEED_EXPLANATION_REQUEST,
    ExplanationResponse,
    NetworkExplanationRequest,
)
from schemas.networks import SEED_FEATURES, SEED_WEIGHTS
from service import vocabulary
from service.compute.explain import prepare
from tests.blocking import BlockedWorker, wait_until
from tests.conftest import make_client

URL = "/v1/networks/explanations"


def post(client: TestClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post(URL, json=body, headers=headers)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    ExplanationResponse.model_validate(document)
    return document


def seed_class_output(x: tf.Tensor) -> tf.Tensor:
    """The seed's cell: softmax(W·[x; 1]), the diabetic class."""
    w = tf.constant(SEED_WEIGHTS, dtype=x.dtype)
    return tf.nn.softmax(tf.linalg.matvec(w, tf.concat([x, tf.ones(1, x.dtype)], 0)))[1]


def test_seed_patient_integrated_gradients_match_a_loop_of_tapes(client: TestClient) -> None:
    document = post(client, {**SEED_EXPLANATION_REQUEST, "dtype": "float64"})
    x = np.array(SEED_FEATURES)
    total = np.zeros(3)
    for k in range(50):  # the trapezoid rule of §10, one tape per step
        point = tf.constant(k / 49 * x)
        with tf.GradientTape() as tape:
            tape.watch(point)
            selected = seed_class_output(point)
        total += (0.5 if k in (0, 49) else 1.0) / 49 * np.asarray(tape.gradient(selected, point))
    (entry,) = document["explanations"]
    assert document["method"] == "integrated_gradients" and entry["class_index"] == 1
    assert document["feature_names"] == SEED_EXPLANATION_REQUEST["feature_names"]
    np.testing.assert_allclose(entry["attributions"]["features"]["values"], x * total, rtol=1e-6)
    fx, fb = float(seed_class_output(tf.constant(x))), float(seed_class_output(tf.zeros(3, tf.float64)))
    assert entry["prediction"] == pytest.approx(fx, rel=1e-12)
    assert entry["baseline_prediction"] == pytest.approx(fb, rel=1e-12)
    assert entry["convergence_delta"] == pytest.approx((x * total).sum() - (fx - fb), rel=1e-6)
    assert abs(entry["convergence_delta"]) < 1e-4 * abs(fx - fb)
    assert document["predictions"]["shape"] == [2]


def test_batch_with_saliency_and_per_instance_classes(client: TestClient) -> None:
    features = [SEED_FEATURES, [60.0, 140.0, 36.6]]
    body = {
        "features": features,
        "layers": SEED_EXPLANATION_REQUEST["layers"],
        "method": "saliency",
        "dtype": "float64",
    }
    document = post(client, {**body, "class_index": [0, 1], "absolute": False})
    for n, entry in enumerate(document["explanations"]):
        x = tf.constant(features[n], dtype=tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(x)
            selected = seed_class_output(x) if n == 1 else 1 - seed_class_output(x)
        np.testing.assert_allclose(entry["attributions"]["features"]["values"], tape.gradient(selected, x), rtol=1e-6)
        assert entry["class_index"] == n and "convergence_delta" not in entry
    assert document["predictions"]["shape"] == [2, 2]


def panels_layout(count: int) -> tuple[int, int]:
    columns = 1 if count == 1 else 2 if count <= 4 else 4
    return columns, -(-count // columns)


@pytest.mark.parametrize("count", [1, 3, 6])
def test_png_has_one_panel_per_instance(client: TestClient, count: int) -> None:
    features = [[76.0 + i, 120.0 - 2 * i, 37.5] for i in range(count)]
    body = {**SEED_EXPLANATION_REQUEST, "features": features, "theme": "light"}
    response = client.post(URL, json=body, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    pixels = mpimg.imread(io.BytesIO(response.content), format="png")
    columns, rows = panels_layout(count)
    # each panel is 6 in wide and 0.9 + 0.32 per feature (at least 2.4) in high, at 100 dpi
    assert pixels.shape[:2] == (rows * 240, columns * 600)
    # a light figure: bars in the two attribution colours are drawn in every panel
    red = (np.abs(pixels[..., :3] - np.array([0xD6, 0x27, 0x28]) / 255).sum(axis=-1) < 0.05).sum()
    blue = (np.abs(pixels[..., :3] - np.array([0x1F, 0x77, 0xB4]) / 255).sum(axis=-1) < 0.05).sum()
    assert red > 100 * count and blue > 100 * count


def test_json_stays_the_default_answer(client: TestClient) -> None:
    for accept in ("*/*", "application/json", "application/json, image/png;q=0.5", ""):
        response = client.post(URL, json=SEED_EXPLANATION_REQUEST, headers={"Accept": accept} if accept else {})
        assert response.headers["content-type"].startswith("application/json"), accept


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"steps": 0}, ["body", "steps"]),
        ({"steps": 1_000_000}, ["body", "steps"]),
        ({"steps": 1}, ["body", "steps"]),
        ({"method": "smoothgrad", "samples": 257}, ["body", "samples"]),
        ({"baseline": [0.0, 0.0]}, ["body", "baseline"]),
        ({"baseline": [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]}, ["body", "baseline"]),
        ({"class_index": 2}, ["body", "class_index"]),
        ({"class_index": -1}, ["body", "class_index"]),
        ({"absolute": True}, ["body", "absolute"]),
        ({"feature_names": ["heart rate"]}, ["body", "feature_names"]),
        ({"method": "smoothgrad", "noise_stddev": [1.0, 2.0]}, ["body", "noise_stddev"]),
        ({"layers": [{"weights": [[1.0, 2.0]], "activation": "softmax"}]}, ["body", "layers", 0, "weights"]),
        ({"baseline": [1.0, "NaN", 2.0]}, ["body", "baseline", 1]),
    ],
)
def test_hostile_inputs_are_422_naming_the_field(client: TestClient, fields: dict[str, Any], loc: list[Any]) -> None:
    response = client.post(URL, json={**SEED_EXPLANATION_REQUEST, **fields})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"] == loc


def test_png_of_too_many_instances_is_refused(client: TestClient) -> None:
    body = {**SEED_EXPLANATION_REQUEST, "features": [SEED_FEATURES] * 17}
    response = client.post(URL, json=body, headers={"Accept": "image/png"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "features"]


def test_signed_saliency_passes_as_the_claimed_gradient_of_the_explained_output(client: TestClient) -> None:
    """The gradient check's target is a scalar of a tape program: written as F, signed saliency is its gradient."""
    document = post(client, {**SEED_EXPLANATION_REQUEST, "method": "saliency", "absolute": False, "dtype": "float64"})
    saliency = document["explanations"][0]["attributions"]["features"]["values"]
    program = "xB = tf.concat([x, tf.ones(1, dtype=tf.float64)], axis=0)\nF = tf.nn.softmax(tf.linalg.matvec(W, xB))[1]"
    check = {
        "tape": {
            "inputs": {"x": {"value": SEED_FEATURES}, "W": {"value": SEED_WEIGHTS}},
            "program": program,
            "watch": ["x"],
            "compute": [{"kind": "gradient", "target": "F", "sources": ["x"]}],
        },
        "claimed": {"x": saliency},
    }
    response = client.post("/v1/gradient-check", json=check)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["checks"][0]["claimed"]["passed"] and result["passed"]


def test_b64_answer_carries_the_same_attributions(client: TestClient) -> None:
    features = [SEED_FEATURES, [60.0, 140.0, 36.6], [90.0, 110.0, 38.2]]
    body = {**SEED_EXPLANATION_REQUEST, "features": features, "dtype": "float64"}
    nested = post(client, body)["explanations"]
    packed = post(client, {**body, "response_encoding": "b64"})["explanations"]
    for plain, raw in zip(nested, packed, strict=True):
        tensor = raw["attributions"]["features"]
        assert tensor["shape"] == [3] and tensor["dtype"] == "float64"
        decoded = np.frombuffer(base64.b64decode(tensor["b64"]), dtype="<f8")
        np.testing.assert_array_equal(decoded, plain["attributions"]["features"]["values"])
        assert raw["convergence_delta"] == plain["convergence_delta"]


def test_concurrent_requests_merge_into_one_call_and_answer_as_alone() -> None:
    bodies = [
        {
            **SEED_EXPLANATION_REQUEST,
            "dtype": "float64",
            "layers": [{"weights": (np.array(SEED_WEIGHTS) * scale).tolist(), "activation": "softmax"}],
        }
        for scale in (0.5, 1.0, 1.5, 2.0)
    ]
    with make_client() as client:
        blocked = BlockedWorker(client)
        blocked.occupy()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client.post, URL, json=body) for body in bodies]
            wait_until(lambda: blocked.worker.queue_depth == 4)
            blocked.release.set()
            merged = [future.result().json() for future in futures]
        assert blocked.worker.stats.batch_sizes.get(4) == 1
        for body, answer in zip(bodies, merged, strict=True):
            alone = post(client, body)
            np.testing.assert_allclose(
                answer["explanations"][0]["attributions"]["features"]["values"],
                alone["explanations"][0]["attributions"]["features"]["values"],
                rtol=1e-12,
            )


def test_the_schema_offers_what_the_engine_implements() -> None:
    properties = NetworkExplanationRequest.model_json_schema()["properties"]
    assert properties["method"]["enum"] == list(vocabulary.METHODS)
    assert properties["integration"]["enum"] == list(vocabulary.INTEGRATIONS)
    limits = (vocabulary.MAX_STEPS, vocabulary.MAX_SAMPLES)
    assert (properties["steps"]["maximum"], properties["samples"]["maximum"]) == limits
    engine_defaults = prepare.ExplainOptions()
    assert (properties["steps"]["default"], properties["samples"]["default"]) == (
        engine_defaults.steps,
        engine_defaults.samples,
    )
