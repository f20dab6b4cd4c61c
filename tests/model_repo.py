"""Real models saved by TensorFlow into a model repository (TF Serving's layout) for the served-model tests,
and the set-up those tests share: a repository folder, an app serving it, answers read back."""

from __future__ import annotations

import base64
import pathlib
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient

from tests.conftest import make_client, wait_ready


def new_repository(tmp_path_factory: pytest.TempPathFactory, label: str) -> pathlib.Path:
    """An empty repository folder of its own."""
    root = tmp_path_factory.mktemp(label) / "models"
    root.mkdir()
    return root


def two_and_quad(tmp_path_factory: pytest.TempPathFactory, label: str) -> pathlib.Path:
    """A repository with the two-headed Keras model `two` and the float64 SavedModel `quad`."""
    root = new_repository(tmp_path_factory, label)
    save_keras(two_headed(), root, "two", 1)
    save_quadratic(root)
    return root


@contextmanager
def serving(root: pathlib.Path, **overrides: Any) -> Iterator[TestClient]:
    """An app serving `root` (read once at start, no HTTP warm-up), ready once its models are loaded."""
    with make_client(model_dir=str(root), model_poll_s=0, warmup=False, **overrides) as client:
        wait_ready(client)
        yield client


def load_keras(root: pathlib.Path, name: str, version: int = 1) -> keras.Model:
    """The repository's Keras file loaded in process: the reference the answers are checked against."""
    return keras.saving.load_model(root / name / str(version) / "model.keras")


def post_ok(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """The 200 answer's document."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    document: dict[str, Any] = response.json()
    return document


def values(tensor: dict[str, Any]) -> np.ndarray:
    """A response tensor's values in its dtype, nested or base64."""
    if "b64" in tensor:
        raw = np.frombuffer(base64.b64decode(tensor["b64"]), dtype=np.dtype(tensor["dtype"]).newbyteorder("<"))
        return raw.reshape(tensor["shape"])
    return np.asarray(tensor["values"], dtype=tensor["dtype"])


def version_folder(root: pathlib.Path, name: str, version: int) -> pathlib.Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sequential(seed: int) -> keras.Model:
    """x (4,) -> Dense(3, tanh) `out`; the seed picks the weights, so versions answer differently."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, activation="tanh", name="out")])


def two_headed(seed: int = 3) -> keras.Model:
    """Inputs a (2,), b (3,); outputs risk (1,) sigmoid and scores (2,) softmax."""
    keras.utils.set_random_seed(seed)
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(keras.layers.Concatenate()([a, b]))
    risk = keras.layers.Dense(1, activation="sigmoid", name="risk")(hidden)
    scores = keras.layers.Dense(2, activation="softmax", name="scores")(hidden)
    return keras.Model([a, b], [risk, scores])


def save_keras(model: keras.Model, root: pathlib.Path, name: str, version: int) -> pathlib.Path:
    """Saved beside the repository first and moved in whole, as an operator would publish it."""
    staging = root.parent / f".staging-{name}-{version}"
    staging.mkdir(parents=True, exist_ok=True)
    model.save(staging / "model.keras")
    target = root / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(staging), str(target))
    return target


QUADRATIC_W = np.array([[1.0, -2.0], [0.5, 3.0]])


def quadratic_module() -> Any:
    """A tf.Module in float64 with a custom signature `score`: x (-1, 2) -> y = (x*x) @ w, total = sum(x, 1)."""
    module = tf.Module()
    module.w = tf.Variable(QUADRATIC_W, name="w")

    def score(x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": tf.matmul(x * x, module.w), "total": tf.reduce_sum(x, axis=1)}

    module.score = tf.function(score, input_signature=[tf.TensorSpec((None, 2), tf.float64, name="x")])
    return module


def save_quadratic(root: pathlib.Path, name: str = "quad", version: int = 1) -> pathlib.Path:
    module = quadratic_module()
    folder = root / name / str(version)
    tf.saved_model.save(module, str(folder), signatures={"score": module.score})
    return folder


def save_counter(root: pathlib.Path, name: str = "counter", version: int = 1) -> pathlib.Path:
    """A SavedModel with a float32 and an int64 input: y = x * 2, count = steps + 1."""
    module = tf.Module()

    def serve(x: tf.Tensor, steps: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * 2.0, "count": steps + 1}

    module.serve = tf.function(
        serve,
        input_signature=[
            tf.TensorSpec((None, 2), tf.float32, name="x"),
            tf.TensorSpec((None,), tf.int64, name="steps"),
        ],
    )
    folder = root / name / str(version)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def save_file_reader(root: pathlib.Path, name: str = "unsafe", version: int = 1) -> pathlib.Path:
    """A SavedModel whose serving function reads a file (refused unless unsafe ops are allowed)."""
    module = tf.Module()

    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
        return {"y": x + tf.cast(secret, tf.float32)}

    module.serve = tf.function(serve, input_signature=[tf.TensorSpec((None, 1), tf.float32, name="x")])
    folder = root / name / str(version)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


def save_broken(root: pathlib.Path, name: str, version: int) -> pathlib.Path:
    """A version folder whose model.keras is not a Keras file."""
    folder = version_folder(root, name, version)
    (folder / "model.keras").write_bytes(b"this is not a zip archive")
    return folder
