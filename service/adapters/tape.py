"""`POST /v1/tape`: a tape body -> the interpreter's inputs and compute requests; a `TapeRun` -> the response
document; the op table -> `GET /v1/ops`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from schemas.tape import TapeRequest
from service import codec
from service.compute.program import ComputeRequest, TapeInput, TapeRun
from service.engines import Call
from service.vocabulary import DTYPES

if TYPE_CHECKING:
    from service.compute.program.ops import OpInfo

DTYPE_CONSTANTS = [*(f"tf.{name}" for name in DTYPES), "float"]
"""The dtype names a program may write."""


def decode_inputs(body: TapeRequest, max_elements: int) -> dict[str, TapeInput]:
    """The program's inputs as numpy arrays: a declared dtype, else as tf.constant would type the values."""
    inputs = {}
    for name, spec in body.inputs.items():
        loc = ("body", "inputs", name, "value")
        value = codec.decode(spec.value, loc, max_elements=max_elements, dtype=spec.dtype)
        if spec.dtype is None:
            # as tf.constant: whole numbers written without a fraction are int32, the rest the float dtype
            value = codec.cast(value, codec.constant_dtype(value, body.dtype), loc)
        inputs[name] = TapeInput(value, variable=spec.variable, trainable=spec.trainable)
    return inputs


def decode_compute(body: TapeRequest, max_elements: int) -> list[ComputeRequest]:
    """The body's compute entries, their output gradients and tangents as numpy arrays."""
    requests = []
    for index, entry in enumerate(body.compute):
        loc = ("body", "compute", index)
        output_gradients = (
            None
            if entry.output_gradients is None
            else codec.decode(entry.output_gradients, (*loc, "output_gradients"), max_elements=max_elements)
        )
        tangents = (
            None
            if entry.tangents is None
            else tuple(
                codec.decode(tangent, (*loc, "tangents", i), max_elements=max_elements)
                for i, tangent in enumerate(entry.tangents)
            )
        )
        requests.append(
            ComputeRequest(
                entry.kind,
                entry.target,
                tuple(entry.sources),
                output_gradients=output_gradients,
                unconnected=entry.unconnected,
                tangents=tangents,
            )
        )
    return requests


LIST_OPS = Call("list_ops", {})
"""The programs engine's job that answers its op table (it holds TensorFlow's functions: read in the worker)."""


def decode_job(body: TapeRequest, max_elements: int) -> Call:
    """The programs engine's job. The program's static checks run there, before any TensorFlow op: the
    construct table they follow holds TensorFlow's functions."""
    return Call(
        "run_tape",
        {
            "inputs": decode_inputs(body, max_elements),
            "program": body.program,
            "compute": decode_compute(body, max_elements),
            "watch": body.watch,
            "persistent": body.persistent,
            "watch_accessed_variables": body.watch_accessed_variables,
            "outputs": body.outputs,
            "float_dtype": body.dtype,
            "max_elements": max_elements,
        },
    )


def encode_run(run: TapeRun, device: str, encoding: codec.Encoding) -> dict[str, Any]:
    """The response document (a `TapeResponse`)."""
    return {
        "device": device,
        "values": {name: codec.encode(value, encoding) for name, value in run.values.items()},
        "results": [
            {
                "kind": result.kind,
                "target": result.target,
                "sources": list(result.sources),
                "values": [None if value is None else codec.encode(value, encoding) for value in result.values],
                "warnings": list(result.warnings),
            }
            for result in run.results
        ],
        "warnings": list(run.warnings),
    }


def ops_document(ops: Sequence[OpInfo]) -> dict[str, Any]:
    """The `OpsResponse` document: every function a program may call (`ops`, the `LIST_OPS` job's answer), and
    the dtype constants."""
    return {
        "ops": [
            {"name": op.name, "tf_names": list(op.tf_names), "signature": op.signature, "summary": op.summary}
            for op in ops
        ],
        "constants": DTYPE_CONSTANTS,
    }
