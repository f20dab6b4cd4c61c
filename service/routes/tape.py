"""`POST /v1/tape`: a small program on a GradientTape; `GET /v1/ops`: the functions it may call."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from schemas.problems import PROBLEM_RESPONSES
from schemas.tape import OpsResponse, TapeRequest, TapeResponse
from service import codec
from service.adapters.errors import located
from service.compute.program import ComputeRequest, TapeInput, TapeRun, list_ops, parse_program, run_tape
from service.deps import SettingsDep, WorkerDep
from service.http import JSONBytesResponse, StrictJSONRoute, json_response

router = APIRouter(prefix="/v1", tags=["tape"], route_class=StrictJSONRoute)

DTYPE_CONSTANTS = ["tf.float32", "tf.float64", "tf.int32", "tf.int64", "float"]


def decode_inputs(body: TapeRequest, max_elements: int) -> dict[str, TapeInput]:
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


def encode_run(run: TapeRun, device: str, encoding: codec.Encoding) -> dict[str, Any]:
    return {
        "device": device,
        "values": {name: codec.encode(value, encoding) for name, value in run.values.items()},
        "results": [
            {
                "kind": result.kind,
                "target": result.target,
                "sources": list(result.sources),
                "values": [None if value is None else codec.encode(value, encoding) for value in result.values],
            }
            for result in run.results
        ],
    }


@router.post(
    "/tape",
    response_model=TapeResponse,
    responses=PROBLEM_RESPONSES,
    summary="Run a program on a GradientTape and compute gradients, Jacobians, Hessians, JVPs",
    description="The program is TensorFlow-flavoured Python syntax, evaluated by a whitelisting interpreter "
    "(never eval/exec). A non-persistent tape asked for a second result is a 422 of type "
    "`.../non-persistent-tape` with `compute_index` and TensorFlow's own message.",
)
async def tape(body: TapeRequest, worker: WorkerDep, settings: SettingsDep) -> JSONBytesResponse:
    with located():
        parsed = parse_program(body.program)  # static checks answer before the job queues
    inputs = decode_inputs(body, settings.max_elements)
    compute = decode_compute(body, settings.max_elements)
    with located():
        run = await worker.run(
            run_tape,
            inputs,
            parsed,
            compute=compute,
            watch=body.watch,
            persistent=body.persistent,
            watch_accessed_variables=body.watch_accessed_variables,
            outputs=body.outputs,
            float_dtype=body.dtype,
            max_elements=settings.max_elements,
        )
    return json_response(encode_run(run, worker.pinned_device, body.response_encoding))


@router.get("/ops", response_model=OpsResponse, summary="The functions a /v1/tape program may call")
async def ops() -> OpsResponse:
    return OpsResponse.model_validate(
        {
            "ops": [
                {"name": op.name, "tf_names": list(op.tf_names), "signature": op.signature, "summary": op.summary}
                for op in list_ops()
            ],
            "constants": DTYPE_CONSTANTS,
        }
    )
