"""Gradient checks of served models: the `:gradients` verb's autodiff against central differences of the very
target it differentiates, in the model's own dtype.

The target's scalar is J = Σ_b φ_b(model(x_b)), the sum the tape differentiates: φ_b is instance b's output
summed, its class's entry, its cotangent product, or its loss (divided by the batch size under a mean).
Input elements of a model whose instances are independent (a Keras version with a batched signature: the
models whose predicts are merged) are perturbed one instance at a time, every perturbation a row of one
batched forward pass (chunked), and J(x + ε) − J(x − ε) = φ_b(x_b + ε) − φ_b(x_b − ε). Otherwise (a
SavedModel's function may reduce across its batch) each perturbation runs the signature on the whole batch.
A trainable variable's element is perturbed by assigning the variable, running the signature and restoring
it; that is safe because every job of a version runs in the worker's one TensorFlow lane, one at a time.

Errors are located relative to the check's arguments: the model job's under "model" (its inputs at the job's
own `loc`), the options' at theirs.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from service.compute.errors import InvalidInput, located_under
from service.compute.gradcheck.checks import (
    DEFAULT_OPTIONS,
    FD_CHUNK_ELEMENTS,
    CheckOptions,
    Differences,
    Evaluate,
    check_cap,
    check_claims,
    check_deadline,
    conclude,
    rerun_differences,
    source_check,
)
from service.compute.gradcheck.results import Array, GradientCheck
from service.compute.models.engine import GradientsJob, ModelsEngine, mergeable
from service.compute.models.verbs import GradientResult, _class_mask, _per_instance_loss


def per_instance_target(job: GradientsJob, output: Array, extra: Array | None, batch: int) -> Array:
    """φ_b for each row of `output` (rows of instances; `extra` the class, cotangent or targets of each row),
    in float64: the row's share of the scalar the tape differentiates for a batch of `batch` instances."""
    request = job.request
    y = tf.constant(output)
    if request.kind == "loss" and extra is not None:
        per = _per_instance_loss(request.loss, y, tf.cast(extra, y.dtype))
        shares = per / tf.cast(batch, per.dtype) if request.reduction == "mean" else per
        return np.asarray(shares.numpy(), dtype=np.float64)
    target = y
    if request.kind == "class_index" and extra is not None:
        target = y * _class_mask(tf.constant(extra), y)
    elif request.kind == "output_gradients" and extra is not None:
        target = y * tf.constant(extra, dtype=y.dtype)
    rows = tf.reshape(target, [tf.shape(target)[0], -1]) if target.shape.rank else tf.reshape(target, [1, 1])
    return np.asarray(tf.reduce_sum(tf.cast(rows, tf.float64), axis=1).numpy())


def total_target(job: GradientsJob, inputs: dict[str, Array]) -> float:
    """J on a whole batch: the signature run once, every instance's share summed."""
    output = job.served.predict(job.signature, inputs)[job.request.output]
    batch = next(iter(inputs.values())).shape[0] if inputs and next(iter(inputs.values())).ndim else 1
    return float(np.sum(per_instance_target(job, output, job.extra, batch)))


def _instance_rows(job: GradientsJob, result: GradientResult) -> int | None:
    """The batch size when perturbations may be rows of one batched pass: independent instances (see
    `mergeable`), an output with one row per instance, and per-instance extras."""
    info = job.served.signatures[job.signature]
    batch = mergeable(job.served, info, job.inputs)
    output = result.outputs[job.request.output]
    if batch is None or output.ndim == 0 or output.shape[0] != batch:
        return None
    if job.extra is not None and (job.extra.ndim == 0 or job.extra.shape[0] != batch):
        return None
    return batch


def _row_differences(job: GradientsJob, name: str, batch: int, options: CheckOptions) -> Differences:
    """Every perturbation of input `name` as one instance row; the rows run in chunks of one forward pass."""
    values = job.inputs[name]
    flat, per_instance = values.reshape(-1), math.prod(values.shape[1:])
    differences = Differences.around(name, flat, values.shape, options.epsilon)
    row_elements = sum(math.prod(value.shape[1:]) for value in job.inputs.values())
    chunk = max(1, FD_CHUNK_ELEMENTS // max(row_elements, 1) // 2)
    for start in range(0, flat.size, chunk):
        check_deadline(options.stop_at)
        indices = np.arange(start, min(start + chunk, flat.size))
        both = np.concatenate([indices, indices])
        instance, element = np.divmod(both, per_instance)
        rows = {key: value[instance] for key, value in job.inputs.items()}  # copies: fancy indexing
        moved = rows[name].reshape(both.size, -1)
        moved[np.arange(both.size), element] = np.concatenate([differences.plus[indices], differences.minus[indices]])
        output = job.served.predict(job.signature, rows)[job.request.output]
        extra = None if job.extra is None else job.extra[instance]
        shares = per_instance_target(job, output, extra, batch)
        differences.plus_losses[indices] = shares[: indices.size]
        differences.minus_losses[indices] = shares[indices.size :]
    return differences


def _input_evaluator(job: GradientsJob, name: str) -> Evaluate:
    def evaluate(moved: Array) -> float:
        return total_target(job, {**job.inputs, name: moved.reshape(job.inputs[name].shape)})

    return evaluate


def _variable_differences(job: GradientsJob, index: int, name: str, options: CheckOptions) -> Differences:
    """Perturbations of trainable variable `index`, assigned one at a time; its value is restored after."""
    variable = job.served.variables[job.signature][index]
    original = np.array(variable.numpy())

    def evaluate(moved: Array) -> float:
        variable.assign(moved.reshape(original.shape))
        return total_target(job, job.inputs)

    try:
        return rerun_differences(name, original.reshape(-1), original.shape, evaluate, options)
    finally:
        variable.assign(original)


def _source_shapes(job: GradientsJob) -> dict[str, tuple[int, ...]]:
    """Input sources, then the variables (by name) when asked; a name shared by both cannot be told apart."""
    shapes = {name: tuple(job.inputs[name].shape) for name in job.request.sources}
    if job.request.variables:
        for name, variable in zip(
            job.served.variable_names[job.signature], job.served.variables[job.signature], strict=True
        ):
            if name in shapes:
                raise InvalidInput(
                    f"variable {name!r} has the name of an input: their checks would share a name",
                    ("model", "sources"),
                )
            shapes[name] = tuple(variable.shape)
    return shapes


def check_model(job: GradientsJob, options: CheckOptions = DEFAULT_OPTIONS) -> GradientCheck:
    """Check `:gradients` of a served version on a batch: autodiff (the models engine's own) against central
    differences of the same target, in the output's dtype, for every float input source and (when asked)
    every trainable variable. Raises InvalidInput / LimitExceeded for claims of the wrong shape, an epsilon
    that vanishes, or more perturbed elements than `options.max_fd_elements`."""
    shapes = _source_shapes(job)
    check_claims(options.claimed, shapes)
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    perturbed = check_cap(sizes, options.max_fd_elements, ("model", "sources"), "(TAPESERVE_MAX_FD_ELEMENTS)")
    with located_under("model"):
        result: GradientResult = ModelsEngine().run([job])[0]
    dtype = job.served.signatures[job.signature].outputs[job.request.output].dtype
    autodiff: dict[str, Array | None] = {**result.input_gradients, **dict(result.variable_gradients)}
    batch = _instance_rows(job, result)
    notes = [*options.notes]
    checks = []
    for name, shape in shapes.items():
        if name in job.inputs:
            differences = (
                _row_differences(job, name, batch, options)
                if batch is not None
                else rerun_differences(name, job.inputs[name].reshape(-1), shape, _input_evaluator(job, name), options)
            )
        else:
            index = job.served.variable_names[job.signature].index(name)
            differences = _variable_differences(job, index, name, options)
        found = autodiff.get(name)
        if found is None:
            notes.append(
                f"tape.gradient returned None for {name!r}: it is not connected to output "
                f"{job.request.output!r}; compared as zeros."
            )
            found = np.zeros(shape, dtype=dtype)
        checks.append(source_check(differences, found, dtype, options))
    return conclude(checks, dtype=dtype, options=options, perturbed=perturbed, notes=notes)
