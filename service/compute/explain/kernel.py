"""The attribution graph over any differentiable callable F, for every instance and step at once.

`attribute` is called inside a compiled function (a network's or a served model's). It evaluates F's
gradients at all N × m points b + αₖ(x − b) (+ noise) of R requests as one batch: F sees (R, N·m, ...)
rows, and each selected output depends on its own row only, so the gradient of their sum is every row's
gradient (captum's trick; no loop over instances or steps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from service.vocabulary import METHODS

Forward = Callable[[Sequence[Any]], Any]
"""F: one (R, P, *shape) tensor per input -> (R, P, units) outputs."""

INTEGRATED = "integrated_gradients"
"""The method whose answer has the completeness terms (its baseline's prediction, its convergence delta)."""


def _points(x: Any, start: Any, alphas: Any, noise: Any | None) -> Any:
    """(R, N, *s) -> (R, N·m, *s): b + αₖ(x − b) (+ noise), instance-major (instance n's m points together)."""
    rank = len(x.shape) - 2
    alpha = tf.reshape(alphas, (1, 1, -1) + (1,) * rank)
    start_ = tf.expand_dims(start, 2)
    points = start_ + alpha * (tf.expand_dims(x, 2) - start_)
    if noise is not None:
        points = points + noise
    shape = tf.shape(x)
    return tf.reshape(points, tf.concat([shape[:1], [-1], shape[2:]], axis=0))


def _selected(outputs: Any, classes: Any) -> Any:
    """(R, P, units), (R, P) -> (R, P): each row's output of its class."""
    return tf.gather(outputs, classes, axis=2, batch_dims=2)


def attribute(
    forward: Forward,
    inputs: Sequence[Any],
    starts: Sequence[Any],
    *,
    alphas: Any,
    weights: Any,
    noise: Sequence[Any] | None,
    class_index: Any,
    method: str | Any,
    absolute: bool | Any,
) -> dict[str, Any]:
    """Attributions of R requests × N instances, F's outputs and the completeness terms.

    inputs, starts: (R, N, *shape) per input; alphas, weights: (m,); noise: (R, N, m, *shape) per input (or
    any shape that broadcasts to it) or None; class_index: (R, N) int32, −1 for the predicted class. Returns
    `predictions` (R, N, units), `classes` (R, N), `prediction` F(x) (R, N), `attributions_<i>` (R, N, *shape)
    per input, and for integrated gradients `baseline_prediction` F(b) and `convergence_delta`
    Σ attributions − (F(x) − F(b)).

    `method` and `absolute` are either a method's name and a bool, fixed when the graph is built, or scalar
    tensors, chosen at each call: an int32 index into `METHODS` and a bool. Then one graph serves every
    method, and the two completeness terms are always returned (zeros unless the method integrates).
    """
    predictions = forward(inputs)
    units = predictions.shape[-1]
    predicted = tf.argmax(predictions, axis=-1, output_type=tf.int32) if units != 1 else tf.zeros_like(class_index)
    classes = tf.where(class_index >= 0, class_index, predicted)
    steps = tf.shape(alphas)[0]
    points = [
        _points(x, b, alphas, None if noise is None else noise[i])
        for i, (x, b) in enumerate(zip(inputs, starts, strict=True))
    ]
    with tf.GradientTape() as tape:
        tape.watch(points)
        evaluated = _selected(forward(points), tf.repeat(classes, steps, axis=1))
    gradients = tape.gradient(evaluated, points, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    out: dict[str, Any] = {
        "predictions": predictions,
        "classes": classes,
        "prediction": _selected(predictions, classes),
    }
    total = tf.zeros_like(out["prediction"])
    for i, (x, b, gradient) in enumerate(zip(inputs, starts, gradients, strict=True)):
        rank = len(x.shape) - 2
        per_point = tf.reshape(gradient, tf.concat([tf.shape(x)[:2], [steps], tf.shape(x)[2:]], axis=0))
        mean = tf.reduce_sum(per_point * tf.reshape(weights, (1, 1, -1) + (1,) * rank), axis=2)
        attributions = _combined(method, absolute, x, b, mean)
        out[f"attributions_{i}"] = attributions
        total += tf.reduce_sum(tf.reshape(attributions, tf.concat([tf.shape(x)[:2], [-1]], axis=0)), axis=2)
    baseline = _baseline(method, forward, starts, classes, out["prediction"])
    if baseline is not None:
        out["baseline_prediction"] = baseline
        out["convergence_delta"] = total - (out["prediction"] - baseline)
    return out


def _baseline(method: str | Any, forward: Forward, starts: Sequence[Any], classes: Any, prediction: Any) -> Any:
    """F(b) of each instance's class where the method integrates: None for a fixed method that does not; for
    a chosen one, under a `tf.cond` (zeros like `prediction` otherwise), so that the forward pass of the
    baselines runs only when it is needed."""
    if isinstance(method, str):
        return _selected(forward(starts), classes) if method == INTEGRATED else None
    return tf.cond(
        tf.equal(method, METHODS.index(INTEGRATED)),
        lambda: _selected(forward(starts), classes),
        lambda: tf.zeros_like(prediction),
    )


def _combined(method: str | Any, absolute: bool | Any, x: Any, b: Any, mean: Any) -> Any:
    """One input's attributions from its (weighted mean) gradient `mean`, for a fixed or a chosen method."""
    if not isinstance(method, str):
        branches = [lambda name=name: _combined(name, absolute, x, b, mean) for name in METHODS]
        return tf.switch_case(method, branches)
    if method == INTEGRATED:
        return (x - b) * mean
    if method == "gradient_x_input":
        return x * mean
    # saliency, smoothgrad: the (mean) gradient itself
    if isinstance(absolute, bool):
        return tf.abs(mean) if absolute else mean
    return tf.where(absolute, tf.abs(mean), mean)
