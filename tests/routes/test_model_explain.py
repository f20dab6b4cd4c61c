"""`:explain` of served models (API.md §10) against references written from §10's formulas: the models loaded
in process, their gradients taken one point at a time with `tf.GradientTape`."""

from __future__ import annotations

import io
import pathlib
from collections.abc import Iterator
from typing import Any

import keras
import matplotlib.image as mpimg
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from tests import model_repo
from tests.compute.test_explain import rule
from tests.model_repo import values
from tests.routes.test_explanations import panels_layout

RNG = np.random.default_rng(29)
X = RNG.normal(size=(4, 3)) * 1.5
LINEAR_W = np.array([[0.5, -1.0], [2.0, 0.25], [-0.75, 1.5]])
LINEAR_B = np.array([0.1, -0.2])
INTEGRATIONS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


def classifier() -> keras.Model:
    """vitals (3,) -> Dense(8, tanh) -> Dense(2, softmax) `probabilities`, in float64."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((3,), name="vitals", dtype="float64")
    hidden = keras.layers.Dense(8, activation="tanh", dtype="float64")(inputs)
    return keras.Model(
        inputs, keras.layers.Dense(2, activation="softmax", dtype="float64", name="probabilities")(hidden)
    )


def linear() -> keras.Model:
    inputs = keras.Input((3,), name="x", dtype="float64")
    layer = keras.layers.Dense(2, dtype="float64", name="y")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([LINEAR_W, LINEAR_B])
    return model


def two_inputs() -> keras.Model:
    keras.utils.set_random_seed(7)
    left, right = keras.Input((2,), name="left", dtype="float64"), keras.Input((3,), name="right", dtype="float64")
    joined = keras.layers.Concatenate(dtype="float64")([left, right])
    hidden = keras.layers.Dense(4, activation="tanh", dtype="float64")(joined)
    return keras.Model([left, right], keras.layers.Dense(3, activation="softmax", dtype="float64", name="p")(hidden))


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = model_repo.new_repository(tmp_path_factory, "explain")
    for name, build in (("clf", classifier), ("lin", linear), ("duo", two_inputs)):
        model_repo.save_keras(build(), root, name, 1)
    model_repo.save_quadratic(root)
    return root


@pytest.fixture(scope="module")
def served(repository: pathlib.Path) -> Iterator[TestClient]:
    with model_repo.serving(repository) as client:
        yield client


def explain(client: TestClient, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return model_repo.post_ok(client, f"/v1/models/{name}:explain", body)


def attributions(document: dict[str, Any], name: str) -> np.ndarray:
    return np.stack([values(entry["attributions"][name]) for entry in document["explanations"]])


def gradient(model: keras.Model, point: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """∂F/∂x at one point: the reference's single tape."""
    tensors = {name: tf.constant(value[None]) for name, value in point.items()}
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        called = model(tensors if len(tensors) > 1 else next(iter(tensors.values())), training=False)
        selected = called[0, k]
    return {name: np.asarray(found[0]) for name, found in tape.gradient(selected, tensors).items()}


def reference_ig(
    model: keras.Model, x: dict[str, np.ndarray], b: dict[str, np.ndarray], k: int, rule_steps: tuple[str, int]
) -> dict[str, np.ndarray]:
    """IGᵢ = (xᵢ − bᵢ) · Σₖ wₖ ∂F/∂xᵢ(b + αₖ(x − b)), one tape per point."""
    alphas, weights = rule(*rule_steps)
    total = {name: np.zeros_like(value) for name, value in x.items()}
    for alpha, weight in zip(alphas, weights, strict=True):
        found = gradient(model, {name: b[name] + alpha * (x[name] - b[name]) for name in x}, k)
        for name in x:
            total[name] += weight * found[name]
    return {name: (x[name] - b[name]) * total[name] for name in x}


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_integrated_gradients_every_rule_against_the_formula(
    served: TestClient, repository: pathlib.Path, integration: str
) -> None:
    model = model_repo.load_keras(repository, "clf")
    baseline = RNG.normal(size=3) * 0.3
    body = {"instances": X.tolist(), "integration": integration, "steps": 12, "baseline": baseline.tolist()}
    document = explain(served, "clf", body)
    assert document["model_spec"] == {"name": "clf", "version": "1", "signature_name": "serving_default"}
    found = attributions(document, "vitals")
    for n, entry in enumerate(document["explanations"]):
        k = int(np.argmax(model(X[n : n + 1], training=False)[0]))
        assert entry["class_index"] == k
        expected = reference_ig(model, {"vitals": X[n]}, {"vitals": baseline}, k, (integration, 12))["vitals"]
        np.testing.assert_allclose(found[n], expected, rtol=1e-6, atol=1e-12)
        f_x = float(model(X[n : n + 1], training=False)[0, k])
        f_b = float(model(baseline[None], training=False)[0, k])
        np.testing.assert_allclose(entry["prediction"], f_x, rtol=1e-9)
        np.testing.assert_allclose(entry["baseline_prediction"], f_b, rtol=1e-9)
        np.testing.assert_allclose(entry["convergence_delta"], found[n].sum() - (f_x - f_b), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("method", ["saliency", "gradient_x_input", "signed_saliency"])
def test_gradient_methods_against_the_tape(served: TestClient, repository: pathlib.Path, method: str) -> None:
    model = model_repo.load_keras(repository, "clf")
    body: dict[str, Any] = {"instances": X.tolist(), "method": method, "class_index": [0, 1, 0, 1]}
    if method == "signed_saliency":
        body.update(method="saliency", absolute=False)
    found = attributions(explain(served, "clf", body), "vitals")
    for n, k in enumerate(body["class_index"]):
        grad = gradient(model, {"vitals": X[n]}, k)["vitals"]
        expected = {"saliency": np.abs(grad), "gradient_x_input": X[n] * grad, "signed_saliency": grad}[method]
        np.testing.assert_allclose(found[n], expected, rtol=1e-6, atol=1e-12)


def test_smoothgrad_is_the_mean_gradient_over_the_seeded_copies(served: TestClient, repository: pathlib.Path) -> None:
    model = model_repo.load_keras(repository, "clf")
    body = {"instances": X.tolist(), "method": "smoothgrad", "samples": 7, "noise_stddev": 0.4, "seed": 3}
    found = attributions(explain(served, "clf", body), "vitals")
    noise = np.random.default_rng(3).standard_normal((len(X), 7, 3)) * 0.4
    for n in range(len(X)):
        k = int(np.argmax(model(X[n : n + 1], training=False)[0]))
        expected = np.mean([gradient(model, {"vitals": X[n] + eps}, k)["vitals"] for eps in noise[n]], axis=0)
        np.testing.assert_allclose(found[n], expected, rtol=1e-6, atol=1e-12)


def test_smoothgrad_without_noise_is_signed_saliency_and_seeds_decide(served: TestClient) -> None:
    base = {"instances": X.tolist(), "method": "smoothgrad", "samples": 5}
    quiet = attributions(explain(served, "clf", {**base, "noise_stddev": 0}), "vitals")
    signed = attributions(
        explain(served, "clf", {"instances": X.tolist(), "method": "saliency", "absolute": False}), "vitals"
    )
    np.testing.assert_allclose(quiet, signed, rtol=1e-12)
    once, twice = (attributions(explain(served, "clf", {**base, "seed": 1}), "vitals") for _ in range(2))
    other = attributions(explain(served, "clf", {**base, "seed": 2}), "vitals")
    np.testing.assert_array_equal(once, twice)
    assert np.abs(once - other).max() > 1e-6


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_linear_model_integrated_gradients_are_exact(served: TestClient, integration: str) -> None:
    steps = 2 if integration == "riemann_trapezoid" else 1
    baseline = RNG.normal(size=3)
    body = {"instances": X.tolist(), "integration": integration, "steps": steps, "class_index": 1}
    found = attributions(explain(served, "lin", {**body, "baseline": baseline.tolist()}), "x")
    np.testing.assert_allclose(found, (X - baseline) * LINEAR_W[:, 1], rtol=1e-12, atol=1e-14)


def test_completeness_delta_shrinks_as_steps_grow(served: TestClient) -> None:
    def deltas(steps: int) -> tuple[np.ndarray, np.ndarray]:
        document = explain(served, "clf", {"instances": X.tolist(), "steps": steps})
        entries = document["explanations"]
        gap = np.array([entry["prediction"] - entry["baseline_prediction"] for entry in entries])
        return np.abs([entry["convergence_delta"] for entry in entries]), np.abs(gap)

    coarse, gap = deltas(16)
    fine, _ = deltas(256)
    assert (fine < coarse).all()
    assert (fine < 1e-3 * gap).all()


def test_two_inputs_with_a_baseline_per_input(served: TestClient, repository: pathlib.Path) -> None:
    model = model_repo.load_keras(repository, "duo")
    left, right = RNG.normal(size=(2, 2)), RNG.normal(size=(2, 3))
    baseline: dict[str, list[Any]] = {
        "left": [0.1, -0.1],
        "right": [[0.2, 0.0, -0.3], [0.0, 0.1, 0.1]],
    }  # one for all, one per instance
    body = {
        "instances": [{"left": left[n].tolist(), "right": right[n].tolist()} for n in range(2)],
        "baseline": baseline,
    }
    document = explain(served, "duo", {**body, "steps": 10, "integration": "gausslegendre"})
    for n, entry in enumerate(document["explanations"]):
        x = {"left": left[n], "right": right[n]}
        b = {"left": np.array(baseline["left"]), "right": np.array(baseline["right"][n])}
        expected = reference_ig(model, x, b, entry["class_index"], ("gausslegendre", 10))
        for name in x:
            np.testing.assert_allclose(values(entry["attributions"][name]), expected[name], rtol=1e-6, atol=1e-12)
    assert document["explanations"][0]["attributions"].keys() == {"left", "right"}


def test_png_has_one_panel_per_instance_on_the_versioned_path(served: TestClient) -> None:
    body = {"instances": X[:3].tolist(), "theme": "light", "feature_names": ["a", "b", "c"]}
    response = served.post("/v1/models/clf/versions/1:explain", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    columns, rows = panels_layout(3)
    assert mpimg.imread(io.BytesIO(response.content), format="png").shape[:2] == (rows * 240, columns * 600)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"steps": 0}, ["body", "steps"]),
        ({"steps": 10**6}, ["body", "steps"]),
        ({"method": "smoothgrad", "samples": 257}, ["body", "samples"]),
        ({"baseline": [1.0, 2.0]}, ["body", "baseline"]),
        ({"class_index": 2}, ["body", "class_index"]),
        ({"output": "nope"}, ["body", "output"]),
        ({"feature_names": ["a"]}, ["body", "feature_names"]),
        ({"baseline": {"pulse": [1.0, 2.0, 3.0]}}, ["body", "baseline", "pulse"]),
    ],
)
def test_hostile_inputs_are_422_naming_the_field(served: TestClient, fields: dict[str, Any], loc: list[Any]) -> None:
    body = {"instances": X[:2].tolist(), **fields}
    response = served.post("/v1/models/clf:explain", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["errors"][0]["loc"][: len(loc)] == loc, problem
    assert problem["error"] == problem["detail"]


def test_png_of_more_than_16_instances_is_refused(served: TestClient) -> None:
    body = {"instances": np.zeros((17, 3)).tolist()}
    response = served.post("/v1/models/clf:explain", json=body, headers={"Accept": "image/png"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "instances"]


@pytest.mark.parametrize("method", ["saliency", "smoothgrad"])
def test_an_explanations_gradients_pass_as_the_claimed_gradient_of_a_model_check(
    served: TestClient, method: str
) -> None:
    """Signed saliency, and SmoothGrad with σ = 0, are ∂F/∂x per instance: `:gradients` of the explained class,
    so a model's gradient check takes them, stacked, as its claimed input gradient."""
    fields = {"absolute": False} if method == "saliency" else {"noise_stddev": 0, "samples": 2}
    document = explain(served, "clf", {"instances": X.tolist(), "method": method, **fields})
    classes = [entry["class_index"] for entry in document["explanations"]]
    claimed = attributions(document, "vitals").tolist()
    check = {"model": {"name": "clf", "instances": X.tolist(), "class_index": classes}, "claimed": {"vitals": claimed}}
    answer = model_repo.post_ok(served, "/v1/gradient-check", check)
    assert answer["passed"], answer
    wrong = {**check, "claimed": {"vitals": (-np.asarray(claimed)).tolist()}}
    assert not model_repo.post_ok(served, "/v1/gradient-check", wrong)["passed"]


@pytest.mark.parametrize("integration", ["gausslegendre", "riemann_middle"])
def test_a_saved_models_signature_is_explained_exactly_where_the_rule_is(served: TestClient, integration: str) -> None:
    """quad's `score`: y = (x ⊙ x) @ W, so ∂y_k/∂x_i = 2 W_ik x_i and IG_i = W_ik (x_i² − b_i²) for any baseline,
    which Gauss–Legendre (and the midpoint rule, on a linear integrand) integrate exactly; `total` = Σ x is a
    (batch,) output, explained as its one unit."""
    x, b = RNG.normal(size=(3, 2)), RNG.normal(size=2)
    body = {"signature_name": "score", "instances": x.tolist(), "baseline": b.tolist(), "integration": integration}
    scores = explain(served, "quad", {**body, "output": "y", "class_index": 1, "steps": 3})
    expected = model_repo.QUADRATIC_W[:, 1] * (x**2 - b**2)
    np.testing.assert_allclose(attributions(scores, "x"), expected, rtol=1e-12)
    total = explain(served, "quad", {**body, "output": "total", "steps": 3})
    np.testing.assert_allclose(attributions(total, "x"), x - b, rtol=1e-12)
    assert [entry["class_index"] for entry in total["explanations"]] == [0, 0, 0]


def test_a_large_explanation_runs_xla_compiled_with_the_formulas_answers(
    served: TestClient, repository: pathlib.Path
) -> None:
    # 700 instances × 50 steps × 3 values: padded to 1,024 instances, past compiled.XLA_ELEMENTS
    model = model_repo.load_keras(repository, "clf")
    many = RNG.normal(size=(700, 3)) * 1.5
    document = explain(served, "clf", {"instances": many.tolist(), "steps": 50, "response_encoding": "b64"})
    found = attributions(document, "vitals")
    served_model = served.app.state.models.models["clf"][1].served  # type: ignore[attr-defined]
    (explainer,) = (
        served_model.functions.get(key, dict) for key in served_model.functions.compiled() if key[0] == "explain"
    )
    assert explainer.xla_calls >= 1
    assert found.shape == (700, 3)
    zero = np.zeros(3)
    for n in (0, 1, 350, 699):
        k = int(np.argmax(model(many[n : n + 1], training=False)[0]))
        expected = reference_ig(model, {"vitals": many[n]}, {"vitals": zero}, k, ("riemann_trapezoid", 50))["vitals"]
        np.testing.assert_allclose(found[n], expected, rtol=1e-6, atol=1e-12)
    # the same instances in small requests (TensorFlow's kernels) answer alike to float64 rounding
    for first in (0, 344, 688):
        part = explain(served, "clf", {"instances": many[first : first + 12].tolist(), "steps": 50})
        np.testing.assert_allclose(attributions(part, "vitals"), found[first : first + 12], rtol=1e-10, atol=1e-15)
