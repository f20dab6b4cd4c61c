"""Real models saved by TensorFlow into a model repository (TF Serving's layout) for the served-model tests."""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

import keras
import numpy as np
import tensorflow as tf


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
