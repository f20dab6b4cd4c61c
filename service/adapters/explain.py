"""Explanations: a §10 body -> the engine's job (numpy only), the engine's result -> KServe's `:explain` shape."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pybase64

from schemas.explain import MAX_PANELS, ExplainFields, NetworkExplanationRequest
from service import codec
from service.adapters.errors import located
from service.compute.explain.network import prepare_network_explanation
from service.compute.explain.prepare import Array, ExplainOptions, NetworkExplanation
from service.errors import ValidationFailed


def explain_options(body: ExplainFields) -> ExplainOptions:
    """The method fields of a §10 body."""
    return ExplainOptions(
        method=body.method,
        integration=body.integration,
        steps=body.steps,
        samples=body.samples,
        seed=body.seed,
        absolute=body.absolute,
    )


def decode_network_explanation(
    body: NetworkExplanationRequest, max_elements: int, png: bool = False, stop_at: float | None = None
) -> NetworkExplanation:
    """The body's tensors as numpy arrays in its dtype, checked against each other by the compute layer."""

    def tensor(value: Any, *loc: str | int) -> Array:
        return codec.decode(value, ("body", *loc), max_elements=max_elements, dtype=body.dtype)

    noise = body.noise_stddev
    with located():
        job = prepare_network_explanation(
            tensor(body.features, "features"),
            weights=[tensor(layer.weights, "layers", i, "weights") for i, layer in enumerate(body.layers)],
            activations=[layer.activation for layer in body.layers],
            alphas=[layer.alpha for layer in body.layers],
            bias=body.bias,
            dtype=body.dtype,
            options=explain_options(body),
            class_index=body.class_index,
            baseline=None if body.baseline is None else tensor(body.baseline, "baseline"),
            noise_stddev=None
            if noise is None
            else codec.decode(noise, ("body", "noise_stddev"), max_elements=max_elements, dtype="float64"),
            max_elements=max_elements,
        )
    features = job.attribution.inputs[0].shape[-1]
    if body.feature_names is not None and len(body.feature_names) != features:
        raise ValidationFailed.at(
            ("body", "feature_names"), f"{len(body.feature_names)} feature names for {features} features"
        )
    if png and job.attribution.instances > MAX_PANELS:
        raise ValidationFailed.at(
            ("body", "features"),
            f"a PNG draws at most {MAX_PANELS} instances, one panel each; got {job.attribution.instances}: send "
            "fewer instances or ask for JSON",
        )
    return dataclasses.replace(job, stop_at=stop_at)


def _number(value: Any) -> float | str:
    number = float(value)
    if np.isfinite(number):
        return number
    return "NaN" if np.isnan(number) else "Infinity" if number > 0 else "-Infinity"


def _instance_tensors(array: Array, encoding: codec.Encoding) -> list[dict[str, Any]]:
    """One response tensor per instance of (N, *shape) `array`: what `codec.encode` gives each row, made for all
    rows at once (a 1,024-instance answer spent most of its encoding time in per-row calls)."""
    if not np.isfinite(array).all():
        return [codec.encode(row, encoding) for row in array]
    shape, dtype = list(array.shape[1:]), array.dtype.name
    if encoding == "b64":
        little_endian = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        size = little_endian[0].nbytes if len(little_endian) else 0
        raw = little_endian.tobytes()
        if size % 3 == 0:  # whole base64 quanta per row: one encoding of all rows, cut at row boundaries
            text, width = pybase64.b64encode_as_string(raw), size // 3 * 4
            return [{"shape": shape, "dtype": dtype, "b64": text[i : i + width]} for i in range(0, len(text), width)]
        return [
            {"shape": shape, "dtype": dtype, "b64": pybase64.b64encode_as_string(raw[i : i + size])}
            for i in range(0, len(raw), size)
        ]
    return [{"shape": shape, "dtype": dtype, "values": row} for row in np.ascontiguousarray(array)]


def _numbers(array: Array) -> list[float | str]:
    if np.isfinite(array).all():
        values: list[float | str] = array.astype(np.float64).tolist()
        return values
    return [_number(value) for value in array]


def encode_attributions(
    result: Any,
    names: Sequence[str],
    *,
    method: str,
    device: str,
    dtype: str,
    feature_names: Sequence[str] | None,
    encoding: codec.Encoding,
    single: bool = False,
) -> dict[str, Any]:
    """KServe's `:explain` shape (API.md §10), attributions by input name; numbers as plain JSON numbers,
    tensors as §1. `single`: the request sent one instance without its axis, so `predictions` drops it."""
    predictions = result.predictions[0] if single else result.predictions
    attributions = [_instance_tensors(array, encoding) for array in result.attributions]
    prediction = _numbers(result.prediction)
    by_input = (
        [{names[0]: tensor} for tensor in attributions[0]]
        if len(names) == 1
        else [dict(zip(names, tensors, strict=True)) for tensors in zip(*attributions, strict=True)]
    )
    rows = zip(itertools.count(), result.classes.tolist(), prediction, by_input, strict=False)
    if result.convergence_delta is None:
        explanations = [
            {"instance": n, "class_index": k, "prediction": p, "attributions": found} for n, k, p, found in rows
        ]
    else:
        completeness = zip(_numbers(result.baseline_prediction), _numbers(result.convergence_delta), strict=True)
        explanations = [
            {
                "instance": n,
                "class_index": k,
                "prediction": p,
                "attributions": found,
                "baseline_prediction": baseline,
                "convergence_delta": delta,
            }
            for (n, k, p, found), (baseline, delta) in zip(rows, completeness, strict=True)
        ]
    document: dict[str, Any] = {
        "device": device,
        "method": method,
        "dtype": dtype,
        "predictions": codec.encode(predictions, encoding),
    }
    if feature_names is not None:
        document["feature_names"] = list(feature_names)
    document["explanations"] = explanations
    return document


def encode_explanation(
    job: NetworkExplanation,
    result: Any,
    *,
    device: str,
    dtype: str,
    feature_names: Sequence[str] | None,
    encoding: codec.Encoding,
) -> dict[str, Any]:
    """A posted network's answer: `encode_attributions` with its one input, `features`."""
    return encode_attributions(
        result,
        ["features"],
        method=job.evaluation.method,
        device=device,
        dtype=dtype,
        feature_names=feature_names,
        encoding=encoding,
        single=job.single,
    )


def plot_arguments(job: NetworkExplanation, result: Any, feature_names: Sequence[str] | None) -> dict[str, Any]:
    """What `plot_attributions` draws: bars labelled with the feature names (x1…xn without them)."""
    features = job.attribution.inputs[0].shape[-1]
    names = list(feature_names) if feature_names is not None else [f"x{i + 1}" for i in range(features)]
    return attribution_plot(result, names, job.evaluation.method)


def attribution_plot(result: Any, names: Sequence[str], method: str) -> dict[str, Any]:
    """`plot_attributions`' arguments: one panel per instance, every input's attributions flattened in order."""
    count = len(result.classes)
    return {
        "attributions": np.concatenate([np.reshape(array, (count, -1)) for array in result.attributions], axis=1),
        "names": list(names),
        "classes": [int(k) for k in result.classes],
        "predictions": [float(p) for p in result.prediction],
        "method": method,
        "deltas": None if result.convergence_delta is None else [float(d) for d in result.convergence_delta],
    }
