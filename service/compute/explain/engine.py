"""Explanations of posted dense networks: one compiled call for every instance × step of merged requests.

A compiled function per network structure and method takes R requests (a leading request axis, each with
its own weights) of N instances; the kernel evaluates all R × N × m points in one batch. Calls are split
only where TAPESERVE_MAX_ELEMENTS demands: by requests first, then by instances. XLA-compiled (TAPESERVE_XLA),
R and N are padded to powers of two, so that calls of similar sizes share one compiled program.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.buckets import next_power_of_two, power_of_two_at_most
from service.compute.errors import LimitExceeded
from service.compute.explain.kernel import Forward, attribute
from service.compute.explain.prepare import Array, NetworkExplanation
from service.compute.fastpath import structured_call
from service.compute.lru import LruCache
from service.compute.networks.graph import activate
from service.compute.networks.problem import NetworkStructure


@dataclass
class ExplanationResult:
    """One request's answer, the instance axis first in every array."""

    predictions: Array
    """(N, units): F's outputs at the instances."""
    classes: Array
    """(N,) the explained class of each instance."""
    prediction: Array
    """(N,) F(x): the explained class's output."""
    attributions: tuple[Array, ...]
    """(N, *shape) per input."""
    baseline_prediction: Array | None = None
    """(N,) F(b), integrated gradients only."""
    convergence_delta: Array | None = None
    """(N,) Σ attributions − (F(x) − F(b)), integrated gradients only."""


def network_forward(structure: NetworkStructure, weights: Sequence[Any], leaky_alphas: Any) -> Forward:
    """F of a dense network with per-request weights: (R, P, inputs) -> (R, P, units)."""

    def forward(points: Sequence[Any]) -> Any:
        x = points[0]
        for i, (w, activation) in enumerate(zip(weights, structure.activations, strict=True)):
            x_b = tf.concat([x, tf.ones_like(x[..., :1])], axis=-1) if structure.bias == "augmented" else x
            z = tf.linalg.matmul(x_b, w, transpose_b=True)
            x = activate(activation, z, leaky_alphas[:, i][:, None, None])
        return x

    return forward


class _CompiledExplanation:
    """The concrete function of one structure and method; arrays in, named arrays out."""

    def __init__(self, structure: NetworkStructure, method: str, absolute: bool, noisy: bool, jit: bool) -> None:
        self.structure = structure
        self.jit = jit
        dtype = tf.as_dtype(structure.dtype)
        inputs = structure.layer_shapes[0][1] - (1 if structure.bias == "augmented" else 0)
        layers = len(structure.layer_shapes)

        def explain(*tensors: Any) -> Any:
            x, b, alphas, weights, noise, classes, leaky, *w = tensors
            return attribute(
                network_forward(structure, w, leaky),
                [x],
                [b],
                alphas=alphas,
                weights=weights,
                noise=[noise] if noisy else None,
                class_index=classes,
                method=method,
                absolute=absolute,
            )

        signature = (
            tf.TensorSpec((None, None, inputs), dtype, name="x"),
            tf.TensorSpec((None, None, inputs), dtype, name="b"),
            tf.TensorSpec((None,), dtype, name="alphas"),
            tf.TensorSpec((None,), dtype, name="weights"),
            tf.TensorSpec((None, None, None, inputs) if noisy else (0,), dtype, name="noise"),
            tf.TensorSpec((None, None), tf.int32, name="classes"),
            tf.TensorSpec((None, layers), dtype, name="leaky"),
            *(tf.TensorSpec((None, *shape), dtype, name=f"W{i + 1}") for i, shape in enumerate(structure.layer_shapes)),
        )
        self.concrete = tf.function(explain, input_signature=signature, autograph=False, jit_compile=jit)
        self.concrete = self.concrete.get_concrete_function()
        self.call = structured_call(self.concrete) or self.concrete
        """The function's op itself, where `fastpath` applies."""
        self.no_noise = tf.zeros((0,), dtype)
        """The noise input of every call without noise: one constant, made here rather than on each call."""

    def __call__(self, jobs: Sequence[NetworkExplanation], parts: Sequence[tuple[int, int, int]], rows: int) -> Any:
        """Run parts (job, first instance, end) padded to `rows` instances each; outputs per part, cut to size."""
        padded = list(parts)
        if self.jit:  # XLA compiles per shape: request counts in powers of two
            padded += [parts[-1]] * (next_power_of_two(len(parts)) - len(parts))

        def stacked(pick: Any) -> Any:
            arrays = []
            for job_index, start, end in padded:
                array = pick(jobs[job_index])[start:end]
                if end - start < rows:  # padded instances repeat the last real one (finite where it is)
                    array = np.concatenate([array, np.repeat(array[-1:], rows - (end - start), axis=0)])
                arrays.append(array)
            return tf.constant(np.stack(arrays))

        first = jobs[parts[0][0]]
        dtype = self.structure.dtype
        noise = stacked(lambda job: job.attribution.noise[0]) if first.evaluation.noisy else self.no_noise
        outputs = self.call(
            stacked(lambda job: job.attribution.inputs[0]),
            stacked(lambda job: job.attribution.starts[0]),
            tf.constant(first.evaluation.alphas),
            tf.constant(first.evaluation.weights),
            noise,
            stacked(lambda job: job.attribution.class_index),
            tf.constant(np.asarray([jobs[j].leaky_alphas for j, _, _ in padded], dtype=dtype)),
            *(
                tf.constant(np.stack([jobs[j].weights[i] for j, _, _ in padded]))
                for i in range(len(self.structure.layer_shapes))
            ),
        )
        arrays = {name: value.numpy() for name, value in outputs.items()}
        return [
            {name: array[r, : end - start] for name, array in arrays.items()} for r, (_, start, end) in enumerate(parts)
        ]


def plan_calls(
    instances: Sequence[int], per_instance: int, max_elements: int
) -> list[tuple[list[tuple[int, int, int]], int]]:
    """Calls as (parts, rows): every job's instances, as few calls as TAPESERVE_MAX_ELEMENTS allows.

    `per_instance` is the elements one instance's m points make in the largest tensor.
    """
    cap = max(1, max_elements // max(per_instance, 1))
    rows = max(instances)
    if rows * len(instances) <= cap:
        return [([(j, 0, n) for j, n in enumerate(instances)], rows)]
    if rows <= cap:
        group = cap // rows
        return [
            ([(j, 0, instances[j]) for j in range(first, min(first + group, len(instances)))], rows)
            for first in range(0, len(instances), group)
        ]
    chunk = power_of_two_at_most(cap)  # one compiled shape for every chunk
    return [
        ([(j, start, min(start + chunk, n))], chunk) for j, n in enumerate(instances) for start in range(0, n, chunk)
    ]


class ExplainEngine:
    """Compiled explanation functions in a bounded LRU cache; runs in the worker thread and its device."""

    def __init__(self, max_elements: int, cache_size: int = 128, jit_compile: bool = False) -> None:
        self.max_elements = max_elements
        self._jit = jit_compile
        self._functions: LruCache[Hashable, _CompiledExplanation] = LruCache(cache_size)
        self.calls = 0

    def merge_key(self, job: NetworkExplanation) -> Hashable:
        return job.merge_key

    def _compiled(self, job: NetworkExplanation) -> _CompiledExplanation:
        evaluated = job.evaluation
        key = (job.structure, evaluated.method, evaluated.absolute, evaluated.noisy)
        return self._functions.get(key, lambda: _CompiledExplanation(*key, self._jit))

    def run(self, jobs: Sequence[NetworkExplanation]) -> list[ExplanationResult]:
        """Every job (all of one merge key) in as few compiled calls as the element limit allows."""
        compiled = self._compiled(jobs[0])
        counts = [job.attribution.instances for job in jobs]
        per_instance = jobs[0].evaluation.evaluations * (jobs[0].structure.widest + 1)
        pieces: list[list[dict[str, Array]]] = [[] for _ in jobs]
        deadlines = [job.stop_at for job in jobs]
        stop_at = None if None in deadlines else max(d for d in deadlines if d is not None)
        for index, (parts, rows) in enumerate(plan_calls(counts, per_instance, self.max_elements)):
            if index and stop_at is not None and time.monotonic() > stop_at:
                # every merged request already has its 504; this only frees the worker
                raise LimitExceeded("the explanation ran past the request's deadline", ())
            self.calls += 1
            padded = self._bucketed(rows, len(parts), per_instance)
            for (job_index, _, _), outputs in zip(parts, compiled(jobs, parts, padded), strict=True):
                pieces[job_index].append(outputs)
        return [_result(job, chunks) for job, chunks in zip(jobs, pieces, strict=True)]

    def _bucketed(self, rows: int, requests: int, per_instance: int) -> int:
        """The instances a call of `requests` × `rows` runs as: under XLA, which compiles per shape, the next
        power of two where the element limit allows it (so 600 and 1,000 instances share one program)."""
        if not self._jit:
            return rows
        bucket, stacked = next_power_of_two(rows), next_power_of_two(requests)
        return bucket if bucket * stacked * per_instance <= self.max_elements else rows

    def warmup(self) -> None:
        """Trace the seed's explanation, so the first request does not pay for it."""
        from service.compute.explain.network import seed_explanation  # noqa: PLC0415

        self.run([seed_explanation(self.max_elements)])


def _result(job: NetworkExplanation, chunks: Sequence[dict[str, Array]]) -> ExplanationResult:
    merged = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
    inputs = len(job.attribution.inputs)
    return ExplanationResult(
        predictions=merged["predictions"],
        classes=merged["classes"],
        prediction=merged["prediction"],
        attributions=tuple(merged[f"attributions_{i}"] for i in range(inputs)),
        baseline_prediction=merged.get("baseline_prediction"),
        convergence_delta=merged.get("convergence_delta"),
    )
