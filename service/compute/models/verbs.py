"""`:gradients` and `:jacobian` of a served signature: what `tf.GradientTape` gives in process on the same
model and batch, for one request or for several whose instances are stacked (`merged_*`). The graphs run
through the version's compiled functions (`compiled.run_graph`: bucketed batch sizes where instances are
independent), one per verb and options: every target but a loss is a cotangent of the output, so
`output`, `class_index` and `output_gradients` share one function."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.errors import InvalidInput, LimitExceeded
from service.compute.models.compiled import run_graph
from service.compute.models.engine import Stacked
from service.compute.models.loading import ServedModel
from service.compute.models.spec import FLOAT_DTYPES, GradientRequest, Loss, Reduction

__all__ = ["GradientRequest", "GradientResult", "gradients", "jacobian", "merged_gradients", "merged_jacobians"]


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
    rows = served.rows(signature, inputs)
    stacked = Stacked(inputs, {} if extra is None else {"extra": extra}, None if rows is None else (rows,))
    return merged_gradients(served, signature, request, stacked)[0]


def merged_gradients(
    served: ServedModel, signature: str, request: GradientRequest, stacked: Stacked
) -> list[GradientResult]:
    """`gradients` of requests whose instances were stacked, `stacked.per_instance["extra"]` their extras.
    Each request's answer is its own: the target is a sum over instances, and a loss's sum or mean is taken
    over the request's own instances; trainable variables' gradients sum over every stacked instance, so a
    request asking for them is never stacked with another."""
    info = served.signatures[signature]
    dtype = info.outputs[request.output].dtype
    if dtype not in FLOAT_DTYPES:
        raise InvalidInput(f"output {request.output!r} is {dtype}, which has no gradient", ("output",))
    if stacked.sizes is not None and len(stacked.sizes) > 1 and request.variables:
        raise ValueError("requests for variable gradients are not stacked")
    extras = _gradient_extras(served, signature, request, stacked)
    # every target but a loss is a cotangent of the output: one function for all of them
    family = replace(request, kind="output", reduction="sum") if request.kind != "loss" else request
    if stacked.sizes is not None:
        family = replace(family, reduction="sum")  # reductions happen outside the bucketed graph
    per_row, whole = run_graph(
        served.functions,
        ("gradients", signature, family),
        lambda padded: _gradient_graph(served, signature, family, padded),
        inputs=stacked.inputs,
        extras=extras,
        rows=stacked.rows,
        xla=served.xla(signature),
    )
    found = {**per_row, **whole}
    names = served.variable_names[signature] if request.variables else []
    variable_gradients = [(name, found.get(f"variable/{index}")) for index, name in enumerate(names)]
    results = []
    for part in stacked.parts():
        input_gradients: dict[str, np.ndarray | None] = {}
        for name in request.sources:
            # an integer input has no gradient: the tape does not watch it (zeros when asked for zeros)
            grad = found.get(f"gradient/{name}")
            if grad is None and request.unconnected == "zero":
                grad = np.zeros_like(stacked.inputs[name])
            input_gradients[name] = None if grad is None else grad[part]
        results.append(
            GradientResult(
                outputs={
                    key[len("output/") :]: value[part] for key, value in found.items() if key.startswith("output/")
                },
                loss=_request_loss(found.get("loss"), request.reduction, part, stacked.sizes is not None),
                input_gradients=input_gradients,
                variable_gradients=variable_gradients,
            )
        )
    return results


def _request_loss(loss: np.ndarray | None, reduction: Reduction, part: slice, stacked: bool) -> np.ndarray | None:
    """A request's loss: as the exact graph reduced it, or reduced here from its instances' rows."""
    if loss is None or not stacked:
        return loss
    rows = loss[part]
    if reduction == "none":
        return rows
    total = rows.sum(dtype=rows.dtype)
    return np.asarray(total / rows.dtype.type(len(rows)) if reduction == "mean" else total)


def _gradient_extras(
    served: ServedModel, signature: str, request: GradientRequest, stacked: Stacked
) -> dict[str, np.ndarray]:
    """The graph's extras: the output's cotangent (ones for the output itself, a one-hot row for a class), or a
    loss's targets, with each instance's weight when stacked (1 for a sum, 1 / its request's size for a mean)."""
    dtype = served.signatures[signature].outputs[request.output].dtype
    extra = stacked.per_instance.get("extra")
    if request.kind == "loss":
        if stacked.sizes is None:
            return {"targets": np.asarray(extra)}
        scale = [np.full(size, 1.0 / size if request.reduction == "mean" else 1.0) for size in stacked.sizes]
        return {"targets": np.asarray(extra), "weights": np.concatenate(scale).astype(dtype)}
    if request.kind == "output_gradients":
        return {"cotangent": np.asarray(extra, dtype=dtype)}
    shape = output_shape(served, signature, request.output, stacked.inputs)
    if request.kind == "output":
        return {"cotangent": np.ones(shape, dtype=dtype)}
    classes = np.asarray(extra)
    if len(shape) < 2 or classes.shape != shape[:1]:
        raise InvalidInput(f"output {request.output!r} has no class axis per instance", ("class_index",))
    one_hot = np.eye(shape[-1], dtype=dtype)[classes].reshape(shape[0], *([1] * (len(shape) - 2)), shape[-1])
    return {"cotangent": np.ascontiguousarray(np.broadcast_to(one_hot, shape))}


def output_shape(served: ServedModel, signature: str, output: str, inputs: dict[str, np.ndarray]) -> tuple[int, ...]:
    """The shape `output` has on `inputs`: from the signature when it is fully known, else by running it."""
    info = served.signatures[signature].outputs[output]
    batch = next(iter(inputs.values())).shape[0] if inputs and next(iter(inputs.values())).ndim else 1
    if info.shape is not None and None not in info.shape[1:]:
        return tuple(batch if size is None else size for size in info.shape)
    return tuple(served.predict(signature, inputs)[output].shape)


def _gradient_graph(served: ServedModel, signature: str, request: GradientRequest, padded: bool) -> Any:
    """(inputs, extras) -> (rows, whole): outputs, input gradients (and a per-instance loss) by row when
    `padded`, variable gradients whole; every instance weighed by its cotangent or loss weight."""
    call = served.calls[signature]
    info = served.signatures[signature]
    float_sources = [name for name in request.sources if info.inputs[name].dtype in FLOAT_DTYPES]
    variables = served.variables[signature] if request.variables else []
    unconnected = tf.UnconnectedGradients.ZERO if request.unconnected == "zero" else tf.UnconnectedGradients.NONE

    def compute(inputs: dict[str, tf.Tensor], extras: dict[str, tf.Tensor]) -> Any:
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([inputs[name] for name in float_sources])
            tape.watch(variables)
            outputs = call(inputs)
            output = outputs[request.output]
            loss, target, cotangent = None, output, None
            if request.kind == "loss":
                loss = _per_instance_loss(request.loss, output, tf.cast(extras["targets"], output.dtype))
                target = tf.reduce_sum(loss * extras["weights"]) if padded else _reduce(request.reduction, loss)
            else:
                cotangent = extras["cotangent"]
        sources = [inputs[name] for name in float_sources] + list(variables)
        grads = tape.gradient(target, sources, output_gradients=cotangent, unconnected_gradients=unconnected)
        rows = {f"output/{name}": value for name, value in outputs.items()}
        rows.update({f"gradient/{name}": grad for name, grad in zip(float_sources, grads, strict=False)})
        whole = {f"variable/{index}": grad for index, grad in enumerate(grads[len(float_sources) :])}
        if loss is not None:
            (rows if padded else whole)["loss"] = loss if padded else target
        return rows, whole

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
    check_jacobian(served, signature, inputs, (output, source), by_class=class_index is not None, limit=max_elements)
    rows = served.rows(signature, inputs)
    extras = {} if class_index is None else {"class_index": class_index}
    stacked = Stacked(inputs, extras, None if rows is None else (rows,))
    return merged_jacobians(served, signature, (output, source), stacked)[0]


def check_jacobian(
    served: ServedModel,
    signature: str,
    inputs: dict[str, np.ndarray],
    between: tuple[str, str],
    *,
    by_class: bool,
    limit: int,
) -> int:
    """The elements the Jacobian of output `between[0]` w.r.t. input `between[1]` on `inputs` holds; refused
    (422) for an integer output or input, and when they exceed `limit`."""
    output, source = between
    info = served.signatures[signature]
    for name, dtype in ((output, info.outputs[output].dtype), (source, info.inputs[source].dtype)):
        if dtype not in FLOAT_DTYPES:
            where = "output" if name == output else "input"
            raise InvalidInput(f"{name!r} is {dtype}, which has no Jacobian", (where,))
    batch = inputs[source].shape[0]
    per_output = 1 if by_class else math.prod(output_shape(served, signature, output, inputs)[1:])
    elements = batch * per_output * math.prod(inputs[source].shape[1:])
    if elements > limit:
        raise LimitExceeded(f"the Jacobian would hold {elements} elements, more than {limit} (TAPESERVE_MAX_ELEMENTS)")
    return int(elements)


def merged_jacobians(
    served: ServedModel, signature: str, between: tuple[str, str], stacked: Stacked
) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
    """`jacobian` of output `between[0]` w.r.t. input `between[1]` for requests whose instances were stacked,
    already checked; with `stacked.per_instance["class_index"]` one class's row per instance."""
    output, source = between
    by_class = "class_index" in stacked.per_instance
    per_row, _ = run_graph(
        served.functions,
        ("jacobian", signature, output, source, by_class),
        lambda padded: _jacobian_graph(served, signature, output, source, by_class),
        inputs=stacked.inputs,
        extras=stacked.per_instance,
        rows=stacked.rows,
        xla=served.xla(signature),
    )
    return [
        (
            {name[len("output/") :]: value[part] for name, value in per_row.items() if name.startswith("output/")},
            per_row["jacobian"][part],
        )
        for part in stacked.parts()
    ]


def _jacobian_graph(served: ServedModel, signature: str, output: str, source: str, by_class: bool) -> Any:
    call = served.calls[signature]

    def compute(inputs: dict[str, tf.Tensor], extras: dict[str, tf.Tensor]) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(inputs[source])
            outputs = call(inputs)
            target = outputs[output]
            if by_class:
                target = target * _class_mask(extras["class_index"], target)
        if by_class:
            found = tape.gradient(target, inputs[source], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        else:
            found = tape.batch_jacobian(target, inputs[source], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return {**{f"output/{name}": value for name, value in outputs.items()}, "jacobian": found}, {}

    return compute


def warm_derivatives(served: ServedModel, signature: str, zeros: dict[str, np.ndarray]) -> None:
    """Run the common gradients and Jacobian of `signature` on `zeros` (see `loading.warm_up`); a model that
    cannot be differentiated there is still served (its derivatives answer what goes wrong)."""
    info = served.signatures[signature]
    outputs = [name for name, found in info.outputs.items() if found.dtype in FLOAT_DTYPES]
    sources = tuple(name for name, found in info.inputs.items() if found.dtype in FLOAT_DTYPES)
    if not outputs or not sources:
        return
    try:
        gradients(served, signature, zeros, GradientRequest(output=outputs[0], sources=sources))
        if len(sources) == 1 and len(info.inputs) == 1:
            shape = output_shape(served, signature, outputs[0], zeros)
            rows = served.rows(signature, zeros) or 1
            if math.prod(shape[1:]) * math.prod(zeros[sources[0]].shape[1:]) * rows <= WARM_JACOBIAN_ELEMENTS:
                jacobian(served, signature, zeros, outputs[0], sources[0], class_index=None, max_elements=1 << 62)
    except (tf.errors.OpError, ValueError, TypeError, InvalidInput, LimitExceeded):
        return


WARM_JACOBIAN_ELEMENTS = 1 << 16
"""Jacobians warmed up at most this large (per warm-up batch): a large model's is left to its first request."""
