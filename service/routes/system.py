"""Health, readiness and service information."""

from __future__ import annotations

from fastapi import APIRouter

from schemas.models import ModelSummary
from schemas.system import FunctionCache, Health, Info, Limits, Readiness
from schemas.tensors import MAX_RANK
from service import __version__
from service.deps import DrainDep, HttpWarmDep, ModelsDep, SettingsDep, WorkerDep
from service.http import JSONBytesResponse, json_response

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health, summary="Liveness: 200 while the process serves")
async def healthz() -> JSONBytesResponse:
    return json_response(Health())


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: 200 once the worker is warm and the models found at start are loaded (or failed), "
    "503 before and after SIGTERM",
    responses={503: {"model": Readiness, "description": "Still starting, or draining after SIGTERM"}},
)
async def readyz(worker: WorkerDep, http_warm: HttpWarmDep, drain: DrainDep, models: ModelsDep) -> JSONBytesResponse:
    if drain.draining:
        return json_response(Readiness(status="draining"), status_code=503, headers={"Retry-After": "1"})
    if worker.ready and http_warm and models.ready:
        return json_response(Readiness(status="ready"))
    return json_response(Readiness(status="starting"), status_code=503, headers={"Retry-After": "1"})


@router.get("/v1/info", response_model=Info, summary="Versions, pinned device, visible devices and limits")
async def info(worker: WorkerDep, settings: SettingsDep, models: ModelsDep) -> JSONBytesResponse:
    stats = worker.stats
    document = Info(
        version=__version__,
        tensorflow=worker.tf_version,
        device=worker.pinned_device,
        visible_devices=worker.visible_devices,
        ready=worker.ready,
        limits=Limits(
            max_body_bytes=settings.max_body_bytes,
            max_elements=settings.max_elements,
            max_rank=MAX_RANK,
            timeout_s=settings.timeout_s,
            queue_limit=settings.queue_limit,
            max_fd_elements=settings.max_fd_elements,
        ),
        function_cache=FunctionCache(**worker.engine_stats()["networks"]),
        models=[
            ModelSummary(name=name, versions=[str(number) for number in versions], ready=bool(versions))
            for name, versions in models.listing()
        ],
        batching={
            "window_ms": settings.batch_window_ms,
            "max_requests": settings.max_batch_requests,
            "merged_calls": stats.merged_calls,
            "merged_jobs": stats.merged_jobs,
        },
    )
    return json_response(document)
