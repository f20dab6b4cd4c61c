"""`:explain` of a served signature: the explain kernel over F = the selected class of one output, every
instance × step (or sample) of stacked requests in one compiled call, chunked only where
TAPESERVE_MAX_ELEMENTS demands, and XLA-compiled from `compiled.XLA_ELEMENTS` evaluated input elements on
where the version's bucketed functions are. The compiled explainer lives in the version's function cache, so
it goes with the version."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.errors import InvalidInput, LimitExceeded
from service.compute.explain.engine import ExplanationResult
from service.compute.explain.function import FunctionExplainer
from service.compute.explain.prepare import AttributionInputs, ExplainOptions, attribution_inputs, evaluation
from service.compute.models.compiled import XLA_ELEMENTS
from service.compute.models.engine import ExplainJob, ModelsEngine, Stacked
from service.compute.models.spec import FLOAT_DTYPES


def _explainer(job: ExplainJob) -> FunctionExplainer:
    served, signature, output = job.served, job.signature, job.output
    shapes = {name: tuple(int(size) for size in value.shape[1:]) for name, value in job.inputs.items()}
    dtype = next(iter(job.inputs.values())).dtype.name
    call = served.calls[signature]

    def selected(inputs: Mapping[str, Any]) -> Any:
        found = call(dict(inputs))[output]
        return found[:, None] if len(found.shape) == 1 else found  # a (batch,) output is one unit

    def make() -> FunctionExplainer:
        # large calls XLA-compiled where the version's bucketed functions may be (compiled.XLA_ELEMENTS)
        xla = served.functions.xla and served.xla(signature)
        return FunctionExplainer(
            selected, shapes, dtype, max_elements=job.max_elements, xla_elements=XLA_ELEMENTS if xla else None
        )

    key = ("explain", signature, output, tuple(shapes.items()), dtype, job.max_elements)
    explainer: FunctionExplainer = served.functions.get(key, make)
    return explainer


def merged_explanations(job: ExplainJob, stacked: Stacked) -> list[ExplanationResult]:
    """The attributions of every job whose instances `stacked` holds (all of `job`'s merge options), one
    answer per job."""
    names = list(job.inputs)
    extras = stacked.per_instance
    attribution = AttributionInputs(
        inputs=tuple(stacked.inputs[name] for name in names),
        starts=tuple(extras[f"start/{name}"] for name in names),
        noise=tuple(extras[f"noise/{name}"] for name in names) if job.evaluation.noisy else None,
        class_index=extras["class_index"],
    )
    (result,) = _explainer(job).run([(job.evaluation, attribution)])
    return [_part(result, part) for part in stacked.parts()]


def _part(result: ExplanationResult, part: slice) -> ExplanationResult:
    def cut(value: Any) -> Any:
        return None if value is None else value[part]

    return ExplanationResult(
        predictions=result.predictions[part],
        classes=result.classes[part],
        prediction=result.prediction[part],
        attributions=tuple(value[part] for value in result.attributions),
        baseline_prediction=cut(result.baseline_prediction),
        convergence_delta=cut(result.convergence_delta),
    )


WARM_METHODS = (
    ExplainOptions(),
    ExplainOptions(method="saliency"),
    ExplainOptions(method="gradient_x_input"),
    ExplainOptions(method="smoothgrad"),
)
"""The explanations a version runs before it serves, with §10's defaults: the first traces the one compiled
function every method, step count and instance count shares below XLA_ELEMENTS; the others run each method's
branch of it once."""


def warm_explanations(served: Any, signature: str, zeros: dict[str, np.ndarray], max_elements: int) -> None:
    """Run every method of `WARM_METHODS` on `zeros` as a request's job runs (see `loading.warm_up`), where
    the signature can be explained: float inputs of one dtype, a float (batch,) or (batch, classes) output.
    A model that cannot be explained there is still served (its explanations answer what goes wrong)."""
    info = served.signatures[signature]
    outputs = [
        found
        for found in info.outputs.values()
        if found.dtype in FLOAT_DTYPES and found.shape is not None and found.batched and len(found.shape) <= 2
    ]
    dtypes = {value.dtype.name for value in zeros.values()}
    if not outputs or len(dtypes) != 1 or not dtypes <= set(FLOAT_DTYPES):
        return
    output, (dtype,) = outputs[0], dtypes
    units = output.shape[-1] if output.shape is not None and len(output.shape) == 2 else 1
    for options in WARM_METHODS:
        evaluated = evaluation(options, dtype)
        attribution = attribution_inputs(zeros, evaluated, single=False, units=units or 1, max_elements=max_elements)
        job = ExplainJob(served, signature, zeros, output.name, evaluated, attribution, max_elements)
        try:
            ModelsEngine().run([job])
        except (tf.errors.OpError, ValueError, TypeError, InvalidInput, LimitExceeded):
            return
