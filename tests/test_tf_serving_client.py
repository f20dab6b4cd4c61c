"""A TensorFlow Serving client, unchanged, against tapeserve serving the repository's example model.

The calls are written as TF Serving's REST documentation and its Keras tutorial write them: `requests` with a
JSON string body, and curl's `-d` (which declares the body a form), reading `predictions`, `outputs`,
`model_version_status` and, on an error, `error`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import keras
import numpy as np
import pytest
import requests

from tests.live_server import live_server

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "models"
SEED_PATIENT = [[76.0, 120.0, 37.5]]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server(model_dir=str(EXAMPLE), warmup=False) as base:
        yield base


def _in_process(instances: list[list[float]]) -> np.ndarray:
    model = keras.saving.load_model(EXAMPLE / "diabetes" / "1" / "model.keras")
    return np.asarray(model(np.array(instances, dtype=np.float32), training=False))


def test_the_keras_tutorial_s_predict_call(server: str) -> None:
    # as in TF Serving's "Train and serve a TensorFlow model with TensorFlow Serving" tutorial
    data = json.dumps({"signature_name": "serving_default", "instances": [*SEED_PATIENT, [110.0, 160.0, 38.5]]})
    headers = {"content-type": "application/json"}
    json_response = requests.post(f"{server}/v1/models/diabetes:predict", data=data, headers=headers, timeout=30)
    predictions = json.loads(json_response.text)["predictions"]
    np.testing.assert_allclose(predictions, _in_process([*SEED_PATIENT, [110.0, 160.0, 38.5]]), rtol=1e-6)


def test_the_rest_api_page_s_curl_calls(server: str) -> None:
    # curl -d '{"instances": ...}' -X POST http://host:port/v1/models/${MODEL_NAME}[/versions/${VERSION}]:predict
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for path in ("/v1/models/diabetes:predict", "/v1/models/diabetes/versions/1:predict"):
        answer = requests.post(server + path, data='{"instances": [[76.0, 120.0, 37.5]]}', headers=form, timeout=30)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()["predictions"], _in_process(SEED_PATIENT), rtol=1e-6)
    columnar = requests.post(
        f"{server}/v1/models/diabetes:predict", data='{"inputs": {"vitals": [[76.0, 120.0, 37.5]]}}', timeout=30
    )
    np.testing.assert_allclose(columnar.json()["outputs"], _in_process(SEED_PATIENT), rtol=1e-6)
    status = requests.get(f"{server}/v1/models/diabetes", timeout=30).json()
    assert status == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    metadata = requests.get(f"{server}/v1/models/diabetes/metadata", timeout=30).json()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["vitals"]["dtype"] == "DT_FLOAT"
    assert [dim["size"] for dim in signature["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "2"]


def test_errors_carry_the_error_member_tf_serving_clients_read(server: str) -> None:
    missing = requests.post(f"{server}/v1/models/half:predict", data='{"instances": [1.0, 5.0]}', timeout=30)
    assert missing.status_code == 404
    assert "Servable not found for request" in missing.json()["error"]
    wrong = requests.post(f"{server}/v1/models/diabetes:predict", data='{"instances": [1.0, 5.0]}', timeout=30)
    assert wrong.status_code == 422
    assert "'vitals'" in wrong.json()["error"] and "float32" in wrong.json()["error"]
