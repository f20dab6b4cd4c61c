"""The models engine: jobs of a served version's verbs, stacked along the batch axis when they can be.

It runs in the worker's lane (registered as "models"). The module imports no TensorFlow itself, so the
adapters can build its jobs on the event loop; the verbs (`verbs`, `loading`) run TensorFlow.

A verb plugs in as a `ModelJob` subclass: `merge_options` (what must agree for jobs to share one call, None
for never), `per_instance` (its arrays with one row per instance besides the inputs), `check` (refusals that
concern the job alone, before anything is stacked) and `run_stacked` (the verb on stacked arrays, one answer
per job). Jobs of one version and signature whose options and per-instance shapes agree are merged by the
worker; the engine concatenates their inputs and per-instance arrays, runs the first job's `run_stacked` once,
and, should that call fail, runs each job alone so that each gets its own answer or error.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.compute.errors import InvalidInput, JobFailed
from service.compute.models.spec import SignatureInfo

Outputs = dict[str, np.ndarray]
MERGED_ELEMENTS = 1 << 22
"""Elements (inputs, per-instance arrays and what `check` counts) one merged call holds at most: jobs beyond
it run in further calls."""


def mergeable(served: Any, signature: SignatureInfo, inputs: dict[str, np.ndarray]) -> int | None:
    """The shared batch size of `inputs` if their instances are independent, so that jobs like this one may
    run in one call (and be padded to a bucketed batch size). Only Keras models are: their built-in layers
    (the only ones `safe_mode` loads) treat instances independently in inference; a SavedModel's function may
    reduce across its batch, so it always runs on its own inputs as they are."""
    if served.kind != "keras" or not signature.batched:
        return None
    if not all(info.batched for info in signature.outputs.values()):
        return None
    sizes = {value.shape[0] if value.ndim else None for value in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    (size,) = sizes
    return int(size) if size else None


@dataclass(frozen=True)
class Stacked:
    """Jobs' arrays stacked along the batch axis: `sizes` instances of each job in order (None: one job alone,
    its arrays exactly as they are)."""

    inputs: dict[str, np.ndarray]
    per_instance: dict[str, np.ndarray]
    sizes: tuple[int, ...] | None

    @property
    def rows(self) -> int | None:
        """Every job's instances together; None for a job run exactly as it is."""
        return None if self.sizes is None else sum(self.sizes)

    def parts(self) -> list[slice]:
        """Each job's rows (everything for a job run as it is)."""
        if self.sizes is None:
            return [slice(None)]
        bounds = [0, *itertools.accumulate(self.sizes)]
        return [slice(start, stop) for start, stop in itertools.pairwise(bounds)]


class ModelJob:
    """One request of a verb on a loaded version (the base of every verb's job; see the module docstring)."""

    served: Any
    """The version's `ServedModel`, held (by a lease) until the request is answered."""
    signature: str
    inputs: dict[str, np.ndarray]
    loc: tuple[str | int, ...]
    """Where a failure of the model on these inputs is reported."""

    @property
    def rows(self) -> int | None:
        """The job's instances when they are independent (it may be merged and padded), else None."""
        return mergeable(self.served, self.served.signatures[self.signature], self.inputs)

    def merge_options(self) -> Hashable | None:
        """What, besides version, signature and per-instance shapes, jobs sharing one call agree on; None:
        the job always runs alone."""
        return None

    def per_instance(self) -> dict[str, np.ndarray]:
        """The job's own arrays with one row per instance, stacked with the others' when merged."""
        return {}

    def check(self) -> int:
        """Refuse (raise) what concerns this job alone, before it is stacked; returns the elements its answer
        holds beyond its inputs (counted against MERGED_ELEMENTS)."""
        return 0

    def run_stacked(self, stacked: Stacked) -> list[Any]:
        """The verb with this job's options on stacked arrays; one answer per job, in order."""
        raise NotImplementedError

    def size(self) -> int:
        return sum(value.size for value in (*self.inputs.values(), *self.per_instance().values()))


@dataclass(frozen=True, eq=False)
class PredictJob(ModelJob):
    """One predict request: `inputs` (checked against the signature) for `signature` of a loaded version."""

    served: Any
    signature: str
    inputs: dict[str, np.ndarray]
    batch: int | None
    """The batch size every input shares, when the job may be merged with others; None runs it alone."""
    loc: tuple[str | int, ...] = ()

    @property
    def rows(self) -> int | None:
        return self.batch

    def merge_options(self) -> Hashable | None:
        return "predict"

    def run_stacked(self, stacked: Stacked) -> list[Any]:
        outputs: Outputs = self.served.predict(self.signature, stacked.inputs)
        return [{name: value[part] for name, value in outputs.items()} for part in stacked.parts()]


@dataclass(frozen=True, eq=False)
class GradientsJob(ModelJob):
    """One `:gradients` request: `request` (see `verbs.GradientRequest`) on `inputs`; `extra` is the class
    index per instance, the cotangent, or the loss's targets, as the request's kind needs."""

    served: Any
    signature: str
    inputs: dict[str, np.ndarray]
    request: Any
    extra: np.ndarray | None
    loc: tuple[str | int, ...] = ()

    def merge_options(self) -> Hashable | None:
        # a variable's gradient sums over every instance of the call: such a request runs on its own
        rows = self.rows
        if self.request.variables or (self.extra is not None and (self.extra.ndim == 0 or len(self.extra) != rows)):
            return None
        return ("gradients", self.request)

    def per_instance(self) -> dict[str, np.ndarray]:
        return {} if self.extra is None else {"extra": self.extra}

    def run_stacked(self, stacked: Stacked) -> list[Any]:
        from service.compute.models.verbs import merged_gradients  # noqa: PLC0415  (TensorFlow)

        return list(merged_gradients(self.served, self.signature, self.request, stacked))


@dataclass(frozen=True, eq=False)
class JacobianJob(ModelJob):
    """One `:jacobian` request: d `output` / d input `source` per instance (one class's row with `class_index`)."""

    served: Any
    signature: str
    inputs: dict[str, np.ndarray]
    output: str
    source: str
    class_index: np.ndarray | None
    max_elements: int
    loc: tuple[str | int, ...] = ()

    def merge_options(self) -> Hashable | None:
        return ("jacobian", self.output, self.source, self.class_index is not None)

    def per_instance(self) -> dict[str, np.ndarray]:
        return {} if self.class_index is None else {"class_index": self.class_index}

    def check(self) -> int:
        from service.compute.models.verbs import check_jacobian  # noqa: PLC0415  (TensorFlow)

        between = (self.output, self.source)
        by_class = self.class_index is not None
        return check_jacobian(
            self.served, self.signature, self.inputs, between, by_class=by_class, limit=self.max_elements
        )

    def run_stacked(self, stacked: Stacked) -> list[Any]:
        from service.compute.models.verbs import merged_jacobians  # noqa: PLC0415  (TensorFlow)

        return list(merged_jacobians(self.served, self.signature, (self.output, self.source), stacked))


class ModelsEngine:
    """The worker's `Engine` protocol for served models: `merge_key` and `run`."""

    def merge_key(self, job: ModelJob) -> Hashable | None:
        options = job.merge_options()
        if options is None or job.rows is None:
            return None
        shapes = tuple(
            (name, value.dtype.str, value.shape[1:])
            for arrays in (job.inputs, job.per_instance())
            for name, value in sorted(arrays.items())
        )
        return ("models", id(job.served), job.signature, options, shapes)

    def run(self, jobs: Sequence[ModelJob]) -> list[Any]:
        """One result per job; jobs of one merge key run as one call (several when they exceed
        MERGED_ELEMENTS) and are split back. A job refused or failing on its own inputs answers `JobFailed`
        when merged with others."""
        if len(jobs) == 1:
            job = jobs[0]
            job.check()
            rows = job.rows  # alone, but bucketed where its instances are independent
            return self._call(job, [job], None if rows is None else (rows,))
        answers: list[Any] = [None] * len(jobs)
        group: list[int] = []
        held = 0
        for index, job in enumerate(jobs):
            try:
                elements = job.check() + job.size()
            except Exception as error:
                answers[index] = JobFailed(error)
                continue
            if group and held + elements > MERGED_ELEMENTS:
                self._merged(jobs, group, answers)
                group, held = [], 0
            group.append(index)
            held += elements
        if group:
            self._merged(jobs, group, answers)
        return answers

    def _merged(self, jobs: Sequence[ModelJob], group: list[int], answers: list[Any]) -> None:
        members = [jobs[index] for index in group]
        try:
            found = self._call(members[0], members, tuple(job.rows or 0 for job in members))
        except InvalidInput:
            if len(members) == 1:
                raise
            found = []
            for job in members:  # each alone: its own answer, or its own error
                try:
                    found.extend(self._call(job, [job], (job.rows or 0,)))
                except Exception as error:
                    found.append(JobFailed(error))
        for index, answer in zip(group, found, strict=True):
            answers[index] = answer

    @staticmethod
    def _call(first: ModelJob, jobs: Sequence[ModelJob], sizes: tuple[int, ...] | None) -> list[Any]:
        import tensorflow as tf  # noqa: PLC0415  (in the worker's thread, where TensorFlow is loaded already)

        if len(jobs) == 1:
            inputs, per_instance = first.inputs, first.per_instance()
        else:
            inputs = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in first.inputs}
            stacked = [job.per_instance() for job in jobs]
            per_instance = {name: np.concatenate([arrays[name] for arrays in stacked]) for name in stacked[0]}
        try:
            return first.run_stacked(Stacked(inputs, per_instance, sizes))
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            # shapes the signature allows but the model's own ops refuse (e.g. batch sizes that differ)
            raise InvalidInput(f"the model cannot run on these inputs: {_reason(error)}", first.loc) from error


_NOISE = ("Graph execution error", "Detected at node", "File ", "[[", "[Op:", "Stack trace", "<", "Traceback")


def _reason(error: BaseException) -> str:
    """The line of TensorFlow's message that says what went wrong (not its stack trace or node names)."""
    text = getattr(error, "message", None) or str(error)
    lines = [line.strip() for line in text.splitlines()]
    meaningful = [line for line in lines if line and not line.startswith(_NOISE)]
    return (meaningful[-1] if meaningful else type(error).__name__)[:500]


@dataclass(frozen=True, eq=False)
class ExplainJob(ModelJob):
    """One `:explain` request: attributions (API.md §10) of `output`'s selected class, every instance × step (or
    sample) in one batched call; `evaluation` and `attribution` are `explain.prepare`'s, already checked."""

    served: Any
    signature: str
    inputs: dict[str, np.ndarray]
    output: str
    evaluation: Any
    attribution: Any
    max_elements: int
    loc: tuple[str | int, ...] = ()

    def merge_options(self) -> Hashable | None:
        evaluated = self.evaluation
        return ("explain", self.output, evaluated.method, evaluated.rule, evaluated.absolute, self.max_elements)

    def per_instance(self) -> dict[str, np.ndarray]:
        names = list(self.inputs)
        arrays = {f"start/{name}": start for name, start in zip(names, self.attribution.starts, strict=True)}
        if self.attribution.noise is not None:
            arrays.update({f"noise/{name}": noise for name, noise in zip(names, self.attribution.noise, strict=True)})
        arrays["class_index"] = self.attribution.class_index
        return arrays

    def check(self) -> int:
        return int(self.evaluation.evaluations * sum(value.size for value in self.inputs.values()))

    def run_stacked(self, stacked: Stacked) -> list[Any]:
        from service.compute.models.explained import merged_explanations  # noqa: PLC0415  (TensorFlow)

        return merged_explanations(self, stacked)
