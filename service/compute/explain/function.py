"""Explanations of a fixed differentiable function of named inputs (a served model's signature, a Keras model).

Unlike a posted network, the function's parameters are the same for every request, so merged requests simply
concatenate their instances (R = 1): one compiled call for every instance × step of all of them, split by
instances only where TAPESERVE_MAX_ELEMENTS demands.

Large calls (at least `xla_elements` evaluated input elements) run XLA-compiled, their instances padded to a
power of two so that calls of similar sizes share one compiled program (XLA compiles per shape): there XLA's
fused kernels are several times faster and its compile time pays off. Smaller calls run TensorFlow's own
kernels through one function that takes any number of instances and steps.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.buckets import next_power_of_two
from service.compute.explain.engine import ExplanationResult, plan_calls
from service.compute.explain.kernel import INTEGRATED, Forward, attribute
from service.compute.explain.prepare import AttributionInputs, Evaluation
from service.compute.fastpath import structured_call
from service.vocabulary import METHODS

COMPLETENESS = ("baseline_prediction", "convergence_delta")
"""The outputs only integrated gradients answers (the one graph returns them for every method)."""

Function = Callable[[Mapping[str, Any]], Any]
"""f(inputs by name, each (P, *shape)) -> (P, units): one output of the function, batched."""


def folded(function: Function, names: Sequence[str]) -> Forward:
    """The kernel's F for a batched function: the request axis R is folded into the function's batch axis."""

    def forward(points: Sequence[Any]) -> Any:
        leading = tf.shape(points[0])[:2]
        flat = {
            name: tf.reshape(point, tf.concat([[-1], tf.shape(point)[2:]], axis=0))
            for name, point in zip(names, points, strict=True)
        }
        outputs = function(flat)
        return tf.reshape(outputs, tf.concat([leading, tf.shape(outputs)[1:]], axis=0))

    return forward


class FunctionExplainer:
    """Compiled explanations of one function: one concrete function serves every method (chosen by a tensor at
    each call), one more with XLA for large calls; runs in the worker thread."""

    def __init__(
        self,
        function: Function,
        input_shapes: Mapping[str, tuple[int, ...]],
        dtype: str,
        *,
        max_elements: int,
        xla_elements: int | None = None,
    ) -> None:
        """`xla_elements`: the evaluated input elements from which a call is XLA-compiled (None: never)."""
        self.names = list(input_shapes)
        self.shapes = dict(input_shapes)
        self.dtype = dtype
        self.max_elements = max_elements
        self._forward = folded(function, self.names)
        self.xla_elements = xla_elements
        self._compiled: dict[bool, Any] = {}
        self._lock = threading.Lock()
        self.calls = 0
        self.traces = 0
        """Concrete functions traced so far (a request that finds its function traced adds none)."""
        self.xla_calls = 0
        """Calls that ran XLA-compiled."""
        self._no_noise = [tf.zeros((1, 1, 1, *self.shapes[name]), self.dtype) for name in self.names]
        """The noise input of a call whose method has none: zeros of one instance's shape per input, broadcast
        over every point, made once (they never change)."""
        self._xla_answered: set[tuple[bool, int, int]] = set()
        """(noisy, evaluations, bucket) that XLA has compiled and answered once (as compiled._Bucketed): the shapes
        the one program takes; the method and |·| are values of its inputs, not shapes."""

    def _compiled_call(self, jit: bool) -> Any:
        """The one function (XLA-compiled or not), traced on first need, called as its op where `fastpath` applies."""
        with self._lock:
            if jit not in self._compiled:
                concrete = self._trace(jit)
                self._compiled[jit] = structured_call(concrete) or concrete
            return self._compiled[jit]

    def _trace(self, jit: bool) -> Any:
        self.traces += 1
        count = len(self.names)
        dtype = tf.as_dtype(self.dtype)

        def explain(*tensors: Any) -> Any:
            inputs, starts, noise = tensors[:count], tensors[count : 2 * count], tensors[2 * count : 3 * count]
            alphas, weights, classes, method, absolute = tensors[-5:]
            return attribute(
                self._forward,
                list(inputs),
                list(starts),
                alphas=alphas,
                weights=weights,
                noise=list(noise),
                class_index=classes,
                method=method,
                absolute=absolute,
            )

        def spec(name: str, extra: int = 0) -> tf.TensorSpec:
            return tf.TensorSpec((None, None, *([None] * extra), *self.shapes[name]), dtype)

        # every method's points carry noise: zeros of one element per dimension (broadcast) where it has none
        signature = (
            *(spec(name) for name in self.names),
            *(spec(name) for name in self.names),
            *(spec(name, 1) for name in self.names),
            tf.TensorSpec((None,), dtype),
            tf.TensorSpec((None,), dtype),
            tf.TensorSpec((None, None), tf.int32),
            tf.TensorSpec((), tf.int32),
            tf.TensorSpec((), tf.bool),
        )
        function = tf.function(explain, input_signature=signature, autograph=False, jit_compile=jit)
        return function.get_concrete_function()

    def run(self, jobs: Sequence[tuple[Evaluation, AttributionInputs]]) -> list[ExplanationResult]:
        """Jobs of one evaluation rule, their instances concatenated, in as few calls as the limit allows."""
        evaluated = jobs[0][0]
        everything = _join([attribution for _, attribution in jobs])
        total = everything.instances
        per_instance = evaluated.evaluations * sum(math.prod(shape) for shape in self.shapes.values())
        outputs: list[dict[str, np.ndarray]] = []
        for parts, rows in plan_calls([total], per_instance, self.max_elements):
            ((_, start, end),) = parts
            self.calls += 1
            outputs.append(self._run_call(evaluated, everything, (start, end), rows, per_instance))
        merged = {name: np.concatenate([chunk[name] for chunk in outputs]) for name in outputs[0]}
        results, first = [], 0
        for _, attribution in jobs:
            last = first + attribution.instances
            results.append(_slice(merged, first, last, len(self.names)))
            first = last
        return results

    def _run_call(
        self, evaluated: Evaluation, job: AttributionInputs, bounds: tuple[int, int], rows: int, per_instance: int
    ) -> dict[str, np.ndarray]:
        """One call of instances `bounds` run as `rows`: XLA-compiled (padded to a power of two within the
        element limit) when large enough, and without XLA from then on if XLA cannot compile the function
        (a first call of a shape that fails; a shape that has answered before fails as the call's own error)."""
        bucket = next_power_of_two(rows)
        large = self.xla_elements is not None and bucket * per_instance >= self.xla_elements
        if large and bucket * per_instance <= self.max_elements:
            compiled = (evaluated.noisy, evaluated.evaluations, bucket)
            try:
                found = self._call(self._compiled_call(True), evaluated, job, bounds=bounds, rows=bucket)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError):
                if compiled in self._xla_answered:
                    raise  # XLA compiled this shape before: the error is the call's own, not XLA's
                self.xla_elements = None  # XLA cannot compile this function: TensorFlow's kernels from now on
            else:
                self._xla_answered.add(compiled)
                self.xla_calls += 1
                return found
        return self._call(self._compiled_call(False), evaluated, job, bounds=bounds, rows=rows)

    def _call(
        self, compiled: Any, evaluated: Evaluation, job: AttributionInputs, *, bounds: tuple[int, int], rows: int
    ) -> dict[str, np.ndarray]:
        start, end = bounds

        def rows_of(array: np.ndarray) -> Any:
            piece = array[start:end]
            if end - start < rows:
                piece = np.concatenate([piece, np.repeat(piece[-1:], rows - (end - start), axis=0)])
            return tf.constant(piece[None])

        noise = self._no_noise if job.noise is None else [rows_of(n) for n in job.noise]
        out = compiled(
            *(rows_of(x) for x in job.inputs),
            *(rows_of(b) for b in job.starts),
            *noise,
            tf.constant(evaluated.alphas),
            tf.constant(evaluated.weights),
            rows_of(job.class_index),
            tf.constant(METHODS.index(evaluated.method), tf.int32),
            tf.constant(evaluated.absolute),
        )
        integrates = evaluated.method == INTEGRATED
        return {
            name: value.numpy()[0, : end - start]
            for name, value in out.items()
            if integrates or name not in COMPLETENESS
        }


def _join(jobs: Sequence[AttributionInputs]) -> AttributionInputs:
    if len(jobs) == 1:
        return jobs[0]
    count = len(jobs[0].inputs)

    def joined(pick: Callable[[AttributionInputs], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate([pick(job)[i] for job in jobs]) for i in range(count))

    noise = None if jobs[0].noise is None else joined(lambda job: job.noise or ())
    return AttributionInputs(
        inputs=joined(lambda job: job.inputs),
        starts=joined(lambda job: job.starts),
        noise=noise,
        class_index=np.concatenate([job.class_index for job in jobs]),
    )


def _slice(merged: Mapping[str, np.ndarray], first: int, last: int, inputs: int) -> ExplanationResult:
    return ExplanationResult(
        predictions=merged["predictions"][first:last],
        classes=merged["classes"][first:last],
        prediction=merged["prediction"][first:last],
        attributions=tuple(merged[f"attributions_{i}"][first:last] for i in range(inputs)),
        baseline_prediction=None if "baseline_prediction" not in merged else merged["baseline_prediction"][first:last],
        convergence_delta=None if "convergence_delta" not in merged else merged["convergence_delta"][first:last],
    )
