"""The models engine: jobs that run a served version's signature, merged along the batch axis when they can be.

It runs in the worker's lane (registered as "models"). The module imports no TensorFlow itself, so the
adapters can build its jobs on the event loop; the version's own functions run TensorFlow.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.compute.errors import InvalidInput
from service.compute.models.spec import SignatureInfo

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True, eq=False)
class PredictJob:
    """One predict request: `inputs` (checked against the signature) for `signature` of a loaded version."""

    served: Any
    """The version's `ServedModel`, held (by a lease) until the request is answered."""
    signature: str
    inputs: dict[str, np.ndarray]
    batch: int | None
    """The batch size every input shares, when the job may be merged with others; None runs it alone."""
    loc: tuple[str | int, ...] = ()
    """Where a failure of the model on these inputs is reported."""


@dataclass(frozen=True, eq=False)
class GradientsJob:
    """One `:gradients` request: `request` (see `verbs.GradientRequest`) on `inputs`; `extra` is the class
    index per instance, the cotangent, or the loss's targets, as the request's kind needs."""

    served: Any
    signature: str
    inputs: dict[str, np.ndarray]
    request: Any
    extra: np.ndarray | None
    loc: tuple[str | int, ...] = ()


@dataclass(frozen=True, eq=False)
class JacobianJob:
    """One `:jacobian` request: d `output` / d input `source` per instance (one class's row with `class_index`)."""

    served: Any
    signature: str
    inputs: dict[str, np.ndarray]
    output: str
    source: str
    class_index: np.ndarray | None
    max_elements: int
    loc: tuple[str | int, ...] = ()


def mergeable(served: Any, signature: SignatureInfo, inputs: dict[str, np.ndarray]) -> int | None:
    """The shared batch size of `inputs` if jobs like this one may run in one call. Only Keras models are
    merged: their built-in layers (the only ones `safe_mode` loads) treat instances independently in inference;
    a SavedModel's function may reduce across its batch, so it always runs on its own inputs."""
    if served.kind != "keras" or not signature.batched:
        return None
    sizes = {value.shape[0] if value.ndim else None for value in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    (size,) = sizes
    return int(size) if size else None


class ModelsEngine:
    """The worker's `Engine` protocol for served models: `merge_key` and `run`."""

    def merge_key(self, job: PredictJob | GradientsJob) -> Hashable | None:
        if not isinstance(job, PredictJob) or job.batch is None:
            return None
        shapes = tuple((name, value.dtype.str, value.shape[1:]) for name, value in sorted(job.inputs.items()))
        return ("models", "predict", id(job.served), job.signature, shapes)

    def run(self, jobs: Sequence[Any]) -> list[Any]:
        """One result per job; jobs of one merge key run as one call and are split back."""
        if len(jobs) == 1 and isinstance(jobs[0], GradientsJob | JacobianJob):
            return [self._derivative(jobs[0])]
        if len(jobs) == 1:
            return [self._call(jobs[0], jobs[0].inputs)]
        first = jobs[0]
        merged = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in first.inputs}
        outputs = self._call(first, merged)
        total = sum(job.batch or 0 for job in jobs)
        if not all(value.ndim and value.shape[0] == total for value in outputs.values()):
            return [self._call(job, job.inputs) for job in jobs]  # an output not batched: each on its own
        answers: list[Outputs] = []
        start = 0
        for job in jobs:
            stop = start + (job.batch or 0)
            answers.append({name: value[start:stop] for name, value in outputs.items()})
            start = stop
        return answers

    @staticmethod
    def _call(job: PredictJob, inputs: dict[str, np.ndarray]) -> Outputs:
        import tensorflow as tf  # noqa: PLC0415  (in the worker's thread, where TensorFlow is loaded already)

        try:
            outputs: Outputs = job.served.predict(job.signature, inputs)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            # shapes the signature allows but the model's own ops refuse (e.g. batch sizes that differ)
            raise InvalidInput(f"the model cannot run on these inputs: {_reason(error)}", job.loc) from error
        return outputs

    @staticmethod
    def _derivative(job: GradientsJob | JacobianJob) -> Any:
        import tensorflow as tf  # noqa: PLC0415

        from service.compute.models.verbs import gradients, jacobian  # noqa: PLC0415  (TensorFlow)

        try:
            if isinstance(job, JacobianJob):
                return jacobian(
                    job.served,
                    job.signature,
                    job.inputs,
                    job.output,
                    job.source,
                    class_index=job.class_index,
                    max_elements=job.max_elements,
                )
            return gradients(job.served, job.signature, job.inputs, job.request, job.extra)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise InvalidInput(f"the model cannot run on these inputs: {_reason(error)}", job.loc) from error


_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "[Op:", "Stack trace", "<", "Traceback")


def _reason(error: BaseException) -> str:
    """The line of TensorFlow's message that says what went wrong (not its stack trace or node names)."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines()]
    meaningful = [line for line in lines if line and not line.startswith(_NOISE)]
    return (meaningful[-1] if meaningful else type(error).__name__)[:500]
