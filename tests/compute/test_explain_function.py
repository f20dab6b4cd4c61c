"""Explanations of a fixed function of named inputs: real Keras models, saved and loaded, against tape loops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from service.compute.explain.function import FunctionExplainer
from service.compute.explain.prepare import ExplainOptions, attribution_inputs, evaluation
from service.vocabulary import MethodName as Method

rng = np.random.default_rng(11)


def saved_classifier(directory: Path) -> Any:
    """A 3 → 8 → 2 float64 classifier, saved as a Keras v3 file and loaded back as a server would load it."""
    inputs = keras.Input((3,), name="vitals", dtype="float64")
    hidden = keras.layers.Dense(8, activation="tanh", dtype="float64")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", dtype="float64")(hidden)
    model = keras.Model(inputs, outputs)
    path = directory / "model.keras"
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


def two_input_model(directory: Path) -> Any:
    left = keras.Input((2,), name="left", dtype="float64")
    right = keras.Input((3,), name="right", dtype="float64")
    joined = keras.layers.Concatenate(dtype="float64")([left, right])
    outputs = keras.layers.Dense(1, activation="sigmoid", dtype="float64")(joined)
    model = keras.Model({"left": left, "right": right}, outputs)
    path = directory / "two.keras"
    model.save(path)
    return keras.saving.load_model(path, safe_mode=True)


def gradient(model: Any, point: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    tensors = {name: tf.constant(value[None]) for name, value in point.items()}
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        selected = model(tensors if len(tensors) > 1 else next(iter(tensors.values())), training=False)[0, k]
    return {name: np.asarray(g[0]) for name, g in tape.gradient(selected, tensors).items()}


def job(inputs: dict[str, np.ndarray], options: ExplainOptions, units: int, **fields: Any) -> Any:
    evaluated = evaluation(options, "float64")
    attribution = attribution_inputs(
        inputs, evaluated, single=False, units=units, seed=options.seed, max_elements=4_194_304, **fields
    )
    return evaluated, attribution


def test_keras_model_integrated_gradients_match_a_loop_of_tapes(tmp_path: Path) -> None:
    model = saved_classifier(tmp_path)
    explainer = FunctionExplainer(
        lambda x: model(x["vitals"], training=False), {"vitals": (3,)}, "float64", max_elements=4_194_304
    )
    vitals = rng.normal(size=(4, 3))
    baseline = rng.normal(size=3) * 0.1
    (result,) = explainer.run(
        [
            job(
                {"vitals": vitals},
                ExplainOptions(steps=16, integration="gausslegendre"),
                2,
                baseline={"vitals": baseline},
            )
        ]
    )
    nodes, weights = np.polynomial.legendre.leggauss(16)
    for n in range(4):
        k = int(np.argmax(model(vitals[n : n + 1]).numpy()[0]))
        assert result.classes[n] == k
        total = sum(
            w / 2 * gradient(model, {"vitals": baseline + (t + 1) / 2 * (vitals[n] - baseline)}, k)["vitals"]
            for t, w in zip(nodes, weights, strict=True)
        )
        np.testing.assert_allclose(result.attributions[0][n], (vitals[n] - baseline) * total, rtol=1e-6)
    assert result.convergence_delta is not None
    assert np.abs(result.convergence_delta).max() < 1e-9


def test_merged_jobs_concatenate_instances_in_one_call(tmp_path: Path) -> None:
    model = saved_classifier(tmp_path)
    explainer = FunctionExplainer(
        lambda x: model(x["vitals"], training=False), {"vitals": (3,)}, "float64", max_elements=4_194_304
    )
    jobs = [
        job({"vitals": rng.normal(size=(n, 3))}, ExplainOptions(method="saliency", absolute=False), 2)
        for n in (1, 3, 2)
    ]
    merged = explainer.run(jobs)
    assert explainer.calls == 1
    for one, result in zip(jobs, merged, strict=True):
        (alone,) = explainer.run([one])
        np.testing.assert_allclose(result.attributions[0], alone.attributions[0], rtol=1e-12)
        assert len(result.classes) == one[1].instances


def test_several_inputs_share_the_completeness_check(tmp_path: Path) -> None:
    model = two_input_model(tmp_path)
    explainer = FunctionExplainer(
        lambda x: model(x, training=False), {"left": (2,), "right": (3,)}, "float64", max_elements=4_194_304
    )
    inputs = {"left": rng.normal(size=(2, 2)), "right": rng.normal(size=(2, 3))}
    (result,) = explainer.run([job(inputs, ExplainOptions(steps=64, integration="gausslegendre"), 1)])
    left, right = result.attributions
    assert left.shape == (2, 2) and right.shape == (2, 3)
    assert result.convergence_delta is not None and result.baseline_prediction is not None
    change = result.prediction - result.baseline_prediction
    np.testing.assert_allclose(left.sum(axis=1) + right.sum(axis=1), change, rtol=1e-9)
    # a linear score through a sigmoid: saliency is σ′ · w for each input
    (saliency,) = explainer.run([job(inputs, ExplainOptions(method="saliency", absolute=False), 1)])
    expected = gradient(model, {"left": inputs["left"][0], "right": inputs["right"][0]}, 0)
    np.testing.assert_allclose(saliency.attributions[0][0], expected["left"], rtol=1e-6)
    np.testing.assert_allclose(saliency.attributions[1][0], expected["right"], rtol=1e-6)


@pytest.mark.parametrize("limit", [3 * 25 * 2, 4_194_304])
def test_smoothgrad_is_seeded_and_chunked_alike(tmp_path: Path, limit: int) -> None:
    model = saved_classifier(tmp_path)
    explainer = FunctionExplainer(
        lambda x: model(x["vitals"], training=False), {"vitals": (3,)}, "float64", max_elements=limit
    )
    vitals = rng.normal(size=(5, 3))
    (first,) = explainer.run([job({"vitals": vitals}, ExplainOptions(method="smoothgrad", seed=9), 2)])
    unchunked = FunctionExplainer(
        lambda x: model(x["vitals"], training=False), {"vitals": (3,)}, "float64", max_elements=4_194_304
    )
    (again,) = unchunked.run([job({"vitals": vitals}, ExplainOptions(method="smoothgrad", seed=9), 2)])
    np.testing.assert_allclose(first.attributions[0], again.attributions[0], rtol=1e-12)
    assert explainer.calls == (3 if limit < 1000 else 1)  # 25 samples × 3 values: 2 instances per call


@pytest.mark.parametrize("options", [ExplainOptions(steps=50), ExplainOptions(method="smoothgrad", samples=16)])
def test_large_calls_run_xla_compiled_padded_and_answer_alike(tmp_path: Path, options: ExplainOptions) -> None:
    model = saved_classifier(tmp_path)

    def explainer(xla_elements: int | None, limit: int = 4_194_304) -> FunctionExplainer:
        return FunctionExplainer(
            lambda x: model(x["vitals"], training=False),
            {"vitals": (3,)},
            "float64",
            max_elements=limit,
            xla_elements=xla_elements,
        )

    vitals = rng.normal(size=(37, 3))  # padded to 64 under XLA
    xla, plain = explainer(1_000), explainer(None)
    (compiled,) = xla.run([job({"vitals": vitals}, options, 2)])
    (reference,) = plain.run([job({"vitals": vitals}, options, 2)])
    assert (xla.xla_calls, plain.xla_calls) == (1, 0)
    assert compiled.attributions[0].shape == (37, 3) and len(compiled.classes) == 37
    np.testing.assert_array_equal(compiled.classes, reference.classes)
    np.testing.assert_allclose(compiled.attributions[0], reference.attributions[0], rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(compiled.prediction, reference.prediction, rtol=1e-12)
    # a call XLA would pad beyond the element limit runs without it; a small one too
    tight = explainer(1_000, limit=37 * 3 * options.steps if options.method != "smoothgrad" else 37 * 3 * 16)
    (alone,) = tight.run([job({"vitals": vitals}, options, 2)])
    (small,) = xla.run([job({"vitals": vitals[:2]}, options, 2)])
    assert (tight.xla_calls, xla.xla_calls) == (0, 1)
    np.testing.assert_allclose(alone.attributions[0], reference.attributions[0], rtol=1e-12)
    np.testing.assert_allclose(small.attributions[0], reference.attributions[0][:2], rtol=1e-10, atol=1e-15)


def test_one_traced_function_answers_every_method_as_a_loop_of_tapes(tmp_path: Path) -> None:
    model = saved_classifier(tmp_path)
    explainer = FunctionExplainer(
        lambda x: model(x["vitals"], training=False), {"vitals": (3,)}, "float64", max_elements=4_194_304
    )
    vitals = rng.normal(size=(3, 3))
    classes = [int(np.argmax(model(vitals[n : n + 1]).numpy()[0])) for n in range(3)]
    grads = np.array([gradient(model, {"vitals": vitals[n]}, classes[n])["vitals"] for n in range(3)])
    expected: dict[tuple[Method, bool | None], np.ndarray] = {
        ("saliency", True): np.abs(grads),
        ("saliency", False): grads,
        ("gradient_x_input", None): vitals * grads,
    }
    for (method, absolute), want in expected.items():  # None: the method's default
        (result,) = explainer.run([job({"vitals": vitals}, ExplainOptions(method=method, absolute=absolute), 2)])
        np.testing.assert_allclose(result.attributions[0], want, rtol=1e-9, atol=1e-15)
        assert result.baseline_prediction is None and result.convergence_delta is None
    # smoothgrad with no noise and 3 samples: the mean of 3 equal gradients
    quiet = ExplainOptions(method="smoothgrad", samples=3, absolute=False)
    (result,) = explainer.run([job({"vitals": vitals}, quiet, 2, noise_stddev={"vitals": 0.0})])
    np.testing.assert_allclose(result.attributions[0], grads, rtol=1e-9, atol=1e-15)
    (result,) = explainer.run([job({"vitals": vitals}, ExplainOptions(steps=8), 2)])
    assert result.convergence_delta is not None and result.baseline_prediction is not None
    assert explainer.traces == 1  # every method, absolute or not, with noise or without
