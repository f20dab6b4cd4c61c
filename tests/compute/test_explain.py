"""The explain engine against references written out from API.md §10's formulas, one point at a time."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from service.compute.errors import InvalidInput, LimitExceeded
from service.compute.explain.engine import ExplainEngine, ExplanationResult
from service.compute.explain.network import prepare_network_explanation
from service.compute.explain.prepare import ExplainOptions

RULES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
TF_ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "tanh": tf.math.tanh,
    "sigmoid": tf.math.sigmoid,
    "relu": tf.nn.relu,
    "linear": tf.identity,
    "softmax": tf.nn.softmax,
    "softplus": tf.math.softplus,
}

rng = np.random.default_rng(7)
X = rng.normal(size=(3, 4))
W1 = rng.normal(size=(5, 5)) * 0.7
W2 = rng.normal(size=(3, 6)) * 0.7
ACTIVATIONS = ["tanh", "softmax"]
BASELINES = rng.normal(size=(3, 4)) * 0.3


def gauss_legendre(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [−1, 1] by Golub–Welsch (eigen-decomposition of the Jacobi matrix), not leggauss."""
    if m == 1:
        return np.zeros(1), np.full(1, 2.0)
    k = np.arange(1, m)
    beta = k / np.sqrt(4.0 * k * k - 1)
    values, vectors = np.linalg.eigh(np.diag(beta, 1) + np.diag(beta, -1))
    return values, 2 * vectors[0] ** 2


def rule(name: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """§10 written out: α on [0, 1] and the weights w."""
    if name == "riemann_left":
        return np.array([k / m for k in range(m)]), np.full(m, 1 / m)
    if name == "riemann_right":
        return np.array([k / m for k in range(1, m + 1)]), np.full(m, 1 / m)
    if name == "riemann_middle":
        return np.array([(k + 0.5) / m for k in range(m)]), np.full(m, 1 / m)
    if name == "riemann_trapezoid":
        w = np.full(m, 1 / (m - 1))
        w[0] = w[-1] = 1 / (2 * (m - 1))
        return np.array([k / (m - 1) for k in range(m)]), w
    t, w = gauss_legendre(m)
    return (t + 1) / 2, w / 2


def forward(x: Any, weights: Sequence[np.ndarray], activations: Sequence[str]) -> Any:
    """One instance through the network, as the seed writes it: z = W·[x; 1], a = f(z)."""
    a = x
    for w, name in zip(weights, activations, strict=True):
        a = TF_ACTIVATIONS[name](tf.linalg.matvec(tf.constant(w), tf.concat([a, tf.ones(1, a.dtype)], 0)))
    return a


def gradient_at(point: np.ndarray, k: int, weights: Sequence[np.ndarray], activations: Sequence[str]) -> np.ndarray:
    x = tf.constant(point)
    with tf.GradientTape() as tape:
        tape.watch(x)
        selected = forward(x, weights, activations)[k]
    return np.asarray(tape.gradient(selected, x))


def output(point: np.ndarray, weights: Sequence[np.ndarray], activations: Sequence[str]) -> np.ndarray:
    return np.asarray(forward(tf.constant(point), weights, activations))


def reference_ig(
    x: np.ndarray,
    b: np.ndarray,
    *,
    k: int,
    m: int,
    name: str,
    weights: Sequence[np.ndarray],
    activations: Sequence[str],
) -> np.ndarray:
    alphas, w = rule(name, m)
    total = sum(wk * gradient_at(b + a * (x - b), k, weights, activations) for a, wk in zip(alphas, w, strict=True))
    return np.asarray((x - b) * total)


def explain(
    features: np.ndarray,
    *,
    weights: Sequence[np.ndarray] = (W1, W2),
    activations: Sequence[str] = ACTIVATIONS,
    jit: bool = False,
    max_elements: int = 4_194_304,
    **fields: Any,
) -> ExplanationResult:
    option_names = {"method", "integration", "steps", "samples", "seed", "absolute"}
    options = ExplainOptions(**{name: value for name, value in fields.items() if name in option_names})
    job = prepare_network_explanation(
        features,
        weights=list(weights),
        activations=list(activations),
        dtype=fields.get("dtype", "float64"),
        options=options,
        class_index=fields.get("class_index"),
        baseline=fields.get("baseline"),
        noise_stddev=fields.get("noise_stddev"),
        max_elements=max_elements,
    )
    return engine(max_elements, jit).run([job])[0]


_ENGINES: dict[tuple[int, bool], ExplainEngine] = {}


def engine(max_elements: int, jit: bool) -> ExplainEngine:
    """One engine per limit and compiler, shared by the tests: its compiled functions are traced once."""
    return _ENGINES.setdefault((max_elements, jit), ExplainEngine(max_elements, jit_compile=jit))


@pytest.mark.parametrize("integration", RULES)
@pytest.mark.parametrize("jit", [False, True])
def test_integrated_gradients_every_rule_against_the_formula(integration: str, jit: bool) -> None:
    classes = [2, 0, 1]
    steps = 7
    result = explain(X, baseline=BASELINES, class_index=classes, integration=integration, steps=steps, jit=jit)
    for n in range(3):
        expected = reference_ig(
            X[n], BASELINES[n], k=classes[n], m=steps, name=integration, weights=[W1, W2], activations=ACTIVATIONS
        )
        np.testing.assert_allclose(result.attributions[0][n], expected, rtol=1e-6, atol=1e-12)
        fx, fb = (
            output(X[n], [W1, W2], ACTIVATIONS)[classes[n]],
            output(BASELINES[n], [W1, W2], ACTIVATIONS)[classes[n]],
        )
        assert result.prediction[n] == pytest.approx(fx, rel=1e-12)
        assert result.baseline_prediction is not None and result.convergence_delta is not None
        assert result.baseline_prediction[n] == pytest.approx(fb, rel=1e-12)
        assert result.convergence_delta[n] == pytest.approx(expected.sum() - (fx - fb), rel=1e-6, abs=1e-12)


def test_defaults_explain_the_predicted_class_from_a_zero_baseline() -> None:
    result = explain(X)
    for n in range(3):
        outputs = output(X[n], [W1, W2], ACTIVATIONS)
        k = int(np.argmax(outputs))
        assert result.classes[n] == k
        np.testing.assert_allclose(result.predictions[n], outputs, rtol=1e-12)
        expected = reference_ig(
            X[n], np.zeros(4), k=k, m=50, name="riemann_trapezoid", weights=[W1, W2], activations=ACTIVATIONS
        )
        np.testing.assert_allclose(result.attributions[0][n], expected, rtol=1e-6, atol=1e-12)


def test_one_baseline_for_all_is_broadcast() -> None:
    one = explain(X, baseline=BASELINES[1], steps=9).attributions[0]
    each = explain(X, baseline=np.stack([BASELINES[1]] * 3), steps=9).attributions[0]
    np.testing.assert_array_equal(one, each)


@pytest.mark.parametrize("absolute", [True, False])
def test_saliency_is_the_gradient_absolute_or_signed(absolute: bool) -> None:
    result = explain(X, method="saliency", absolute=absolute, class_index=1)
    for n in range(3):
        gradient = gradient_at(X[n], 1, [W1, W2], ACTIVATIONS)
        np.testing.assert_allclose(result.attributions[0][n], np.abs(gradient) if absolute else gradient, rtol=1e-6)
    assert result.convergence_delta is None


def test_saliency_defaults_to_absolute() -> None:
    result = explain(X, method="saliency")
    assert (result.attributions[0] >= 0).all()
    k = int(result.classes[0])
    np.testing.assert_allclose(
        result.attributions[0][0], np.abs(gradient_at(X[0], k, [W1, W2], ACTIVATIONS)), rtol=1e-6
    )


def test_gradient_times_input() -> None:
    result = explain(X, method="gradient_x_input", class_index=[0, 1, 2])
    for n in range(3):
        np.testing.assert_allclose(
            result.attributions[0][n], X[n] * gradient_at(X[n], n, [W1, W2], ACTIVATIONS), rtol=1e-6
        )


def test_smoothgrad_is_the_mean_gradient_over_the_seeded_noisy_copies() -> None:
    samples, seed = 11, 5
    result = explain(X, method="smoothgrad", samples=samples, seed=seed, class_index=2)
    # the documented noise: numpy's default_rng(seed), standard normal (instances, samples, *shape), times σ
    draws = np.random.default_rng(seed).standard_normal((3, samples, 4))
    for n in range(3):
        sigma = 0.15 * (X[n].max() - X[n].min())
        expected = np.mean(
            [gradient_at(X[n] + sigma * draws[n, s], 2, [W1, W2], ACTIVATIONS) for s in range(samples)], axis=0
        )
        np.testing.assert_allclose(result.attributions[0][n], expected, rtol=1e-6, atol=1e-14)


def test_smoothgrad_without_noise_is_signed_saliency_and_seeds_decide_the_noise() -> None:
    silent = explain(X, method="smoothgrad", noise_stddev=0.0, samples=4)
    signed = explain(X, method="saliency", absolute=False)
    np.testing.assert_allclose(silent.attributions[0], signed.attributions[0], rtol=1e-12)
    first = explain(X, method="smoothgrad", seed=3).attributions[0]
    again = explain(X, method="smoothgrad", seed=3).attributions[0]
    other = explain(X, method="smoothgrad", seed=4).attributions[0]
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-6


def test_smoothgrad_noise_per_feature() -> None:
    sigma = np.array([0.0, 0.1, 0.0, 0.2])
    result = explain(X[:1], method="smoothgrad", samples=3, seed=1, noise_stddev=sigma, class_index=0)
    draws = np.random.default_rng(1).standard_normal((1, 3, 4))
    expected = np.mean([gradient_at(X[0] + sigma * draws[0, s], 0, [W1, W2], ACTIVATIONS) for s in range(3)], axis=0)
    np.testing.assert_allclose(result.attributions[0][0], expected, rtol=1e-6)


SMOOTH = [rng.normal(size=(4, 5)) * 0.5, rng.normal(size=(2, 5)) * 0.5]


def smooth_delta(steps: int, integration: str) -> tuple[float, float]:
    x = np.array([[1.5, -2.0, 0.7, 2.2]])
    result = explain(x, weights=SMOOTH, activations=["tanh", "sigmoid"], steps=steps, integration=integration)
    assert result.convergence_delta is not None and result.baseline_prediction is not None
    return abs(float(result.convergence_delta[0])), abs(float(result.prediction[0] - result.baseline_prediction[0]))


def test_completeness_delta_shrinks_with_steps() -> None:
    coarse, _ = smooth_delta(16, "riemann_trapezoid")
    fine, change = smooth_delta(256, "riemann_trapezoid")
    assert fine < coarse
    assert fine < 1e-3 * change


def test_gauss_legendre_beats_trapezoid_at_equal_steps() -> None:
    for steps in (4, 8, 16):
        assert smooth_delta(steps, "gausslegendre")[0] < smooth_delta(steps, "riemann_trapezoid")[0]


@pytest.mark.parametrize("integration", RULES)
def test_linear_model_attributions_are_exact(integration: str) -> None:
    w = np.array([[0.5, -1.25, 2.0, 0.75, 0.3], [1.0, 0.25, -0.5, 2.5, -1.0]])
    result = explain(
        X, weights=[w], activations=["linear"], baseline=BASELINES, integration=integration, steps=3, class_index=1
    )
    np.testing.assert_allclose(result.attributions[0], (X - BASELINES) * w[1, :4], rtol=1e-14, atol=1e-15)
    assert result.convergence_delta is not None
    np.testing.assert_allclose(result.convergence_delta, 0, atol=1e-13)


@pytest.mark.parametrize("jit", [False, True])
def test_relu_kinks_follow_tensorflow(jit: bool) -> None:
    # z = x exactly, so x = 0 sits on the kink; TensorFlow's ReLU gradient there is 0
    identity = np.hstack([np.eye(3), np.zeros((3, 1))])
    readout = np.array([[1.0, 1.0, 1.0, 0.0]])
    x = np.array([[0.0, 1.0, -1.0]])
    z = tf.constant(x[0])
    with tf.GradientTape() as tape:
        tape.watch(z)
        relu = tf.nn.relu(z)
    kink = np.asarray(tape.gradient(relu, z))
    assert kink.tolist() == [0.0, 1.0, 0.0]
    result = explain(
        x, weights=[identity, readout], activations=["relu", "linear"], method="saliency", absolute=False, jit=jit
    )
    np.testing.assert_array_equal(result.attributions[0][0], kink)


def test_a_one_unit_output_is_explained_through_that_unit() -> None:
    w = np.array([[0.3, -0.2, 0.1, 0.4, 0.0]])
    result = explain(X, weights=[w], activations=["sigmoid"], method="saliency", absolute=False)
    assert result.classes.tolist() == [0, 0, 0]
    np.testing.assert_allclose(result.attributions[0][0], gradient_at(X[0], 0, [w], ["sigmoid"]), rtol=1e-6)


def test_merged_requests_equal_each_alone() -> None:
    others = [W1 * 0.5, W2 * 1.5]
    jobs = [
        prepare_network_explanation(X, weights=weights, activations=ACTIVATIONS, dtype="float64")
        for weights in ([W1, W2], others)
    ]
    engine = ExplainEngine(4_194_304)
    merged = engine.run(jobs)
    assert engine.calls == 1
    for job, result in zip(jobs, merged, strict=True):
        alone = ExplainEngine(4_194_304).run([job])[0]
        np.testing.assert_allclose(result.attributions[0], alone.attributions[0], rtol=1e-12)


def test_chunked_where_the_element_limit_demands() -> None:
    features = rng.normal(size=(9, 4))
    job = prepare_network_explanation(
        features, weights=[W1, W2], activations=ACTIVATIONS, dtype="float64", max_elements=100_000
    )
    whole = ExplainEngine(100_000)
    chunked = ExplainEngine(50 * 7 * 3)  # three instances' 50 points of the widest layer per call
    expected = whole.run([job])[0]
    result = chunked.run([job])[0]
    assert whole.calls == 1 and chunked.calls == 5  # chunks of 2 instances: a power of two
    np.testing.assert_allclose(result.attributions[0], expected.attributions[0], rtol=1e-12)
    assert result.convergence_delta is not None and expected.convergence_delta is not None
    np.testing.assert_allclose(result.convergence_delta, expected.convergence_delta, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"steps": 0}, ("steps",)),
        ({"steps": 1_000_000}, ("steps",)),
        ({"steps": 1, "integration": "riemann_trapezoid"}, ("steps",)),
        ({"method": "smoothgrad", "samples": 257}, ("samples",)),
        ({"baseline": np.zeros(3)}, ("baseline",)),
        ({"baseline": np.zeros((2, 4))}, ("baseline",)),
        ({"class_index": 3}, ("class_index",)),
        ({"class_index": [0, 1, 5]}, ("class_index", 2)),
        ({"class_index": [0, 1]}, ("class_index",)),
        ({"absolute": True}, ("absolute",)),
        ({"method": "smoothgrad", "noise_stddev": -1.0}, ("noise_stddev",)),
        ({"method": "smoothgrad", "noise_stddev": np.ones(3)}, ("noise_stddev",)),
        ({"integration": "simpson"}, ("integration",)),
    ],
)
def test_hostile_fields_name_themselves(fields: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(InvalidInput) as caught:
        explain(X, **fields)
    assert caught.value.loc == loc


def test_network_errors_are_relative_to_the_arguments() -> None:
    with pytest.raises(InvalidInput) as caught:
        explain(X, weights=[np.ones((2, 3))], activations=["softmax"])
    assert caught.value.loc == ("layers", 0, "weights")


def test_too_many_points_for_the_element_limit() -> None:
    with pytest.raises(InvalidInput) as caught:
        explain(X, steps=1024, max_elements=10_000)
    assert caught.value.loc == ("steps",)


def test_a_split_computation_stops_between_calls_past_its_deadline() -> None:
    features = rng.normal(size=(9, 4))
    job = prepare_network_explanation(features, weights=[W1, W2], activations=ACTIVATIONS, dtype="float64")
    late = dataclasses.replace(job, stop_at=time.monotonic() - 1)
    chunked = ExplainEngine(50 * 7 * 3)
    with pytest.raises(LimitExceeded):
        chunked.run([late])
    assert chunked.calls == 1  # the first call runs (the worker drops jobs late before they start), no more
    assert len(ExplainEngine(4_194_304).run([late])[0].classes) == 9  # one call: nothing to stop between


def test_xla_pads_instances_and_requests_to_powers_of_two_with_the_same_answers() -> None:
    # 3 and 5 instances run as 2 requests × 8 instances under XLA: one program for every call of that bucket
    features = np.random.default_rng(3).normal(size=(5, 4))
    jobs = [
        prepare_network_explanation(
            features[:count], weights=[W1 * scale, W2], activations=ACTIVATIONS, dtype="float64"
        )
        for count, scale in ((3, 1.0), (5, 0.5))
    ]
    compiled = ExplainEngine(4_194_304, jit_compile=True)
    assert compiled._bucketed(5, 2, 50 * 7) == 8
    assert compiled._bucketed(5, 3, 4_194_304) == 5  # padding would pass the element limit
    for job, result in zip(jobs, compiled.run(jobs), strict=True):
        alone = ExplainEngine(4_194_304).run([job])[0]
        assert result.attributions[0].shape == alone.attributions[0].shape == (job.attribution.instances, 4)
        np.testing.assert_allclose(result.attributions[0], alone.attributions[0], rtol=1e-10, atol=1e-15)
        np.testing.assert_array_equal(result.classes, alone.classes)
