"""service.client against the real app: in-process over ASGI (async) and over a real uvicorn server (sync).

Values are checked against numpy closed forms of the seed's softmax layer, not against the service.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
import tensorflow as tf

from schemas.activations import ACTIVATION_NAMES, ActivationsRequest
from schemas.gradient_check import SEED_NETWORK_CHECK, GradientCheckRequest
from schemas.networks import SEED_FEATURES, SEED_REQUEST, SEED_WEIGHTS, Layer, NetworkRequest
from schemas.tape import SEED_TAPE_REQUEST, ComputeEntry, TapeInputModel, TapeRequest
from schemas.tensors import TensorOut
from service.app import create_app
from service.client import (
    AsyncClient,
    AuthError,
    Client,
    RateLimited,
    ServerError,
    TapeserveError,
    ValidationError,
    from_numpy,
    to_numpy,
)
from service.settings import Settings
from service.worker import Worker
from tests.engines import with_calls
from tests.live_server import live_server

API_KEY = "client-test-key"
SEED_LABEL = np.array([0.0, 1.0])  # the diabetic class, one-hot


def seed_closed_form() -> dict[str, np.ndarray]:
    """The seed's 1-layer softmax network on its patient, in numpy: z = W x_B, a = softmax(z), L = −log a₁."""
    x_b = np.array([*SEED_FEATURES, 1.0])
    w = np.array(SEED_WEIGHTS)
    z = w @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    return {
        "x_b": x_b,
        "z": z,
        "a": a,
        "loss": np.array(-np.log(a[1])),
        "dL_dW": np.outer(a - SEED_LABEL, x_b),  # (a − y) ⊗ x_B
        "dL_da": -SEED_LABEL / a,
        "J_a_z": np.diag(a) - np.outer(a, a),
    }


# ------------------------------------------------------------------------------------------------ async, in-process
@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[AsyncClient]:
    app = create_app(Settings(cpu_logical_devices=2))
    async with app.router.lifespan_context(app), AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        yield client


@pytest.mark.anyio
async def test_network_gradients_match_the_closed_form(service: AsyncClient) -> None:
    result = await service.network_gradients(SEED_REQUEST)
    ref = seed_closed_form()
    assert result.dtype == "float32" and result.device.endswith("CPU:0")
    assert result.gradients[0].layer == 1 and result.gradients[0].weights.shape == [2, 4]
    np.testing.assert_allclose(to_numpy(result.gradients[0].weights), ref["dL_dW"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(to_numpy(result.loss), ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(to_numpy(result.predictions), ref["a"], rtol=1e-5)
    assert result.jacobians is not None and result.intermediates is not None
    jacobians = {(item.target, item.source): to_numpy(item.value) for item in result.jacobians}
    np.testing.assert_allclose(jacobians["a1", "z1"], ref["J_a_z"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(result.intermediates[0].inputs), ref["x_b"])


@pytest.mark.anyio
async def test_a_model_built_in_python_round_trips(service: AsyncClient) -> None:
    # numpy arrays stand for tensors inside the model; None fields (targets, alpha) are left to their defaults
    body = NetworkRequest(
        features=np.array(SEED_FEATURES),
        labels=1,
        layers=[Layer(weights=np.array(SEED_WEIGHTS, dtype=np.float32), activation="softmax")],
        dtype="float64",
        response_encoding="b64",
    )
    result = await service.network_gradients(body)
    assert result.dtype == "float64" and result.gradients[0].weights.b64 is not None
    dl_dw = to_numpy(result.gradients[0].weights)
    assert dl_dw.dtype == np.float64
    np.testing.assert_allclose(dl_dw, seed_closed_form()["dL_dW"], rtol=1e-6)

    wrapped = {"network": NetworkRequest.model_validate(SEED_REQUEST), "epsilon": 1e-6}  # a model inside a dict
    check = await service.gradient_check(wrapped)
    assert check.passed


@pytest.mark.anyio
async def test_tape_runs_the_seed_cell(service: AsyncClient) -> None:
    ref = seed_closed_form()
    result = await service.tape(SEED_TAPE_REQUEST)
    assert set(result.values) == {"L", "z"}
    np.testing.assert_allclose(to_numpy(result.values["L"]), ref["loss"], rtol=1e-5)
    np.testing.assert_allclose(to_numpy(result.values["z"]), ref["z"], rtol=1e-5)
    assert [(item.kind, item.target) for item in result.results] == [
        ("gradient", "L"),
        ("gradient", "a"),
        ("jacobian", "a"),
        ("gradient", "L"),
    ]
    dl_dyhat, da_dz, jacobian, dl_dw = (item.values[0] for item in result.results)
    assert dl_dyhat is not None and da_dz is not None and jacobian is not None and dl_dw is not None
    np.testing.assert_allclose(to_numpy(dl_dyhat), ref["dL_da"], rtol=1e-5)
    np.testing.assert_allclose(to_numpy(da_dz), [0.0, 0.0], atol=1e-6)  # d(Σ softmax)/dz: the seed's puzzle
    np.testing.assert_allclose(to_numpy(jacobian), ref["J_a_z"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(dl_dw), ref["dL_dW"], rtol=1e-4, atol=1e-5)

    model = TapeRequest(
        inputs={"x": TapeInputModel(value=[1.0, 2.0, 3.0], dtype="float64")},
        program="y = tf.reduce_sum(x ** 3)",
        watch=["x"],  # a constant, as in TensorFlow: unwatched, its gradient would be None
        compute=[ComputeEntry(kind="gradient", target="y", sources=["x"])],
    )
    cubic = await service.tape(model)
    gradient = cubic.results[0].values[0]
    assert gradient is not None and gradient.dtype == "float64"
    np.testing.assert_allclose(to_numpy(gradient), 3 * np.array([1.0, 2.0, 3.0]) ** 2)


@pytest.mark.anyio
async def test_non_persistent_tape_raises_a_validation_error_with_the_compute_index(service: AsyncClient) -> None:
    with pytest.raises(ValidationError) as caught:
        await service.tape({**SEED_TAPE_REQUEST, "persistent": False}, request_id="seed-twice")
    error = caught.value
    assert error.status == 422 and error.request_id == "seed-twice"
    assert error.type is not None and error.type.endswith("/non-persistent-tape")
    assert error.problem is not None and error.problem.model_extra == {"compute_index": 1}
    assert error.errors[0][0] == ["body", "compute", 1]
    assert "can only be used to compute one set of gradients" in str(error)


@pytest.mark.anyio
async def test_activations_default_grid_and_given_z(service: AsyncClient) -> None:
    seed = await service.activations()
    z = np.linspace(-10, 10, 129)
    assert [curve.name for curve in seed.activations] == ["sigmoid", "tanh", "relu", "leaky_relu"]
    np.testing.assert_allclose(to_numpy(seed.z), z)
    curves = {curve.name: curve for curve in seed.activations}
    sigmoid = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(to_numpy(curves["sigmoid"].values), sigmoid, rtol=1e-12)
    np.testing.assert_allclose(to_numpy(curves["sigmoid"].gradients), sigmoid * (1 - sigmoid), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(to_numpy(curves["leaky_relu"].gradients), np.where(z > 0, 1.0, 0.01))
    assert curves["sigmoid"].summary.max_abs_gradient == pytest.approx(0.25)

    request = ActivationsRequest(activations=["tanh", "relu"], z=[[-1.0, 0.0], [0.5, 2.0]], response_encoding="b64")
    given = await service.activations(request)
    tanh, relu = given.activations
    assert tanh.gradients.b64 is not None and tanh.gradients.shape == [2, 2]
    z_given = np.array([[-1.0, 0.0], [0.5, 2.0]])
    np.testing.assert_allclose(to_numpy(tanh.gradients), 1 - np.tanh(z_given) ** 2, rtol=1e-12)
    np.testing.assert_array_equal(to_numpy(relu.gradients), [[0.0, 0.0], [1.0, 1.0]])  # ReLU′(0) = 0, as in TF


@pytest.mark.anyio
async def test_gradient_check_passes_and_catches_a_wrong_claim(service: AsyncClient) -> None:
    seed = await service.gradient_check(SEED_NETWORK_CHECK)
    assert seed.passed and seed.dtype == "float64"
    checks = {check.source: check for check in seed.checks}
    np.testing.assert_allclose(to_numpy(checks["W1"].autodiff), seed_closed_form()["dL_dW"], rtol=1e-10)

    wrong = np.outer(seed_closed_form()["a"], [*SEED_FEATURES, 1.0])  # forgot to subtract y
    request = GradientCheckRequest.model_validate(
        {"network": SEED_NETWORK_CHECK["network"], "claimed": {"W1": wrong}, "sources": ["W1"]}
    )
    claimed = await service.gradient_check(request)
    assert not claimed.passed and claimed.verdict == "wrong"
    assert claimed.checks[0].claimed is not None and not claimed.checks[0].claimed.passed
    assert claimed.checks[0].passed  # autodiff still agrees with finite differences


@pytest.mark.anyio
async def test_service_endpoints(service: AsyncClient) -> None:
    assert (await service.health()).status == "ok"
    deadline = time.monotonic() + 60
    while (await service.ready()).status != "ready":  # the 503 while warming up is an answer, not an error
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    info = await service.info()
    assert info.tensorflow == tf.__version__ and info.limits.timeout_s == 30.0 and info.ready
    ops = {op.name: op for op in (await service.ops()).ops}
    assert "tf.nn.softmax" in ops["softmax"].tf_names
    catalogue = await service.activation_catalogue()
    assert {entry.name for entry in catalogue.activations} == set(ACTIVATION_NAMES)


async def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.005)


@pytest.mark.anyio
async def test_full_queue_raises_rate_limited_with_retry_after() -> None:
    app = create_app(Settings(cpu_logical_devices=2, queue_limit=1, batch_window_ms=0, warmup=False))
    async with app.router.lifespan_context(app), AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        worker: Worker = with_calls(app.state.worker)
        release, running = threading.Event(), threading.Event()

        def hold() -> bool:
            running.set()
            return release.wait(30)

        await _wait_for(lambda: worker.ready)
        # one job holding the worker thread and one waiting behind it fill a queue of one
        blockers = [asyncio.create_task(worker.run("calls", hold, deadline=time.monotonic() + 60))]
        await _wait_for(running.is_set)
        blockers.append(asyncio.create_task(worker.run("calls", hold, deadline=time.monotonic() + 60)))
        await _wait_for(lambda: worker.queue_depth == 1)
        try:
            with pytest.raises(RateLimited) as caught:
                await client.network_gradients(SEED_REQUEST)
        finally:
            release.set()
            await asyncio.gather(*blockers)
        assert caught.value.status == 429 and caught.value.retry_after == 1.0
        assert caught.value.type is not None and caught.value.type.endswith("/queue-full")
        assert (await client.network_gradients(SEED_REQUEST)).gradients[0].weights.shape == [2, 4]


# ------------------------------------------------------------------------------------------------ sync, real server
@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    with live_server(api_keys=API_KEY) as base:
        yield base


def test_auth_missing_or_wrong_key_raises_auth_error(keyed_server: str) -> None:
    with Client(keyed_server) as anonymous:
        assert anonymous.health().status == "ok"  # probes stay open
        with pytest.raises(AuthError) as missing:
            anonymous.info()
    assert missing.value.status == 401 and missing.value.problem is not None
    assert missing.value.problem.status == 401 and missing.value.request_id
    with Client(keyed_server, api_key="not-the-key") as wrong, pytest.raises(AuthError):
        wrong.network_gradients(SEED_REQUEST)
    with Client(keyed_server, api_key=API_KEY) as keyed:
        assert API_KEY not in repr(keyed)


def test_sync_client_with_the_key_computes_and_reports_422_locations(keyed_server: str) -> None:
    with Client(keyed_server, api_key=API_KEY, timeout=10) as client:
        result = client.network_gradients(NetworkRequest.model_validate(SEED_REQUEST))
        np.testing.assert_allclose(
            to_numpy(result.gradients[0].weights), seed_closed_form()["dL_dW"], rtol=1e-4, atol=1e-5
        )
        assert client.info().limits.max_elements == 4_194_304

        quoted_number = {**SEED_REQUEST, "features": [76.0, "120", 37.5]}
        with pytest.raises(ValidationError) as caught:
            client.network_gradients(quoted_number, request_id="bad-feature-1")
        assert caught.value.status == 422 and caught.value.request_id == "bad-feature-1"
        assert caught.value.problem is not None and caught.value.problem.errors is not None
        assert caught.value.problem.errors[0].loc == ["body", "features", 1]

        with pytest.raises(ValidationError) as schema:
            client.tape({"program": "y = 1", "compute": [{"kind": "gradient", "target": "y"}]})
        assert ["body", "compute", 0, "sources"] in [loc for loc, _ in schema.value.errors]


def test_sync_client_plot_and_a_passed_in_httpx_client(keyed_server: str) -> None:
    with httpx.Client(base_url=keyed_server, timeout=10) as http:
        with Client(http_client=http, api_key=API_KEY) as client:
            png = client.activation_plot(["sigmoid", "tanh"], start=-5, stop=5, num=33, theme="light")
            with pytest.raises(ValidationError) as caught:
                client.activation_plot("sigmoid,swoosh")
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
        assert width > 0 and height > 0
        assert caught.value.errors[0][0] == ["query", "activations"]
        # the caller's httpx client outlives ours
        assert http.get("/healthz").status_code == 200


class _ProxyErrorHandler(BaseHTTPRequestHandler):
    """What a reverse proxy in front of the service answers when the service is gone: an HTML 502."""

    def do_GET(self) -> None:
        body = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_non_json_error_body_raises_with_its_text() -> None:
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyErrorHandler)
    thread = threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with Client(f"http://127.0.0.1:{proxy.server_address[1]}") as client, pytest.raises(ServerError) as caught:
            client.info()
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert isinstance(caught.value, TapeserveError)
    assert caught.value.status == 502 and caught.value.problem is None and caught.value.type is None
    assert "Bad Gateway" in caught.value.text and "502" in str(caught.value)


# ------------------------------------------------------------------------------------------------ to_numpy
def test_to_numpy_nested_with_non_finite_strings() -> None:
    tensor = TensorOut(shape=[2, 3], dtype="float32", values=[[1.5, "NaN", "Infinity"], ["-Infinity", 0.0, -2.25]])
    array = to_numpy(tensor)
    assert array.dtype == np.float32 and array.shape == (2, 3)
    assert np.isnan(array[0, 1]) and array[0, 2] == np.inf and array[1, 0] == -np.inf
    np.testing.assert_array_equal(array[[0, 1, 1], [0, 1, 2]], [1.5, 0.0, -2.25])

    scalar = to_numpy({"shape": [], "dtype": "float64", "values": "NaN"})
    assert scalar.shape == () and np.isnan(scalar)
    assert to_numpy({"shape": [], "dtype": "int64", "values": 7}).item() == 7
    with pytest.raises(ValueError, match="shape"):
        to_numpy({"shape": [3], "dtype": "float32", "values": [[1.0, 2.0, 3.0]]})


def test_to_numpy_b64_little_endian() -> None:
    raw = struct.pack("<4f", 1.0, float("nan"), -float("inf"), 0.5)  # written independently of the client
    array = to_numpy({"shape": [2, 2], "dtype": "float32", "b64": base64.b64encode(raw).decode()})
    assert array.dtype == np.float32 and array.dtype.isnative and array.flags.writeable
    assert array[0, 0] == 1.0 and np.isnan(array[0, 1]) and array[1, 0] == -np.inf and array[1, 1] == 0.5

    ints = to_numpy({"shape": [3], "dtype": "int64", "b64": base64.b64encode(struct.pack("<3q", -1, 2, 3)).decode()})
    np.testing.assert_array_equal(ints, [-1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        to_numpy({"shape": [5], "dtype": "float32", "b64": base64.b64encode(raw).decode()})


def test_from_numpy_writes_the_b64_request_form() -> None:
    tensor = from_numpy(np.array([[1.0, -2.0]], dtype=np.float32))
    assert tensor["shape"] == [1, 2] and tensor["dtype"] == "float32"
    assert base64.b64decode(tensor["b64"]) == struct.pack("<2f", 1.0, -2.0)
    assert from_numpy(np.array([True, False]))["dtype"] == "float64"
    assert from_numpy(np.uint8(3))["shape"] == [] and from_numpy(np.uint8(3))["dtype"] == "int64"
