"""Warm-up of served models: by the time `/readyz` is 200, a version's first request of every verb finds its
compiled function (the 1-instance bucket, the explainer every method shares) and traces nothing, and the app's
own warm-up requests through the models' routes all answered."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from service.app import model_warm_ups
from service.compute.models.compiled import bucket_rows
from tests import model_repo
from tests.conftest import make_client, wait_ready

X = [[0.3, -1.2, 0.8, 2.0]]
FIRST_REQUESTS = [
    ("predict", {"instances": X}),
    ("gradients", {"instances": X}),
    ("gradients", {"instances": X, "class_index": 2}),
    ("jacobian", {"instances": X}),
    ("explain", {"instances": X}),
    ("explain", {"instances": X, "steps": 16, "integration": "gausslegendre", "class_index": 1}),
    ("explain", {"instances": X, "method": "saliency"}),
    ("explain", {"instances": X, "method": "gradient_x_input"}),
    ("explain", {"instances": X, "method": "smoothgrad", "samples": 8}),
]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    repository = model_repo.new_repository(tmp_path_factory, "warm")
    model_repo.save_keras(model_repo.sequential(4), repository, "seq", 1)
    return repository


def test_first_requests_trace_nothing_after_ready(root: pathlib.Path) -> None:
    with make_client(model_dir=str(root), model_poll_s=0, warmup=True) as client:
        wait_ready(client)
        served = client.app.state.models.models["seq"][1].served  # type: ignore[attr-defined]
        keys = served.functions.compiled()
        one = bucket_rows(1, 4)
        for verb in ("predict", "gradients", "jacobian"):
            assert any(key[0] == verb and key[-1] == one for key in keys), (verb, keys)
        (explainer,) = (served.functions.get(key, dict) for key in keys if key[0] == "explain")
        misses, traces = served.functions.misses, explainer.traces
        assert traces == 1  # the one function of every method, before the version turned AVAILABLE
        for verb, body in FIRST_REQUESTS:
            response = client.post(f"/v1/models/seq:{verb}", json=body)
            assert response.status_code == 200, (verb, response.text)
        assert served.functions.misses == misses
        assert explainer.traces == traces


def test_the_apps_own_model_requests_answer(root: pathlib.Path) -> None:
    # what the app sends itself before /readyz is 200: every one a valid request, so none warms an error path
    with make_client(model_dir=str(root), model_poll_s=0, warmup=False) as client:
        wait_ready(client)
        warm_ups = model_warm_ups(client.app.state.models)  # type: ignore[attr-defined]
        assert {path.rsplit(":", 1)[1] for path, _ in warm_ups} == {"predict", "gradients", "jacobian", "explain"}
        for path, body in warm_ups:
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 200, (path, response.text)
            assert json.loads(body)["instances"] == [np.zeros(4).tolist()]


def test_warm_ups_send_zeros_of_each_inputs_dtype(tmp_path_factory: pytest.TempPathFactory) -> None:
    # an int64 input gets 0, not 0.0: the predict warm-up of a model with an integer input answers 200
    repository = model_repo.new_repository(tmp_path_factory, "warm-int")
    model_repo.save_counter(repository)
    with make_client(model_dir=str(repository), model_poll_s=0, warmup=False) as client:
        wait_ready(client)
        warm_ups = dict(model_warm_ups(client.app.state.models))  # type: ignore[attr-defined]
        (instance,) = json.loads(warm_ups["/v1/models/counter:predict"])["instances"]
        assert type(instance["steps"]) is int and [type(value) for value in instance["x"]] == [float, float]
        response = client.post(
            "/v1/models/counter:predict",
            content=warm_ups["/v1/models/counter:predict"],
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 200, response.text
