"""A second reference: the FastAPI + Keras service users write for a trained model, with no serving system.

It loads the same `.keras` file tapeserve serves (`BENCH_KERAS_MODEL`, the example model by default), and
answers `:predict` with `model(x, training=False)` and `:gradients` with the same call under a
`tf.GradientTape` that watches the inputs, returning `tape.gradient` of the chosen class's probability (or of
the output's sum) with respect to them. Bodies are simple pydantic models; the routes are plain `def`, which
FastAPI runs in its thread pool, as its documentation advises for blocking libraries. Served with the
reference floor's server settings.
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf
from fastapi import FastAPI
from pydantic import BaseModel

MODEL_PATH = os.environ.get("BENCH_KERAS_MODEL", "models/diabetes/1/model.keras")

app = FastAPI(title="FastAPI + Keras")
model = keras.saving.load_model(MODEL_PATH)


class PredictBody(BaseModel):
    instances: list[list[float]]


class GradientsBody(BaseModel):
    instances: list[list[float]]
    class_index: int | None = None


@app.post("/v1/models/diabetes:predict")
def predict(body: PredictBody) -> dict[str, list[list[float]]]:
    x = tf.constant(body.instances, dtype=tf.float32)
    probabilities = model(x, training=False)
    return {"predictions": probabilities.numpy().tolist()}


@app.post("/v1/models/diabetes:gradients")
def gradients(body: GradientsBody) -> dict[str, list[list[float]]]:
    x = tf.constant(body.instances, dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        probabilities = model(x, training=False)
        target = probabilities if body.class_index is None else probabilities[:, body.class_index]
    gradient = tape.gradient(target, x)
    return {"predictions": probabilities.numpy().tolist(), "input_gradients": gradient.numpy().tolist()}


@app.get("/readyz")
def readyz() -> dict[str, str]:
    return {"status": "ready"}
