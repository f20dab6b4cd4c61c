"""Model jobs stacked along the batch axis: every request's answer equals its own unmerged one and in-process
tf.GradientTape's on its own batch; compiled functions are bucketed by batch size and cached per version."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from service.compute.errors import JobFailed, LimitExceeded
from service.compute.explain.prepare import ExplainOptions, attribution_inputs, evaluation
from service.compute.models.compiled import bucket_rows, floor_rows
from service.compute.models.engine import (
    ExplainJob,
    GradientsJob,
    JacobianJob,
    ModelsEngine,
    PredictJob,
    mergeable,
)
from service.compute.models.loading import ServedModel, load_version, warm_up
from service.compute.models.verbs import GradientRequest
from service.settings import Settings
from tests import model_repo

MAX_ELEMENTS = Settings.model_fields["max_elements"].default
"""TAPESERVE_MAX_ELEMENTS's default, as the service passes it."""
RNG = np.random.default_rng(11)
ENGINE = ModelsEngine()
SIZES = (1, 3, 2, 5)


@pytest.fixture(scope="module")
def two_headed(tmp_path_factory: pytest.TempPathFactory) -> tuple[keras.Model, ServedModel]:
    model = model_repo.two_headed()
    return model, load_version(model_repo.save_keras(model, tmp_path_factory.mktemp("repo"), "two", 1))


def _batch(size: int) -> dict[str, np.ndarray]:
    return {"a": RNG.normal(size=(size, 2)).astype(np.float32), "b": RNG.normal(size=(size, 3)).astype(np.float32)}


def _tape(model: keras.Model, batch: dict[str, np.ndarray], target: Callable[[Any, Any], Any]) -> dict[str, Any]:
    """In process: the target on this batch alone, its gradients w.r.t. both inputs, and the outputs."""
    a, b = tf.constant(batch["a"]), tf.constant(batch["b"])
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        risk, scores = model([a, b], training=False)
        value = target(risk, scores)
    grad_a, grad_b = tape.gradient(value, [a, b])
    return {"a": grad_a.numpy(), "b": grad_b.numpy(), "scores": scores.numpy(), "value": value.numpy()}


def _merged(jobs: list[Any]) -> list[Any]:
    """The jobs as the worker merges them: one key, one `run`."""
    assert len({ENGINE.merge_key(job) for job in jobs}) == 1
    assert ENGINE.merge_key(jobs[0]) is not None
    return ENGINE.run(jobs)


def _gradient_jobs(served: ServedModel, request: GradientRequest, extras: list[Any]) -> list[GradientsJob]:
    return [
        GradientsJob(served, "serving_default", _batch(size), request, extra)
        for size, extra in zip(SIZES, extras, strict=True)
    ]


def _check_gradients(model: keras.Model, jobs: list[GradientsJob], targets: list[Callable[[Any, Any], Any]]) -> None:
    merged = _merged(jobs)
    for job, answer, target in zip(jobs, merged, targets, strict=True):
        (alone,) = ENGINE.run([job])
        wanted = _tape(model, job.inputs, target)
        for name in ("a", "b"):
            np.testing.assert_allclose(answer.input_gradients[name], alone.input_gradients[name], rtol=1e-6, atol=1e-8)
            np.testing.assert_allclose(answer.input_gradients[name], wanted[name], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(answer.outputs["scores"], wanted["scores"], rtol=1e-6)
        assert answer.outputs["scores"].shape == (job.inputs["a"].shape[0], 2)
        if answer.loss is not None:
            assert alone.loss is not None
            np.testing.assert_allclose(answer.loss, alone.loss, rtol=1e-6)
            np.testing.assert_allclose(answer.loss, wanted["value"], rtol=1e-5)


def test_gradients_of_an_output_merged(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    request = GradientRequest(output="scores", sources=("a", "b"))
    jobs = _gradient_jobs(served, request, [None] * len(SIZES))
    _check_gradients(model, jobs, [lambda risk, scores: scores] * len(SIZES))


def test_gradients_of_per_instance_classes_merged(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    request = GradientRequest(output="scores", sources=("a", "b"), kind="class_index")
    classes = [RNG.integers(0, 2, size=size).astype(np.int32) for size in SIZES]
    jobs = _gradient_jobs(served, request, classes)

    def picking(picked: np.ndarray) -> Callable[[Any, Any], Any]:
        return lambda risk, scores: tf.gather(scores, picked, batch_dims=1)

    _check_gradients(model, jobs, [picking(picked) for picked in classes])


def test_output_gradients_merged(two_headed: tuple[keras.Model, ServedModel]) -> None:
    model, served = two_headed
    request = GradientRequest(output="scores", sources=("a", "b"), kind="output_gradients")
    cotangents = [RNG.normal(size=(size, 2)).astype(np.float32) for size in SIZES]
    jobs = _gradient_jobs(served, request, cotangents)

    def weighing(cotangent: np.ndarray) -> Callable[[Any, Any], Any]:
        return lambda risk, scores: tf.reduce_sum(scores * cotangent)

    _check_gradients(model, jobs, [weighing(cotangent) for cotangent in cotangents])


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_losses_are_reduced_per_request(two_headed: tuple[keras.Model, ServedModel], reduction: str) -> None:
    # a mean over the merged batch would weigh each request by the others' sizes: it must be each request's own
    model, served = two_headed
    request = GradientRequest(output="scores", sources=("a", "b"), kind="loss", reduction=reduction)  # type: ignore[arg-type]
    targets = [np.eye(2, dtype=np.float32)[RNG.integers(0, 2, size=size)] for size in SIZES]
    jobs = _gradient_jobs(served, request, targets)

    def cross_entropy(onehot: np.ndarray) -> Callable[[Any, Any], Any]:
        def loss(risk: Any, scores: Any) -> Any:
            per_instance = -tf.reduce_sum(onehot * tf.math.log(scores), axis=-1)
            return {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "none": tf.identity}[reduction](per_instance)

        return loss

    _check_gradients(model, jobs, [cross_entropy(onehot) for onehot in targets])


def test_variable_gradients_are_never_merged(two_headed: tuple[keras.Model, ServedModel]) -> None:
    # they sum over a request's instances: stacked with another request's, they would be the sum of both
    model, served = two_headed
    request = GradientRequest(output="risk", sources=("a",), variables=True)
    jobs = _gradient_jobs(served, request, [None] * len(SIZES))
    assert {ENGINE.merge_key(job) for job in jobs} == {None}
    for job in jobs:
        (answer,) = ENGINE.run([job])
        a, b = tf.constant(job.inputs["a"]), tf.constant(job.inputs["b"])
        variables = [variable.value for variable in model.trainable_variables]
        with tf.GradientTape() as tape:
            risk, _ = model([a, b], training=False)
        wanted = tape.gradient(risk, variables)
        assert [name for name, _ in answer.variable_gradients] == [v.path for v in model.trainable_variables]
        assert sum(expected is not None for expected in wanted) == 4  # hidden's and risk's kernels and biases
        for (_, found), expected in zip(answer.variable_gradients, wanted, strict=True):
            if expected is None:  # the scores head is not connected to risk
                assert found is None
            else:
                np.testing.assert_allclose(found, expected.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("by_class", [False, True])
def test_jacobians_merged(two_headed: tuple[keras.Model, ServedModel], by_class: bool) -> None:
    model, served = two_headed
    jobs = []
    for size in SIZES:
        classes = RNG.integers(0, 2, size=size).astype(np.int32) if by_class else None
        jobs.append(JacobianJob(served, "serving_default", _batch(size), "scores", "b", classes, 1 << 20))
    for job, (outputs, found) in zip(jobs, _merged(jobs), strict=True):
        a, b = tf.constant(job.inputs["a"]), tf.constant(job.inputs["b"])
        with tf.GradientTape() as tape:
            tape.watch(b)
            _, scores = model([a, b], training=False)
        wanted = tape.batch_jacobian(scores, b).numpy()
        if job.class_index is not None:
            wanted = wanted[np.arange(len(job.class_index)), job.class_index]
        np.testing.assert_allclose(found, wanted, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(outputs["scores"], scores.numpy(), rtol=1e-6)


def test_a_failing_job_answers_alone(two_headed: tuple[keras.Model, ServedModel]) -> None:
    # the Jacobian bound concerns each request alone: the one beyond it is refused, the others answered
    _, served = two_headed
    jobs = [JacobianJob(served, "serving_default", _batch(size), "scores", "b", None, 60) for size in (1, 20, 2)]
    first, refused, last = _merged(jobs)
    assert isinstance(refused, JobFailed)
    assert isinstance(refused.error, LimitExceeded)
    assert first[1].shape == (1, 2, 3)
    assert last[1].shape == (2, 2, 3)


def test_batch_sizes_share_bucketed_functions(two_headed: tuple[keras.Model, ServedModel]) -> None:
    _, served = two_headed
    assert floor_rows(5) == 64
    assert [bucket_rows(rows, 5) for rows in (1, 64, 65, 128, 129)] == [64, 64, 128, 128, 256]
    assert floor_rows(4096) == 1
    assert [bucket_rows(rows, 4096) for rows in (1, 2, 3, 5)] == [1, 2, 4, 8]
    served.predict("serving_default", _batch(200))  # bucket 256
    traced = len(served.functions)
    misses = served.functions.misses
    for size in (129, 130, 255, 256, 171):
        served.predict("serving_default", _batch(size))
    assert len(served.functions) == traced
    assert served.functions.misses == misses


def test_the_cache_is_bounded_and_goes_with_the_version(tmp_path: pathlib.Path) -> None:
    model = model_repo.sequential(1)
    served = load_version(model_repo.save_keras(model, tmp_path, "seq", 1), cache_size=3)
    for size in (1, 100, 200, 300, 600):  # buckets 64, 128, 256, 512, 1024
        x = RNG.normal(size=(size, 4)).astype(np.float32)
        np.testing.assert_allclose(served.predict("serving_default", {"x": x})["out"], model(x).numpy(), rtol=1e-6)
    assert len(served.functions) == 3
    assert [key[-1] for key in served.functions.compiled()] == [256, 512, 1024]
    served.functions.clear()
    assert len(served.functions) == 0


def test_warm_up_compiles_what_first_requests_run(tmp_path: pathlib.Path) -> None:
    served = load_version(model_repo.save_keras(model_repo.sequential(2), tmp_path, "seq", 1))
    warm_up(served, MAX_ELEMENTS)
    warmed = set(served.functions.compiled())
    assert {key[0] for key in warmed} == {"predict", "gradients", "jacobian", "explain"}
    (explainer,) = (served.functions.get(key, dict) for key in warmed if key[0] == "explain")
    traced = explainer.traces
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    signature = served.signatures["serving_default"]
    batch = mergeable(served, signature, {"x": x})
    ENGINE.run([PredictJob(served, "serving_default", {"x": x}, batch)])
    for kind, extra in (("output", None), ("class_index", np.array([2], np.int32))):
        request = GradientRequest(output="out", sources=("x",), kind=kind)  # type: ignore[arg-type]
        ENGINE.run([GradientsJob(served, "serving_default", {"x": x}, request, extra)])
    ENGINE.run([JacobianJob(served, "serving_default", {"x": x}, "out", "x", None, 1 << 20)])
    for options in (ExplainOptions(), ExplainOptions(method="saliency"), ExplainOptions(method="smoothgrad")):
        ENGINE.run([_explain_job(served, x, options)])
    ENGINE.run([_explain_job(served, x, ExplainOptions(steps=16, integration="gausslegendre"), class_index=1)])
    assert set(served.functions.compiled()) == warmed  # nothing traced on the request path
    assert explainer.traces == traced == 1  # one for every method, before the version served


def _explain_job(
    served: ServedModel, x: np.ndarray, options: ExplainOptions, class_index: int | None = None
) -> ExplainJob:
    """An `:explain` job as the adapter builds it (the default TAPESERVE_MAX_ELEMENTS)."""
    evaluated = evaluation(options, "float32")
    attribution = attribution_inputs(
        {"x": x}, evaluated, single=False, units=3, class_index=class_index, max_elements=MAX_ELEMENTS
    )
    return ExplainJob(served, "serving_default", {"x": x}, "out", evaluated, attribution, MAX_ELEMENTS)


def test_saved_models_run_exactly_as_they_are(tmp_path: pathlib.Path) -> None:
    # a tf.Module's function may reduce across its batch: never padded, never merged
    served = load_version(model_repo.save_quadratic(tmp_path))
    x = RNG.normal(size=(3, 2))
    request = GradientRequest(output="y", sources=("x",))
    job = GradientsJob(served, "score", {"x": x}, request, None)
    assert ENGINE.merge_key(job) is None
    (answer,) = ENGINE.run([job])
    np.testing.assert_allclose(answer.input_gradients["x"], 2 * x * model_repo.QUADRATIC_W.sum(axis=1), rtol=1e-15)
    assert all(key[-1] is None for key in served.functions.compiled())
