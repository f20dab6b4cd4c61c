"""Shared fixtures. TensorFlow is split into two logical CPUs before anything initialises it, so the
pinning tests can pin to /CPU:1 on a machine without a GPU."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


def make_client(**overrides: object) -> TestClient:
    """A client for an app with test settings (the caller enters it to run the lifespan)."""
    settings = Settings(**{"cpu_logical_devices": 2, **overrides})  # type: ignore[arg-type]
    return TestClient(create_app(settings), raise_server_exceptions=False)


def wait_ready(client: TestClient, seconds: float = 60.0) -> None:
    """Until /readyz answers 200: the worker is warm and the service's own warm-up requests are done."""
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the service never became ready"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    with make_client() as test_client:
        wait_ready(test_client)
        yield test_client
