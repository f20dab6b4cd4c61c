"""TF Serving's REST API on a repository of real models saved here: list, status, metadata and :predict,
answers against the same models called in process."""

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

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = model_repo.new_repository(tmp_path_factory, "served")
    model_repo.save_keras(model_repo.sequential(1), root, "seq", 1)
    model_repo.save_keras(model_repo.two_headed(), root, "two", 1)
    model_repo.save_quadratic(root)
    model_repo.save_counter(root)
    model_repo.save_file_reader(root)
    model_repo.save_keras(model_repo.sequential(5), root, "broken", 1)
    model_repo.save_broken(root, "broken", 2)
    (model_repo.version_folder(root, "half", 1) / "variables").mkdir()  # no saved_model.pb yet
    return root


@pytest.fixture(scope="module")
def served(repository: pathlib.Path) -> Iterator[TestClient]:
    with model_repo.serving(repository) as client:
        yield client


def _keras(repository: pathlib.Path, name: str, version: int = 1) -> keras.Model:
    return model_repo.load_keras(repository, name, version)


def _status(client: TestClient, path: str) -> list[dict[str, Any]]:
    response = client.get(path)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["model_version_status"]
    return found


def test_the_list_names_every_model_and_its_serving_versions(served: TestClient) -> None:
    models = {entry["name"]: entry for entry in served.get("/v1/models").json()["models"]}
    assert set(models) == {"seq", "two", "quad", "counter", "unsafe", "broken", "half"}
    assert models["seq"] == {"name": "seq", "versions": ["1"], "ready": True}
    assert models["broken"] == {"name": "broken", "versions": ["1"], "ready": True}
    assert models["unsafe"] == {"name": "unsafe", "versions": [], "ready": False}
    assert models["half"] == {"name": "half", "versions": [], "ready": False}


def test_status_is_tf_serving_s(served: TestClient) -> None:
    ok = {"error_code": "OK", "error_message": ""}
    assert _status(served, "/v1/models/seq") == [{"version": "1", "state": "AVAILABLE", "status": ok}]
    assert _status(served, "/v1/models/seq/versions/1") == [{"version": "1", "state": "AVAILABLE", "status": ok}]
    # a broken version next to a good one: the good one serves, the broken one says why
    broken = {entry["version"]: entry for entry in _status(served, "/v1/models/broken")}
    assert broken["1"]["state"] == "AVAILABLE"
    assert broken["2"]["state"] == "END"
    assert broken["2"]["status"]["error_code"] == "INVALID_ARGUMENT"
    assert broken["2"]["status"]["error_message"].startswith("cannot load 2:")
    (unsafe,) = _status(served, "/v1/models/unsafe")
    assert unsafe["state"] == "END" and unsafe["status"]["error_code"] == "FAILED_PRECONDITION"
    assert "ReadFile (files)" in unsafe["status"]["error_message"]
    assert "TAPESERVE_ALLOW_UNSAFE_OPS" in unsafe["status"]["error_message"]
    # a half-written folder is not an error: nothing to report yet
    assert _status(served, "/v1/models/half") == []


def test_metadata_is_the_signature_def_json(served: TestClient) -> None:
    document = served.get("/v1/models/quad/metadata").json()
    assert document["model_spec"] == {"name": "quad", "signature_name": "", "version": "1"}
    score = document["metadata"]["signature_def"]["signature_def"]["score"]
    assert score["method_name"] == "tensorflow/serving/predict"
    assert score["inputs"]["x"]["dtype"] == "DT_DOUBLE"
    assert score["inputs"]["x"]["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}],
        "unknown_rank": False,
    }
    assert set(score["outputs"]) == {"y", "total"}
    assert score["outputs"]["total"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    two = served.get("/v1/models/two/versions/1/metadata").json()["metadata"]["signature_def"]["signature_def"]
    inputs = two["serving_default"]["inputs"]
    assert {name: info["dtype"] for name, info in inputs.items()} == {"a": "DT_FLOAT", "b": "DT_FLOAT"}
    assert [dim["size"] for dim in inputs["b"]["tensor_shape"]["dim"]] == ["-1", "3"]
    counter = served.get("/v1/models/counter/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert counter["serving_default"]["inputs"]["steps"]["dtype"] == "DT_INT64"


def test_a_sequential_file_predicts_as_keras_does(served: TestClient, repository: pathlib.Path) -> None:
    model = _keras(repository, "seq")
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    expected = model(x, training=False).numpy()
    rows = served.post("/v1/models/seq:predict", json={"instances": x.tolist()})
    assert rows.status_code == 200, rows.text
    np.testing.assert_allclose(rows.json()["predictions"], expected, rtol=1e-6)
    columns = served.post("/v1/models/seq/versions/1:predict", json={"inputs": x.tolist()})
    np.testing.assert_allclose(columns.json()["outputs"], expected, rtol=1e-6)
    named = served.post(
        "/v1/models/seq:predict", json={"inputs": {"x": x.tolist()}, "signature_name": "serving_default"}
    )
    np.testing.assert_allclose(named.json()["outputs"], expected, rtol=1e-6)
    objects = served.post("/v1/models/seq:predict", json={"instances": [{"x": row} for row in x.tolist()]})
    np.testing.assert_allclose(objects.json()["predictions"], expected, rtol=1e-6)
    b64 = {"shape": [5, 4], "dtype": "float32", "b64": __import__("base64").b64encode(x.tobytes()).decode()}
    exact = served.post("/v1/models/seq:predict", json={"inputs": {"x": b64}})
    np.testing.assert_allclose(exact.json()["outputs"], expected, rtol=1e-6)


def test_two_named_inputs_and_two_outputs_in_both_formats(served: TestClient, repository: pathlib.Path) -> None:
    model = _keras(repository, "two")
    a, b = RNG.normal(size=(3, 2)).astype(np.float32), RNG.normal(size=(3, 3)).astype(np.float32)
    risk, scores = (value.numpy() for value in model([a, b], training=False))
    instances = [{"a": a[i].tolist(), "b": b[i].tolist()} for i in range(3)]
    predictions = served.post("/v1/models/two:predict", json={"instances": instances}).json()["predictions"]
    assert [set(entry) for entry in predictions] == [{"risk", "scores"}] * 3
    np.testing.assert_allclose([entry["risk"] for entry in predictions], risk, rtol=1e-6)
    np.testing.assert_allclose([entry["scores"] for entry in predictions], scores, rtol=1e-6)
    outputs = served.post("/v1/models/two:predict", json={"inputs": {"b": b.tolist(), "a": a.tolist()}}).json()
    np.testing.assert_allclose(outputs["outputs"]["risk"], risk, rtol=1e-6)
    np.testing.assert_allclose(outputs["outputs"]["scores"], scores, rtol=1e-6)


def test_a_float64_saved_model_with_a_custom_signature(served: TestClient) -> None:
    x = np.array([[1.0, 2.0], [-0.5, 0.25], [1e-3, 3.0]])
    answer = served.post("/v1/models/quad:predict", json={"signature_name": "score", "inputs": {"x": x.tolist()}})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    # float64 end to end: the closed form to the last bit
    np.testing.assert_allclose(outputs["y"], (x * x) @ model_repo.QUADRATIC_W, rtol=1e-15)
    np.testing.assert_allclose(outputs["total"], x.sum(axis=1), rtol=1e-15)
    rows = served.post("/v1/models/quad:predict", json={"signature_name": "score", "instances": x.tolist()}).json()
    assert [entry["total"] for entry in rows["predictions"]] == x.sum(axis=1).tolist()
    module = model_repo.quadratic_module()
    np.testing.assert_allclose(
        [entry["y"] for entry in rows["predictions"]], module.score(tf.constant(x))["y"].numpy(), rtol=1e-15
    )


def test_integer_inputs_keep_their_dtype(served: TestClient) -> None:
    body = {"inputs": {"x": [[1.5, -2.0]], "steps": [2**40]}}
    outputs = served.post("/v1/models/counter:predict", json=body).json()["outputs"]
    assert outputs == {"y": [[3.0, -4.0]], "count": [2**40 + 1]}


def test_concurrent_predicts_are_merged_and_split_back(served: TestClient, repository: pathlib.Path) -> None:
    import concurrent.futures

    model = _keras(repository, "seq")
    batches = [RNG.normal(size=(1 + index % 3, 4)).astype(np.float32) for index in range(24)]

    def ask(x: np.ndarray) -> Any:
        return served.post("/v1/models/seq:predict", json={"instances": x.tolist()}).json()["predictions"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, batches))
    # float32 sums in another batch's kernel blocking round differently: an error of the size of the
    # summands' rounding (float32's epsilon at the outputs' scale of 1), not of the result's
    for x, answer in zip(batches, answers, strict=True):
        np.testing.assert_allclose(
            answer, model(x, training=False).numpy(), rtol=1e-6, atol=float(np.finfo(np.float32).eps)
        )


def test_versions_in_the_path(served: TestClient, repository: pathlib.Path) -> None:
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    expected = _keras(repository, "broken")(x, training=False).numpy()
    for path in ("/v1/models/broken:predict", "/v1/models/broken/versions/1:predict"):
        np.testing.assert_allclose(
            served.post(path, json={"instances": x.tolist()}).json()["predictions"], expected, rtol=1e-6
        )
    refused = served.post("/v1/models/broken/versions/2:predict", json={"instances": x.tolist()})
    assert refused.status_code == 404
    assert "failed to load: cannot load 2:" in refused.json()["error"]
    unsafe = served.post("/v1/models/unsafe:predict", json={"instances": [[1.0]]})
    assert unsafe.status_code == 404 and "ReadFile" in unsafe.json()["error"]
    half = served.post("/v1/models/half:predict", json={"instances": [[1.0]]})
    assert half.status_code == 404 and half.json()["error"].endswith("has no available version.")


def test_info_lists_the_served_models(served: TestClient) -> None:
    models = {entry["name"]: entry for entry in served.get("/v1/info").json()["models"]}
    assert models["seq"] == {"name": "seq", "versions": ["1"], "ready": True}
    assert models["unsafe"]["ready"] is False
