"""Served models over TensorFlow Serving's REST API (API.md §9): list, status, metadata and `:predict`.

Every error of these routes is the usual problem+json with one more member, `error` (the detail), which is
where TF Serving's clients read the message.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.convertors import Convertor, register_url_convertor

from schemas.models import (
    GradientsRequest,
    GradientsResponse,
    JacobianRequest,
    JacobianResponse,
    ModelList,
    ModelMetadata,
    ModelStatus,
    PredictRequest,
    PredictResponse,
)
from schemas.problems import PROBLEM_RESPONSES, problem_responses
from service.adapters import models as adapt
from service.deps import ModelsDep, SettingsDep, WorkerDep
from service.errors import InternalError, as_service_error
from service.http import JSONBody, JSONBytesResponse, StrictJSONRoute, json_response
from service.models import ModelRepository
from service.worker import Worker


class TFServingRoute(StrictJSONRoute):
    """A route whose problems also carry TF Serving's `error` member."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_error_member(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                error = as_service_error(exc)
                if isinstance(error, InternalError):
                    raise  # a bug: the one handler logs it with its traceback
                error.extra = {**error.extra, "error": error.detail}
                raise error from exc

        return with_error_member


class SegmentConvertor(Convertor[str]):
    """A model name or version in a path: no `/` and no `:`, which starts a verb (as in TF Serving's own URL
    pattern), so that `GET /v1/models/x:predict` is a 405, not the status of a model named `x:predict`."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())
router = APIRouter(prefix="/v1/models", tags=["models"], route_class=TFServingRoute)

PREDICT_BODY = JSONBody(PredictRequest, undeclared_is_json=True)
READ_PROBLEMS = problem_responses(401, 404, 422)
PREDICT_PROBLEMS = {**PROBLEM_RESPONSES, **problem_responses(404, 503)}
Name = Annotated[str, Path(description="The model's folder name in the repository.", examples=["diabetes"])]
Version = Annotated[str, Path(description="A version: a positive integer.", examples=["1"])]


@router.get("", response_model=ModelList, responses=problem_responses(401), summary="The served models")
async def list_models(models: ModelsDep) -> JSONBytesResponse:
    return json_response(adapt.model_list(models))


@router.get(
    "/{name:segment}",
    response_model=ModelStatus,
    responses=READ_PROBLEMS,
    summary="A model's status: every version's state (TF Serving's GetModelStatus)",
)
async def model_status(name: Name, models: ModelsDep) -> JSONBytesResponse:
    return json_response(adapt.model_status(models.status(name)))


@router.get(
    "/{name:segment}/versions/{version:segment}",
    response_model=ModelStatus,
    responses=READ_PROBLEMS,
    summary="One version's status",
)
async def model_version_status(name: Name, version: Version, models: ModelsDep) -> JSONBytesResponse:
    return json_response(adapt.model_status(models.status(name, adapt.parse_version(version))))


@router.get(
    "/{name:segment}/metadata",
    response_model=ModelMetadata,
    responses={**READ_PROBLEMS, **problem_responses(503)},
    summary="The signatures of a model's highest available version (TF Serving's signature_def JSON)",
)
async def model_metadata(name: Name, models: ModelsDep) -> JSONBytesResponse:
    with models.lease(name) as lease:
        return json_response(adapt.model_metadata(lease))


@router.get(
    "/{name:segment}/versions/{version:segment}/metadata",
    response_model=ModelMetadata,
    responses={**READ_PROBLEMS, **problem_responses(503)},
    summary="The signatures of one version",
)
async def model_version_metadata(name: Name, version: Version, models: ModelsDep) -> JSONBytesResponse:
    with models.lease(name, adapt.parse_version(version)) as lease:
        return json_response(adapt.model_metadata(lease))


PREDICT_DESCRIPTION = (
    "TF Serving's predict: `instances` (row format) answered with `predictions`, or `inputs` (columnar) "
    "answered with `outputs`. Inputs are checked against the signature (422 naming the input, its shape and "
    "dtype); a version still loading is a 503 with Retry-After."
)


async def _predict(
    request: Request, name: str, version: str | None, *, models: ModelRepository, worker: Worker, max_elements: int
) -> JSONBytesResponse:
    body = (await PREDICT_BODY.read(request)).model  # a body that is not JSON is a 400 whatever the path says
    number = None if version is None else adapt.parse_version(version)
    with models.lease(name, number) as lease:
        job = adapt.decode_predict(body, lease, max_elements)
        outputs = await worker.run("models", job)
    return json_response(adapt.encode_predict(body, outputs))


@router.post(
    "/{name:segment}:predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=PREDICT_PROBLEMS,
    openapi_extra=PREDICT_BODY.openapi,
    summary="Predict with a model's highest available version",
    description=PREDICT_DESCRIPTION,
)
async def predict(
    request: Request, name: Name, models: ModelsDep, worker: WorkerDep, settings: SettingsDep
) -> JSONBytesResponse:
    return await _predict(request, name, None, models=models, worker=worker, max_elements=settings.max_elements)


@router.post(
    "/{name:segment}/versions/{version:segment}:predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    responses=PREDICT_PROBLEMS,
    openapi_extra=PREDICT_BODY.openapi,
    summary="Predict with one version",
    description=PREDICT_DESCRIPTION,
)
async def predict_version(  # noqa: PLR0917  (FastAPI passes dependencies by keyword)
    request: Request, name: Name, version: Version, models: ModelsDep, worker: WorkerDep, settings: SettingsDep
) -> JSONBytesResponse:
    return await _predict(request, name, version, models=models, worker=worker, max_elements=settings.max_elements)


GRADIENTS_BODY = JSONBody(GradientsRequest, undeclared_is_json=True)
GRADIENTS_DESCRIPTION = (
    "What `tape.gradient(target, sources)` gives in process on the same model and batch: the target is an "
    "output (the gradient of its sum), one class per instance (`class_index`), a cotangent "
    "(`output_gradients`), or a loss; the sources are inputs and/or the trainable variables."
)


async def _gradients(
    request: Request, name: str, version: str | None, *, models: ModelRepository, worker: Worker, max_elements: int
) -> JSONBytesResponse:
    body = (await GRADIENTS_BODY.read(request)).model
    number = None if version is None else adapt.parse_version(version)
    with models.lease(name, number) as lease:
        job = adapt.decode_gradients(body, lease, max_elements)
        result = await worker.run("models", job)
        document = adapt.encode_gradients(lease, job, result, worker.pinned_device, body.response_encoding)
    return json_response(document)


@router.post(
    "/{name:segment}:gradients",
    response_model=GradientsResponse,
    responses=PREDICT_PROBLEMS,
    openapi_extra=GRADIENTS_BODY.openapi,
    summary="Gradients of a model's highest available version",
    description=GRADIENTS_DESCRIPTION,
)
async def gradients(
    request: Request, name: Name, models: ModelsDep, worker: WorkerDep, settings: SettingsDep
) -> JSONBytesResponse:
    return await _gradients(request, name, None, models=models, worker=worker, max_elements=settings.max_elements)


@router.post(
    "/{name:segment}/versions/{version:segment}:gradients",
    response_model=GradientsResponse,
    responses=PREDICT_PROBLEMS,
    openapi_extra=GRADIENTS_BODY.openapi,
    summary="Gradients of one version",
    description=GRADIENTS_DESCRIPTION,
)
async def gradients_version(  # noqa: PLR0917  (FastAPI passes dependencies by keyword)
    request: Request, name: Name, version: Version, models: ModelsDep, worker: WorkerDep, settings: SettingsDep
) -> JSONBytesResponse:
    return await _gradients(request, name, version, models=models, worker=worker, max_elements=settings.max_elements)


JACOBIAN_BODY = JSONBody(JacobianRequest, undeclared_is_json=True)
JACOBIAN_DESCRIPTION = (
    "The tape's `batch_jacobian` of an output with respect to an input: (batch, *output_shape, *input_shape), "
    "or with `class_index` that class's row, (batch, *input_shape); refused (422) before it is computed when "
    "it would exceed TAPESERVE_MAX_ELEMENTS."
)


async def _jacobian(
    request: Request, name: str, version: str | None, *, models: ModelRepository, worker: Worker, max_elements: int
) -> JSONBytesResponse:
    body = (await JACOBIAN_BODY.read(request)).model
    number = None if version is None else adapt.parse_version(version)
    with models.lease(name, number) as lease:
        job = adapt.decode_jacobian(body, lease, max_elements)
        result = await worker.run("models", job)
        document = adapt.encode_jacobian(lease, job, result, worker.pinned_device, body.response_encoding)
    return json_response(document)


@router.post(
    "/{name:segment}:jacobian",
    response_model=JacobianResponse,
    responses=PREDICT_PROBLEMS,
    openapi_extra=JACOBIAN_BODY.openapi,
    summary="Per-instance Jacobians of a model's highest available version",
    description=JACOBIAN_DESCRIPTION,
)
async def jacobian(
    request: Request, name: Name, models: ModelsDep, worker: WorkerDep, settings: SettingsDep
) -> JSONBytesResponse:
    return await _jacobian(request, name, None, models=models, worker=worker, max_elements=settings.max_elements)


@router.post(
    "/{name:segment}/versions/{version:segment}:jacobian",
    response_model=JacobianResponse,
    responses=PREDICT_PROBLEMS,
    openapi_extra=JACOBIAN_BODY.openapi,
    summary="Per-instance Jacobians of one version",
    description=JACOBIAN_DESCRIPTION,
)
async def jacobian_version(  # noqa: PLR0917  (FastAPI passes dependencies by keyword)
    request: Request, name: Name, version: Version, models: ModelsDep, worker: WorkerDep, settings: SettingsDep
) -> JSONBytesResponse:
    return await _jacobian(request, name, version, models=models, worker=worker, max_elements=settings.max_elements)
