"""Loading served models: real Keras files and SavedModels saved by TensorFlow here, loaded defensively, and
their answers against the same models in process."""

from __future__ import annotations

import pathlib
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from service.compute.models.loading import load_version
from service.compute.models.spec import UNSAFE_OPS, LoadRefused

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "models" / "diabetes" / "1"
SEED_PATIENT = np.array([[76.0, 120.0, 37.5]], dtype=np.float32)


def _version(root: pathlib.Path) -> pathlib.Path:
    folder = root / "model" / "1"
    folder.mkdir(parents=True)
    return folder


def test_the_example_serves_vitals_to_probabilities() -> None:
    served = load_version(EXAMPLE)
    signature = served.signatures["serving_default"]
    assert list(signature.inputs) == ["vitals"]
    assert signature.inputs["vitals"].shape == (None, 3)
    assert signature.inputs["vitals"].dtype == "float32"
    assert list(signature.outputs) == ["probabilities"]
    assert signature.outputs["probabilities"].shape == (None, 2)
    probabilities = served.predict("serving_default", {"vitals": SEED_PATIENT})["probabilities"]
    reference = keras.saving.load_model(EXAMPLE / "model.keras")(SEED_PATIENT, training=False)
    np.testing.assert_allclose(probabilities, reference.numpy(), rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), [1.0], rtol=1e-6)
    assert served.variable_names["serving_default"] == [
        "hidden/kernel",
        "hidden/bias",
        "probabilities/kernel",
        "probabilities/bias",
    ]


def test_a_sequential_file_answers_as_keras_does(tmp_path: pathlib.Path) -> None:
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Dense(3, activation="tanh", name="out")])
    model.save(_version(tmp_path) / "model.keras")
    served = load_version(tmp_path / "model" / "1")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    answer = served.predict("serving_default", {"x": x})
    assert list(answer) == ["out"]
    np.testing.assert_allclose(answer["out"], model(x, training=False).numpy(), rtol=1e-6)


def test_a_functional_model_with_two_named_inputs_and_two_outputs(tmp_path: pathlib.Path) -> None:
    keras.utils.set_random_seed(2)
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], [keras.layers.Dense(1, name="risk")(joined), keras.layers.Dense(2, name="scores")(b)])
    model.save(_version(tmp_path) / "model.keras")
    served = load_version(tmp_path / "model" / "1")
    signature = served.signatures["serving_default"]
    assert set(signature.inputs) == {"a", "b"}
    assert list(signature.outputs) == ["risk", "scores"]
    rng = np.random.default_rng(1)
    xa, xb = rng.normal(size=(4, 2)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    answer = served.predict("serving_default", {"b": xb, "a": xa})
    risk, scores = model([xa, xb], training=False)
    np.testing.assert_allclose(answer["risk"], risk.numpy(), rtol=1e-6)
    np.testing.assert_allclose(answer["scores"], scores.numpy(), rtol=1e-6)


def _module(function: Any, spec: tf.TensorSpec, **variables: tf.Variable) -> Any:
    """A tf.Module whose `serve` is `function(module, x)` compiled for `spec` (how users save a custom signature)."""
    module = tf.Module()
    for name, variable in variables.items():
        setattr(module, name, variable)
    module.serve = tf.function(lambda x: function(module, x), input_signature=[spec])
    return module


def _quadratic(module: Any, x: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"y": tf.matmul(x * x, module.w), "total": tf.reduce_sum(x, axis=1)}


def quadratic() -> Any:
    weights = tf.Variable(np.array([[1.0, -2.0], [0.5, 3.0]]), name="w")
    return _module(_quadratic, tf.TensorSpec((None, 2), tf.float64, name="x"), w=weights)


def test_a_float64_saved_model_with_a_custom_signature(tmp_path: pathlib.Path) -> None:
    module = quadratic()
    tf.saved_model.save(module, str(_version(tmp_path)), signatures={"score": module.serve})
    served = load_version(tmp_path / "model" / "1")
    signature = served.signatures["score"]
    assert signature.inputs["x"].dtype == "float64"
    assert signature.inputs["x"].shape == (None, 2)
    assert set(signature.outputs) == {"y", "total"}
    x = np.array([[1.0, 2.0], [-0.5, 0.25]])
    answer = served.predict("score", {"x": x})
    assert answer["y"].dtype == np.float64
    np.testing.assert_allclose(answer["y"], (x * x) @ module.w.numpy(), rtol=1e-15)
    np.testing.assert_allclose(answer["total"], x.sum(axis=1), rtol=1e-15)
    assert len(served.variables["score"]) == 1


def _reads_a_file(module: Any, x: tf.Tensor) -> dict[str, tf.Tensor]:
    secret = tf.strings.length(tf.io.read_file("/etc/hostname"))
    return {"y": x + tf.cast(secret, tf.float32)}


def _prints_in_a_branch(module: Any, x: tf.Tensor) -> dict[str, tf.Tensor]:
    def loud() -> tf.Tensor:
        tf.print("the input is", x)
        return x * 2.0

    return {"y": tf.cond(tf.reduce_sum(x) > 0, loud, lambda: x)}


@pytest.mark.parametrize(("function", "op"), [(_reads_a_file, "ReadFile"), (_prints_in_a_branch, "PrintV2")])
def test_ops_that_reach_outside_are_refused_and_named(tmp_path: pathlib.Path, function: Any, op: str) -> None:
    module = _module(function, tf.TensorSpec((None, 1), tf.float32, name="x"))
    tf.saved_model.save(module, str(_version(tmp_path)), signatures={"serving_default": module.serve})
    with pytest.raises(LoadRefused) as refused:
        load_version(tmp_path / "model" / "1")
    assert refused.value.code == "FAILED_PRECONDITION"
    assert op in refused.value.message
    assert op in UNSAFE_OPS
    allowed = load_version(tmp_path / "model" / "1", allow_unsafe_ops=True)
    assert set(allowed.signatures["serving_default"].outputs) == {"y"}


def test_the_saver_s_own_file_ops_are_not_the_serving_function_s(tmp_path: pathlib.Path) -> None:
    # every SavedModel holds SaveV2/RestoreV2 for its checkpoint; only what the signatures run is scanned
    module = quadratic()
    tf.saved_model.save(module, str(_version(tmp_path)), signatures={"serving_default": module.serve})
    assert "x" in load_version(tmp_path / "model" / "1").signatures["serving_default"].inputs


def test_safe_mode_refuses_a_lambda_layer(tmp_path: pathlib.Path) -> None:
    model = keras.Sequential([keras.Input((2,), name="x"), keras.layers.Lambda(lambda t: t * 2.0)])
    model.save(_version(tmp_path) / "model.keras")
    with pytest.raises(LoadRefused) as refused:
        load_version(tmp_path / "model" / "1")
    assert refused.value.code == "INVALID_ARGUMENT"
    assert "safe_mode" in refused.value.message or "Lambda" in refused.value.message


def _lengths(module: Any, text: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"length": tf.cast(tf.strings.length(text), tf.float32)}


def test_a_string_input_is_refused_with_a_clear_status(tmp_path: pathlib.Path) -> None:
    module = _module(_lengths, tf.TensorSpec((None,), tf.string, name="text"))
    tf.saved_model.save(module, str(_version(tmp_path)), signatures={"serving_default": module.serve})
    with pytest.raises(LoadRefused) as refused:
        load_version(tmp_path / "model" / "1")
    assert refused.value.code == "FAILED_PRECONDITION"
    assert "'text' is a string tensor" in refused.value.message


def test_an_unreadable_file_and_an_empty_folder(tmp_path: pathlib.Path) -> None:
    folder = _version(tmp_path)
    with pytest.raises(LoadRefused) as empty:
        load_version(folder)
    assert empty.value.code == "NOT_FOUND"
    (folder / "model.keras").write_bytes(b"not a zip file")
    with pytest.raises(LoadRefused) as broken:
        load_version(folder)
    assert broken.value.code == "INVALID_ARGUMENT"
    assert broken.value.message.startswith("cannot load 1:")
