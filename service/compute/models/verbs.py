"""`:gradients` and `:jacobian` of a served signature: what `tf.GradientTape` gives in process on the same
model and batch. One compiled function per version, signature, verb and options (kept in the version's
`functions`, so they go when the version goes); every function takes any batch size."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.errors import InvalidInput, LimitExceeded
from service.compute.models.loading import ServedModel
from service.compute.models.spec import FLOAT_DTYPES, GradientRequest, Loss, Reduction

__all__ = ["GradientRequest", "GradientResult", "gradients", "jacobian"]


@dataclass
class GradientResult:
    outputs: dict[str, np.ndarray]
    loss: np.ndarray | None
    input_gradients: dict[str, np.ndarray | None]
    variable_gradients: list[tuple[str, np.ndarray | None]] = field(default_factory=list)


def gradients(
    served: ServedModel,
    signature: str,
    inputs: dict[str, np.ndarray],
    request: GradientRequest,
    extra: np.ndarray | None = None,
) -> GradientResult:
    """`tape.gradient(target, sources)`; `extra` is the class index per instance (int32), the output
    gradients, or the loss's targets shaped like the output, as `request.kind` needs."""
    info = served.signatures[signature]
    dtype = info.outputs[request.output].dtype
    if dtype not in FLOAT_DTYPES:
        raise InvalidInput(f"output {request.output!r} is {dtype}, which has no gradient", ("output",))
    key = ("gradients", signature, request)
    function = served.functions.get(key)
    if function is None:
        function = served.functions[key] = tf.function(
            _gradient_function(served, signature, request), reduce_retracing=True
        )
    float_sources = [name for name in request.sources if info.inputs[name].dtype in FLOAT_DTYPES]
    tensors = {name: tf.constant(value) for name, value in inputs.items()}
    outputs, loss, found = function(tensors, tf.constant(0) if extra is None else tf.constant(extra))
    grads = [None if grad is None else grad.numpy() for grad in found]
    by_source = dict(zip(float_sources, grads, strict=False))
    input_gradients: dict[str, np.ndarray | None] = {}
    for name in request.sources:
        # an integer input has no gradient: the tape does not watch it (zeros when asked for zeros)
        grad = by_source.get(name)
        if grad is None and request.unconnected == "zero":
            grad = np.zeros(inputs[name].shape, dtype=inputs[name].dtype)
        input_gradients[name] = grad
    names = served.variable_names[signature] if request.variables else []
    return GradientResult(
        outputs={name: value.numpy() for name, value in outputs.items()},
        loss=None if loss is None else loss.numpy(),
        input_gradients=input_gradients,
        variable_gradients=list(zip(names, grads[len(float_sources) :], strict=True)),
    )


def _gradient_function(served: ServedModel, signature: str, request: GradientRequest) -> Any:
    call = served.calls[signature]
    info = served.signatures[signature]
    float_sources = [name for name in request.sources if info.inputs[name].dtype in FLOAT_DTYPES]
    variables = served.variables[signature] if request.variables else []
    unconnected = tf.UnconnectedGradients.ZERO if request.unconnected == "zero" else tf.UnconnectedGradients.NONE

    def compute(inputs: dict[str, tf.Tensor], extra: tf.Tensor) -> Any:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([inputs[name] for name in float_sources])
            tape.watch(variables)
            outputs = call(inputs)
            output = outputs[request.output]
            loss = None
            target = output
            if request.kind == "class_index":
                target = output * _class_mask(extra, output)
            elif request.kind == "loss":
                per_instance = _per_instance_loss(request.loss, output, tf.cast(extra, output.dtype))
                loss = _reduce(request.reduction, per_instance)
                target = loss
        cotangent = tf.cast(extra, output.dtype) if request.kind == "output_gradients" else None
        sources = [inputs[name] for name in float_sources] + list(variables)
        grads = tape.gradient(target, sources, output_gradients=cotangent, unconnected_gradients=unconnected)
        return outputs, loss, grads

    return compute


def _class_mask(class_index: tf.Tensor, output: tf.Tensor) -> tf.Tensor:
    """One-hot of each instance's class on the last axis, broadcast over the output's middle axes."""
    mask = tf.one_hot(class_index, tf.shape(output)[-1], dtype=output.dtype)
    middle = tf.ones([tf.rank(output) - 2], dtype=tf.int32)
    return tf.reshape(mask, tf.concat([tf.shape(mask)[:1], middle, tf.shape(mask)[1:]], axis=0))


def _per_instance_loss(loss: Loss, predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """(batch, ..., k) -> (batch,), on the output as is (no clipping, no logits), as §2's losses are."""
    if loss == "cross_entropy":
        per = -tf.reduce_sum(tf.math.xlogy(targets, predictions), axis=-1)
    elif loss == "binary_cross_entropy":
        per = -tf.reduce_mean(tf.math.xlogy(targets, predictions) + tf.math.xlogy(1 - targets, 1 - predictions), -1)
    else:
        per = tf.reduce_mean(tf.math.squared_difference(predictions, targets), axis=-1)
    return tf.reduce_sum(tf.reshape(per, [tf.shape(per)[0], -1]), axis=1)


def _reduce(reduction: Reduction, per_instance: tf.Tensor) -> tf.Tensor:
    if reduction == "sum":
        return tf.reduce_sum(per_instance)
    if reduction == "mean":
        return tf.reduce_mean(per_instance)
    return per_instance


def jacobian(
    served: ServedModel,
    signature: str,
    inputs: dict[str, np.ndarray],
    output: str,
    source: str,
    *,
    class_index: np.ndarray | None,
    max_elements: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(outputs, the tape's `batch_jacobian` of `output` w.r.t. input `source`): (batch, *output, *input),
    or (batch, *input) with a class index per instance; refused before it is computed when too large."""
    info = served.signatures[signature]
    for name, dtype in ((output, info.outputs[output].dtype), (source, info.inputs[source].dtype)):
        if dtype not in FLOAT_DTYPES:
            where = "output" if name == output else "input"
            raise InvalidInput(f"{name!r} is {dtype}, which has no Jacobian", (where,))
    batch = inputs[source].shape[0]
    output_shape = info.outputs[output].shape
    if output_shape is None or None in output_shape[1:]:
        output_shape = served.predict(signature, inputs)[output].shape
    per_output = 1 if class_index is not None else math.prod(output_shape[1:])  # type: ignore[arg-type]
    elements = batch * per_output * math.prod(inputs[source].shape[1:])
    if elements > max_elements:
        raise LimitExceeded(
            f"the Jacobian would hold {elements} elements, more than {max_elements} (TAPESERVE_MAX_ELEMENTS)"
        )
    key = ("jacobian", signature, output, source, class_index is not None)
    function = served.functions.get(key)
    if function is None:
        function = served.functions[key] = tf.function(
            _jacobian_function(served, signature, output, source, class_index is not None), reduce_retracing=True
        )
    tensors = {name: tf.constant(value) for name, value in inputs.items()}
    extra = tf.constant(0) if class_index is None else tf.constant(class_index)
    outputs, found = function(tensors, extra)
    return {name: value.numpy() for name, value in outputs.items()}, found.numpy()


def _jacobian_function(served: ServedModel, signature: str, output: str, source: str, by_class: bool) -> Any:
    call = served.calls[signature]

    def compute(inputs: dict[str, tf.Tensor], class_index: tf.Tensor) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(inputs[source])
            outputs = call(inputs)
            target = outputs[output]
            if by_class:
                target = target * _class_mask(class_index, target)
        if by_class:
            found = tape.gradient(target, inputs[source], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        else:
            found = tape.batch_jacobian(target, inputs[source], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return outputs, found

    return compute
