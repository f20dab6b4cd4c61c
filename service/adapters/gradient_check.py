"""`POST /v1/gradient-check`: a check body -> the network problem or tape inputs and gradient to check, at full
JSON precision in the check's dtype (with notes on every cast); a `GradientCheck` -> the response document."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from schemas.gradient_check import GradientCheckRequest, ModelGradientsCheck
from schemas.networks import NetworkRequest
from schemas.tape import TapeRequest
from service import codec
from service.adapters.errors import located
from service.adapters.models import decode_gradients
from service.adapters.networks import network_problem
from service.compute.gradcheck import (
    DEFAULT_ATOL,
    DEFAULT_EPSILON,
    DEFAULT_RTOL,
    CheckOptions,
    Comparison,
    GradientCheck,
    TapeCheck,
)
from service.compute.models.engine import GradientsJob
from service.compute.models.spec import FLOAT_DTYPES
from service.compute.networks import NetworkProblem
from service.compute.program import ComputeRequest, TapeInput
from service.engines import Call
from service.errors import Loc, ValidationFailed, format_loc
from service.models import Lease


def read_tensor(
    value: Any, loc: Loc, *, declared: str | None, bytes_dtype: str | None, max_elements: int
) -> np.ndarray[Any, Any]:
    """A request tensor as its own endpoint reads it: `declared` dtype, or base64 bytes without one as `bytes_dtype`."""
    reads_as = declared
    if reads_as is None and isinstance(value, dict) and "b64" in value and "dtype" not in value:
        reads_as = bytes_dtype
    return codec.decode(value, loc, max_elements=max_elements, dtype=reads_as)


def to_check_dtype(array: np.ndarray[Any, Any], loc: Loc, dtype: str, notes: list[str]) -> np.ndarray[Any, Any]:
    """A float tensor in the check's dtype; one sent as float32 is cast up, and a note says so."""
    if array.dtype == np.float32 and dtype == "float64":
        notes.append(f"{format_loc(loc)} was sent as float32 and is cast up to float64 (its float32 rounding stays).")
    with np.errstate(over="ignore"):
        cast = array.astype(dtype)
    if not np.isfinite(cast).all():  # the codec let only finite values in: this is float32 overflow
        raise ValidationFailed.at(loc, f"values overflow {dtype}; send dtype float64")
    return cast


def decode_float(
    value: Any, loc: Loc, *, bytes_dtype: str, dtype: str, max_elements: int, notes: list[str]
) -> np.ndarray[Any, Any]:
    """A float tensor at full JSON precision, in the check's dtype."""
    array = read_tensor(value, loc, declared=None, bytes_dtype=bytes_dtype, max_elements=max_elements)
    return to_check_dtype(array, loc, dtype, notes)


def dtype_note(what: str, body_dtype: str, dtype: str) -> list[str]:
    if body_dtype == dtype:
        return []
    return [
        f"The {what} body's dtype {body_dtype} is replaced by the check's dtype {dtype}: autodiff and finite "
        f"differences run in {dtype}."
    ]


def decode_network(body: NetworkRequest, dtype: str, max_elements: int, notes: list[str]) -> NetworkProblem:
    """The network body's tensors at full JSON precision in the check's dtype."""
    base: Loc = ("body", "network")

    def tensor(value: Any, *loc: str | int) -> np.ndarray[Any, Any]:
        return decode_float(
            value,
            (*base, *loc),
            bytes_dtype=body.dtype,
            dtype=dtype,
            max_elements=max_elements,
            notes=notes,
        )

    with located("network"):
        return network_problem(body, tensor, "float64" if dtype == "float64" else "float32")


def decode_tape(
    body: TapeRequest, dtype: str, max_elements: int, notes: list[str]
) -> tuple[dict[str, TapeInput], ComputeRequest]:
    """The tape body's inputs (as /v1/tape reads them, floats in the check's dtype) and its one gradient."""
    base: Loc = ("body", "tape")
    if len(body.compute) != 1 or body.compute[0].kind != "gradient":
        kinds = ", ".join(entry.kind for entry in body.compute) or "none"
        raise ValidationFailed.at(
            (*base, "compute"), f"a gradient check takes exactly one compute entry, of kind gradient; got {kinds}"
        )
    inputs: dict[str, TapeInput] = {}
    for name, spec in body.inputs.items():
        loc: Loc = (*base, "inputs", name, "value")
        # as /v1/tape reads inputs: base64 without a dtype is float64 bytes
        value = read_tensor(spec.value, loc, declared=spec.dtype, bytes_dtype=None, max_elements=max_elements)
        if value.dtype.kind == "i":
            # whole numbers written without a fraction are int32, as tf.constant (and /v1/tape) has them
            value = value if spec.dtype is not None else codec.cast(value, codec.constant_dtype(value, dtype), loc)
        else:
            value = to_check_dtype(value, loc, dtype, notes)
        inputs[name] = TapeInput(value, variable=spec.variable, trainable=spec.trainable)
    entry = body.compute[0]
    output_gradients = (
        None
        if entry.output_gradients is None
        else decode_float(
            entry.output_gradients,
            (*base, "compute", 0, "output_gradients"),
            bytes_dtype=body.dtype,
            dtype=dtype,
            max_elements=max_elements,
            notes=notes,
        )
    )
    gradient = ComputeRequest(
        "gradient",
        entry.target,
        tuple(entry.sources),
        output_gradients=output_gradients,
        unconnected=entry.unconnected,
    )
    return inputs, gradient


def comparison_document(comparison: Comparison) -> dict[str, Any]:
    return {
        "max_abs_error": _json_float(comparison.max_abs_error),
        "max_rel_error": _json_float(comparison.max_rel_error),
        "worst_index": comparison.worst_index,
        "passed": comparison.passed,
    }


def _json_float(value: float) -> float | str:
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def encode_check(result: GradientCheck, device: str, encoding: codec.Encoding) -> dict[str, Any]:
    """The response document (a `GradientCheckResponse`)."""
    checks = []
    for check in result.checks:
        document: dict[str, Any] = {
            "source": check.source,
            "autodiff": codec.encode(check.autodiff, encoding),
            "numerical": codec.encode(check.numerical, encoding),
            **comparison_document(check.comparison),
        }
        if check.claimed is not None and check.claimed_comparison is not None:
            document["claimed"] = {
                "value": codec.encode(check.claimed, encoding),
                **comparison_document(check.claimed_comparison),
            }
        checks.append(document)
    return {
        "device": device,
        "passed": result.passed,
        "dtype": result.dtype,
        **result.tolerances._asdict(),
        "max_rel_error": _json_float(result.max_rel_error),
        "verdict": result.verdict,
        "perturbed_elements": result.perturbed_elements,
        "checks": checks,
        "notes": result.notes,
    }


def decode_claimed(
    body: GradientCheckRequest, max_elements: int, notes: list[str], dtype: str | None = None
) -> dict[str, np.ndarray[Any, Any]]:
    """The caller's claimed gradients by source, in the check's dtype (`dtype`, else the body's)."""
    dtype = dtype or body.dtype
    return {
        name: decode_float(
            value,
            ("body", "claimed", name),
            bytes_dtype=dtype,
            dtype=dtype,
            max_elements=max_elements,
            notes=notes,
        )
        for name, value in (body.claimed or {}).items()
    }


def check_job(body: GradientCheckRequest, *, max_elements: int, max_fd_elements: int, deadline: float) -> Call:
    """The gradient-check engine's job: the network's check (batched finite differences on the networks
    engine) or the tape's (the program re-run per perturbation); both stop at `deadline`. Its errors are
    located relative to the check body (place them with `errors.located`)."""
    notes: list[str] = []
    claimed = decode_claimed(body, max_elements, notes)
    if body.network is not None:
        notes += dtype_note("network", body.network.dtype, body.dtype)
        problem = decode_network(body.network, body.dtype, max_elements, notes)
        options = _options(body, claimed, max_fd_elements, deadline, notes)
        return Call("check_network", {"problem": problem, "sources": body.sources, "options": options})
    if body.tape is not None:
        tape = body.tape
        notes += dtype_note("tape", tape.dtype, body.dtype)
        inputs, gradient = decode_tape(tape, body.dtype, max_elements, notes)
        run = TapeCheck(
            inputs=inputs,
            program=tape.program,
            gradient=gradient,
            watch=tape.watch,
            persistent=tape.persistent,
            watch_accessed_variables=tape.watch_accessed_variables,
            float_dtype=body.dtype,
            max_elements=max_elements,
        )
        options = _options(body, claimed, max_fd_elements, deadline, notes)
        return Call("check_tape", {"tape": run, "options": options})
    raise ValidationFailed.at(("body",), "send exactly one of network and tape")  # the schema requires one


def _options(
    body: GradientCheckRequest,
    claimed: dict[str, Any],
    max_fd_elements: int,
    deadline: float,
    notes: list[str],
    *,
    tolerances: tuple[float, float, float] | None = None,
) -> CheckOptions:
    epsilon, rtol, atol = tolerances or (body.epsilon, body.rtol, body.atol)
    return CheckOptions(
        claimed=claimed,
        epsilon=epsilon,
        rtol=rtol,
        atol=atol,
        max_fd_elements=max_fd_elements,
        stop_at=deadline,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------- served models

FLOAT32_TOLERANCES = (1e-3, 1e-2, 1e-3)
"""epsilon, rtol, atol for a float32 model (API.md §9): float32 finite differences cannot reach §5's defaults."""
FLOAT64_TOLERANCES = (DEFAULT_EPSILON, DEFAULT_RTOL, DEFAULT_ATOL)
MODEL = ("body", "model")


@contextmanager
def in_model_body() -> Iterator[None]:
    """A `:gradients` body's errors, found at ("body", ...), placed at ("body", "model", ...)."""
    try:
        yield
    except ValidationFailed as error:
        errors = [
            {**item, "loc": [*MODEL, *item["loc"][1:]]} if list(item["loc"][:1]) == ["body"] else item
            for item in error.errors or []
        ]
        detail = f"{format_loc(errors[0]['loc'])}: {errors[0]['msg']}" if errors else error.detail
        raise type(error)(detail, errors=errors or None, headers=error.headers, extra=error.extra) from None


def _tolerances(body: GradientCheckRequest, dtype: str) -> tuple[float, float, float]:
    """The body's epsilon, rtol and atol where it sent them, else the defaults of the model's dtype."""
    defaults = FLOAT32_TOLERANCES if dtype == "float32" else FLOAT64_TOLERANCES
    sent = body.model_fields_set
    chosen = (
        getattr(body, name) if name in sent else default
        for name, default in zip(("epsilon", "rtol", "atol"), defaults, strict=True)
    )
    epsilon, rtol, atol = chosen
    return epsilon, rtol, atol


def _float_sources(model: ModelGradientsCheck, job: GradientsJob, notes: list[str]) -> tuple[str, ...]:
    """The job's input sources that can be perturbed: an integer input named as a source is a 422, one that
    "inputs" brought in is left out (a note says so)."""
    info = job.served.signatures[job.signature].inputs
    integers = [name for name in job.request.sources if info[name].dtype not in FLOAT_DTYPES]
    for index, source in enumerate(model.sources):
        if source in integers:
            raise ValidationFailed.at(
                (*MODEL, "sources", index), f"input {source!r} is {info[source].dtype}: it has no gradient to check"
            )
    if integers:
        notes.append(f"Integer inputs have no gradient and are not checked: {', '.join(integers)}.")
    floats = tuple(name for name in job.request.sources if name not in integers)
    if not floats and not job.request.variables:
        raise ValidationFailed.at((*MODEL, "sources"), "no source with a gradient: every input named is an integer")
    return floats


def model_check_job(
    body: GradientCheckRequest, lease: Lease, *, max_elements: int, max_fd_elements: int, deadline: float
) -> Call:
    """The check of a served version's `:gradients` body: `check_model`'s job, in the model's own dtype (the
    output's), with §9's tolerances for float32 models unless the body sets them. Its errors are located
    relative to the check body (place them with `errors.located`)."""
    model = body.model
    if model is None:
        raise ValidationFailed.at(MODEL, "send a model")  # the route checks a model body only
    with in_model_body():
        job = decode_gradients(model, lease, max_elements)
    output = lease.signatures[job.signature].outputs[job.request.output]
    if "dtype" in body.model_fields_set and body.dtype != output.dtype:
        raise ValidationFailed.at(
            ("body", "dtype"),
            f"a model is checked in its own dtype, {output.dtype}; leave dtype out or send {output.dtype}",
        )
    notes = [
        f"Version {lease.number} of model {lease.name!r} (signature {job.signature!r}, output {output.name!r}) "
        f"is checked in its own dtype, {output.dtype}."
    ]
    request = dataclasses.replace(job.request, sources=_float_sources(model, job, notes))
    job = dataclasses.replace(job, request=request, loc=tuple(job.loc[1:]))  # the inputs' place in the model body
    claimed = decode_claimed(body, max_elements, notes, output.dtype)
    options = _options(body, claimed, max_fd_elements, deadline, notes, tolerances=_tolerances(body, output.dtype))
    return Call("check_model", {"job": job, "options": options})
