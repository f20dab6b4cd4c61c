"""`POST /v1/tape`: a small program on a GradientTape; `GET /v1/ops`: the functions it may call."""

from __future__ import annotations

from fastapi import APIRouter

from schemas.problems import PROBLEM_RESPONSES
from schemas.tape import OpsResponse, TapeRequest, TapeResponse
from service.adapters import tape as adapt
from service.adapters.errors import located
from service.deps import SettingsDep, WorkerDep
from service.http import JSONBytesResponse, StrictJSONRoute, json_response

router = APIRouter(prefix="/v1", tags=["tape"], route_class=StrictJSONRoute)


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
    job = adapt.decode_job(body, settings.max_elements)
    with located():
        run = await worker.run("programs", job)
    return json_response(adapt.encode_run(run, worker.pinned_device, body.response_encoding))


_OPS: list[OpsResponse] = []
"""The op table's document, read in the worker once: it never changes while the process runs."""


@router.get("/ops", response_model=OpsResponse, summary="The functions a /v1/tape program may call")
async def ops(worker: WorkerDep) -> JSONBytesResponse:
    if not _OPS:
        _OPS.append(OpsResponse.model_validate(adapt.ops_document(await worker.run("programs", adapt.LIST_OPS))))
    return json_response(_OPS[0])
