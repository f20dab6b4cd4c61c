"""Concurrent :gradients, :jacobian and :explain requests of one served version merge into one call of the
worker and answer what each answers alone (and what in-process tf.GradientTape gives on its own batch)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from tests import model_repo
from tests.blocking import BlockedWorker, wait_until
from tests.conftest import make_client, wait_ready

RNG = np.random.default_rng(23)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("merging") / "models"
    root.mkdir()
    model_repo.save_keras(model_repo.two_headed(), root, "two", 1)
    return root


@pytest.fixture(scope="module")
def model(repository: pathlib.Path) -> keras.Model:
    return keras.saving.load_model(repository / "two" / "1" / "model.keras")


@pytest.fixture()
def client(repository: pathlib.Path) -> Iterator[TestClient]:
    with make_client(model_dir=str(repository), model_poll_s=0) as served:
        wait_ready(served)
        yield served


def _values(tensor: dict[str, Any]) -> np.ndarray:
    return np.asarray(tensor["values"], dtype=tensor["dtype"])


def _merged(client: TestClient, path: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The bodies posted while the worker is busy, so that they wait together and run as one call."""
    blocked = BlockedWorker(client)
    blocked.occupy()
    before = dict(blocked.worker.stats.batch_sizes)
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(client.post, path, json=body) for body in bodies]
        wait_until(lambda: blocked.worker.queue_depth == len(bodies))
        blocked.release.set()
        answers = [future.result() for future in futures]
    assert [answer.status_code for answer in answers] == [200] * len(bodies), answers[0].text
    assert blocked.worker.stats.batch_sizes.get(len(bodies), 0) == before.get(len(bodies), 0) + 1
    return [answer.json() for answer in answers]


def _instances(size: int) -> list[dict[str, list[float]]]:
    a, b = RNG.normal(size=(size, 2)), RNG.normal(size=(size, 3))
    return [{"a": a[i].tolist(), "b": b[i].tolist()} for i in range(size)]


def _tape(model: keras.Model, instances: list[dict[str, list[float]]], labels: list[int]) -> tuple[Any, Any, Any]:
    """The mean cross-entropy of `scores` on this request's instances, and its gradient w.r.t. a and b."""
    a = tf.constant([instance["a"] for instance in instances], tf.float32)
    b = tf.constant([instance["b"] for instance in instances], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([a, b])
        _, scores = model([a, b], training=False)
        loss = tf.reduce_mean(-tf.reduce_sum(tf.one_hot(labels, 2) * tf.math.log(scores), axis=-1))
    grad_a, grad_b = tape.gradient(loss, [a, b])
    return loss.numpy(), grad_a.numpy(), grad_b.numpy()


def test_gradients_with_a_mean_loss_merge_and_answer_per_request(client: TestClient, model: keras.Model) -> None:
    bodies: list[dict[str, Any]] = []
    for size in (1, 4, 2, 7):
        labels = RNG.integers(0, 2, size=size).tolist()
        bodies.append(
            {
                "instances": _instances(size),
                "output": "scores",
                "loss": {"kind": "cross_entropy", "labels": labels, "reduction": "mean"},
            }
        )
    answers = _merged(client, "/v1/models/two:gradients", bodies)
    for body, answer in zip(bodies, answers, strict=True):
        alone = client.post("/v1/models/two:gradients", json=body).json()
        loss, grad_a, grad_b = _tape(model, body["instances"], body["loss"]["labels"])
        np.testing.assert_allclose(_values(answer["loss"]), loss, rtol=1e-5)
        np.testing.assert_allclose(_values(answer["loss"]), _values(alone["loss"]), rtol=1e-6)
        for name, wanted in (("a", grad_a), ("b", grad_b)):
            found = _values(answer["input_gradients"][name])
            np.testing.assert_allclose(found, wanted, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(found, _values(alone["input_gradients"][name]), rtol=1e-6, atol=1e-8)


def test_jacobians_of_classes_merge_and_answer_per_request(client: TestClient, model: keras.Model) -> None:
    bodies: list[dict[str, Any]] = []
    for size in (3, 1, 5):
        bodies.append(
            {
                "instances": _instances(size),
                "output": "scores",
                "input": "b",
                "class_index": RNG.integers(0, 2, size=size).tolist(),
            }
        )
    answers = _merged(client, "/v1/models/two:jacobian", bodies)
    for body, answer in zip(bodies, answers, strict=True):
        a = tf.constant([instance["a"] for instance in body["instances"]], tf.float32)
        b = tf.constant([instance["b"] for instance in body["instances"]], tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(b)
            _, scores = model([a, b], training=False)
        rows = tape.batch_jacobian(scores, b).numpy()[np.arange(len(body["class_index"])), body["class_index"]]
        np.testing.assert_allclose(_values(answer["jacobian"]), rows, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(_values(answer["outputs"]["scores"]), scores.numpy(), rtol=1e-6)


def test_a_refused_request_does_not_fail_the_others_merged_with_it(repository: pathlib.Path) -> None:
    # the Jacobian's bound concerns each request alone: 2 x 3 elements per instance, 167 instances > 1,000
    bodies = [{"instances": _instances(size), "output": "scores", "input": "b"} for size in (2, 167, 1, 2)]
    with make_client(model_dir=str(repository), model_poll_s=0, max_elements=1000) as client:
        wait_ready(client)
        blocked = BlockedWorker(client)
        blocked.occupy()
        with ThreadPoolExecutor(len(bodies)) as pool:
            futures = [pool.submit(client.post, "/v1/models/two:jacobian", json=body) for body in bodies]
            wait_until(lambda: blocked.worker.queue_depth == len(bodies))
            blocked.release.set()
            answers = [future.result() for future in futures]
        assert [answer.status_code for answer in answers] == [200, 422, 200, 200]
        assert "TAPESERVE_MAX_ELEMENTS" in answers[1].json()["detail"]
        assert blocked.worker.stats.batch_sizes.get(len(bodies)) == 1
        assert [len(answers[index].json()["jacobian"]["values"]) for index in (0, 2, 3)] == [2, 1, 2]


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_explanations_merge_and_answer_per_request(client: TestClient, method: str) -> None:
    baseline = {"a": [0.1, -0.2], "b": [0.0, 0.3, -0.1]}
    bodies: list[dict[str, Any]] = [
        {"instances": _instances(size), "output": "scores", "method": method, "baseline": baseline, "seed": size}
        for size in (1, 3, 2)
    ]
    if method == "smoothgrad":
        for body in bodies:
            del body["baseline"]
    merged = _merged(client, "/v1/models/two:explain", bodies)
    for body, answer in zip(bodies, merged, strict=True):
        alone = model_repo.post_ok(client, "/v1/models/two:explain", body)
        assert len(answer["explanations"]) == len(body["instances"])
        for together, single in zip(answer["explanations"], alone["explanations"], strict=True):
            assert together["class_index"] == single["class_index"]
            for name in ("a", "b"):
                np.testing.assert_allclose(
                    _values(together["attributions"][name]), _values(single["attributions"][name]), rtol=1e-5, atol=1e-7
                )
