"""/v1/activations over HTTP, against in-process TensorFlow tapes written here."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image

from schemas.activations import ActivationCatalogue, ActivationsResponse
from service import engines
from service.adapters.plots import PlotCache
from service.errors import DeadlineExceeded, QueueFull
from service.settings import Settings
from service.worker import Worker
from tests.conftest import make_client
from tests.engines import CALLS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED_FUNCTIONS = {
    "sigmoid": tf.math.sigmoid,
    "tanh": tf.math.tanh,
    "relu": lambda z: tf.maximum(tf.constant(0.0, z.dtype), z),
    "leaky_relu": lambda z: tf.maximum(0.01 * z, z),  # as the seed writes it: alpha exactly 0.01 in float64
}


def values(tensor: dict[str, Any]) -> np.ndarray:
    return np.asarray(tensor["values"], dtype=np.float64)


def post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/activations", json=body)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    ActivationsResponse.model_validate(document)
    return document


def tape_reference(z: np.ndarray, function: Any) -> tuple[np.ndarray, np.ndarray]:
    z_tensor = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z_tensor)
        activated = function(z_tensor)
    return activated.numpy(), tape.gradient(activated, z_tensor).numpy()


def problem(response: Any, status: int = 422) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    document: dict[str, Any] = response.json()
    return document


def locs(document: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in document.get("errors", [])]


def test_catalogue(client: TestClient) -> None:
    response = client.get("/v1/activations")
    assert response.status_code == 200
    catalogue = ActivationCatalogue.model_validate(response.json())
    by_name = {info.name: info for info in catalogue.activations}
    assert set(by_name) >= {"sigmoid", "tanh", "relu", "leaky_relu", "softmax", "gelu"}
    assert by_name["leaky_relu"].parameters == {"alpha": 0.01}
    assert by_name["sigmoid"].parameters == {}
    assert "σ(z)·(1 − σ(z))" in by_name["sigmoid"].derivative


def test_default_is_the_seeds_grid_and_matches_tensorflow(client: TestClient) -> None:
    document = post(client, {})
    z = tf.linspace(tf.constant(-10.0, tf.float64), 10.0, 129).numpy()
    assert document["dtype"] == "float64" and document["z"]["shape"] == [129]
    np.testing.assert_array_equal(values(document["z"]), z)
    assert [curve["name"] for curve in document["activations"]] == list(SEED_FUNCTIONS)
    for curve in document["activations"]:
        expected_values, expected_gradients = tape_reference(z, SEED_FUNCTIONS[curve["name"]])
        np.testing.assert_allclose(values(curve["values"]), expected_values, rtol=1e-15, atol=1e-300)
        np.testing.assert_allclose(values(curve["gradients"]), expected_gradients, rtol=1e-15, atol=1e-300)
    assert document["device"].endswith("device:CPU:0")


def test_sigmoid_summary_peaks_at_a_quarter_at_zero(client: TestClient) -> None:
    (sigmoid,) = post(client, {"activations": ["sigmoid"]})["activations"]
    summary = sigmoid["summary"]
    assert summary["max_abs_gradient"] == 0.25
    assert summary["argmax_z"] == 0.0
    assert summary["fraction_attenuating"] == 1.0
    assert summary["amplifies"] is False
    z = np.linspace(-10.0, 10.0, 129)
    sigma = 1.0 / (1.0 + np.exp(-z))
    assert summary["fraction_saturated"] == np.mean(sigma * (1 - sigma) < 1e-3)
    assert "0.25" in summary["verdict"] and "fourfold" in summary["verdict"]


def test_relu_takes_tensorflows_convention_at_the_kink(client: TestClient) -> None:
    relu, leaky = post(client, {"activations": ["relu", "leaky_relu"], "z": [-1.0, 0.0, 1.0]})["activations"]
    assert values(relu["gradients"]).tolist() == [0.0, 0.0, 1.0]
    assert values(leaky["gradients"]).tolist() == [0.01, 0.01, 1.0]


def test_alpha_sets_the_leaky_slope(client: TestClient) -> None:
    z = np.array([-4.0, -1.5, 0.0, 2.0])
    (leaky,) = post(client, {"activations": ["leaky_relu"], "z": z.tolist(), "alpha": 0.2})["activations"]
    expected_values, expected_gradients = tape_reference(z, lambda t: tf.maximum(0.2 * t, t))
    np.testing.assert_array_equal(values(leaky["values"]), expected_values)
    np.testing.assert_array_equal(values(leaky["gradients"]), expected_gradients)
    assert values(leaky["gradients"]).tolist() == [0.2, 0.2, 0.2, 1.0]
    assert "0.2 for z ≤ 0" in leaky["summary"]["verdict"]


def test_given_z_keeps_its_shape_and_softmax_acts_on_the_last_axis(client: TestClient) -> None:
    z = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    document = post(client, {"activations": ["softmax", "tanh"], "z": z.tolist(), "dtype": "float32"})
    softmax, tanh = document["activations"]
    assert document["z"]["shape"] == [2, 3] and document["z"]["dtype"] == "float32"
    assert softmax["values"]["shape"] == [2, 3] and softmax["values"]["dtype"] == "float32"
    expected_values, expected_gradients = tape_reference(z.astype(np.float32), tf.nn.softmax)
    np.testing.assert_allclose(values(softmax["values"]), expected_values, rtol=1e-6)
    np.testing.assert_allclose(values(softmax["gradients"]), expected_gradients, atol=1e-7)
    np.testing.assert_array_equal(
        values(tanh["gradients"]).astype(np.float32), tape_reference(z.astype(np.float32), tf.math.tanh)[1]
    )
    # 1 − tanh² cancels in float32 where tanh nears 1
    np.testing.assert_allclose(values(tanh["gradients"]), 1 - np.tanh(z) ** 2, rtol=1e-5, atol=1e-7)


def test_grid(client: TestClient) -> None:
    document = post(client, {"activations": ["tanh"], "grid": {"start": -2, "stop": 2, "num": 5}})
    assert values(document["z"]).tolist() == [-2.0, -1.0, 0.0, 1.0, 2.0]
    np.testing.assert_allclose(values(document["activations"][0]["values"]), np.tanh([-2.0, -1.0, 0.0, 1.0, 2.0]))


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"activations": ["sigmoid", "swishy"]}, ["body", "activations", 1]),
        ({"activations": ["relu", "relu"]}, ["body", "activations"]),
        ({"activations": []}, ["body", "activations"]),
        ({"z": [1.0], "grid": {"num": 5}}, ["body"]),
        ({"grid": {"start": 1, "stop": -1}}, ["body", "grid", "stop"]),
        ({"grid": {"num": 1}}, ["body", "grid", "num"]),
        ({"grid": {"num": 100_002}}, ["body", "grid", "num"]),
        ({"z": [1.0, "x"]}, ["body", "z", 1]),
        ({"z": {"shape": [100_002], "data": [0.0] * 100_002}}, ["body", "z"]),
        ({"alpha": "0.1x"}, ["body", "alpha"]),
        ({"dtype": "float16"}, ["body", "dtype"]),
        ({"grid": {"start": -1e39, "stop": 0}, "dtype": "float32"}, ["body"]),
    ],
)
def test_bad_requests_name_the_field(client: TestClient, body: dict[str, Any], loc: list[Any]) -> None:
    document = problem(client.post("/v1/activations", json=body))
    assert any(found[: len(loc)] == loc for found in locs(document)), locs(document)


@pytest.fixture(scope="module")
def small_client() -> Iterator[TestClient]:
    with make_client(max_elements=100, warmup=False) as test_client:
        yield test_client


def test_points_are_bounded_by_the_element_limit(small_client: TestClient) -> None:
    document = problem(small_client.post("/v1/activations", json={"grid": {"num": 101}}))
    assert document["type"].endswith("/limit-exceeded") and ["body", "grid", "num"] in locs(document)
    document = problem(small_client.get("/v1/activations/plot.png?num=101"))
    assert document["type"].endswith("/limit-exceeded") and ["query", "num"] in locs(document)
    assert small_client.post("/v1/activations", json={"grid": {"num": 100}}).status_code == 200


# ------------------------------------------------------------------------------------------ the plot


def pixels(png: bytes) -> np.ndarray:
    with Image.open(BytesIO(png)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_plot_is_a_real_png_in_both_themes(client: TestClient) -> None:
    dark = client.get("/v1/activations/plot.png")
    light = client.get("/v1/activations/plot.png?theme=light")
    for response in (dark, light):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(PNG_SIGNATURE)
        assert 20_000 < len(response.content) < 400_000
        assert pixels(response.content).shape == (800, 800, 3)
    assert dark.content != light.content
    assert pixels(dark.content).mean() < pixels(light.content).mean()


def test_plot_panels_follow_the_query(client: TestClient) -> None:
    one = client.get("/v1/activations/plot.png?activations=tanh&start=-3&stop=3&num=61&theme=light")
    assert one.status_code == 200 and pixels(one.content).shape == (400, 400, 3)
    five = client.get("/v1/activations/plot.png?activations=sigmoid,tanh,relu,leaky_relu,gelu&alpha=0.2")
    assert five.status_code == 200 and pixels(five.content).shape == (800, 1200, 3)


def test_identical_queries_are_served_from_the_cache(client: TestClient) -> None:
    url = "/v1/activations/plot.png?activations=sigmoid,relu&num=33&theme=light"
    first = client.get(url)
    cache: PlotCache = client.app.state.plot_cache  # type: ignore[attr-defined]
    renders = cache.renders
    # spelled differently, the same figure: spaces, and alpha without leaky_relu
    second = client.get("/v1/activations/plot.png?theme=light&num=33&activations=sigmoid,%20relu&alpha=0.3")
    assert second.status_code == 200 and second.content == first.content
    assert cache.renders == renders
    assert first.headers["etag"] == second.headers["etag"]
    unchanged = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert unchanged.status_code == 304 and unchanged.content == b""


@pytest.mark.parametrize(
    ("query", "loc"),
    [
        ("activations=sigmoid,softmaxx", ["query", "activations"]),
        ("activations=relu,relu", ["query", "activations"]),
        ("activations=", ["query", "activations"]),
        ("num=1", ["query", "num"]),
        ("num=100002", ["query", "num"]),
        ("num=12.5", ["query", "num"]),
        ("start=3&stop=3", ["query", "stop"]),
        ("start=-inf", ["query", "start"]),
        ("stop=nan", ["query", "stop"]),
        ("start=-1e308&stop=1e308", ["query", "stop"]),
        ("theme=sepia", ["query", "theme"]),
        ("alpha=inf", ["query", "alpha"]),
        ("colour=red", ["query", "colour"]),
    ],
)
def test_plot_query_limits(client: TestClient, query: str, loc: list[Any]) -> None:
    document = problem(client.get(f"/v1/activations/plot.png?{query}"))
    assert loc in locs(document), locs(document)


def test_renderer_runs_in_its_own_thread_and_is_bounded() -> None:
    # the service's own lanes and engines, plus a calls engine in the plots lane to hold it busy on purpose
    worker = Worker(Settings(warmup=False))
    engines.install(worker)
    worker.register("plot calls", CALLS, lane=engines.PLOTS_LANE)
    cache = PlotCache(size=2)
    release = threading.Event()

    def thread_name() -> bytes:
        return threading.current_thread().name.encode()

    def blocked() -> bytes:
        release.wait(5)
        return b"late"

    async def scenario() -> None:
        await worker.start()
        png, etag = cache.store("a", await worker.run("plot calls", thread_name, deadline=time.monotonic() + 5))
        assert png.startswith(b"tapeserve-plot") and etag.startswith('"')
        assert cache.get("a") == (png, etag)
        with pytest.raises(DeadlineExceeded):
            await worker.run("plot calls", blocked, deadline=time.monotonic() + 0.05)
        # the abandoned render still holds the lane: what waits behind it fills the queue
        waiting = [
            asyncio.ensure_future(worker.run("plot calls", thread_name, deadline=time.monotonic() + 5))
            for _ in range(engines.PLOT_QUEUE_LIMIT)
        ]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await worker.run("plot calls", thread_name, deadline=time.monotonic() + 5)
        release.set()
        assert all(png.startswith(b"tapeserve-plot") for png in await asyncio.gather(*waiting))
        cache.store("c", await worker.run("plot calls", thread_name, deadline=time.monotonic() + 5))
        assert cache.get("c") is not None
        await worker.stop()

    asyncio.run(scenario())
