"""Served models over TensorFlow Serving's REST API (API.md §9): list, status, metadata and `:predict`.

Every error of these routes is the usual problem+json with one more member, `error` (the detail), which is
where TF Serving's clients read the message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Path, Request, Response
from fastapi.routing import APIRoute
from starlette.convertors import Convertor, register_url_convertor

from schemas.explain import MAX_PANELS
from schemas.models import (
    ExplainRequest,
    GradientsRequest,
    GradientsResponse,
    JacobianRequest,
    JacobianResponse,
    ModelExplanationResponse,
    ModelList,
    ModelMetadata,
    ModelStatus,
    PredictRequest,
    PredictResponse,
)
from schemas.problems import PROBLEM_RESPONSES, problem_responses
from service.adapters import models as adapt
from service.adapters.explain import attribution_plot
from service.adapters.plots import etag
from service.deps import ModelsDep, WorkerDep
from service.engines import Call
from service.errors import TF_SERVING_PREFIX, ValidationFailed
from service.http import (
    DirectRoute,
    Endpoint,
    JSONBody,
    JSONBytesResponse,
    ParsedBody,
    StrictJSONRoute,
    json_response,
)
from service.models import Lease, ModelRepository
from service.routes.explanations import RESPONSES as EXPLANATION_RESPONSES
from service.routes.explanations import wants_png
from service.worker import Worker


class TFServingRoute(DirectRoute, StrictJSONRoute):
    """A route on TF Serving's paths, called directly (`DirectRoute`) where its endpoint allows it. Its
    problems carry TF Serving's `error` member as every problem on these paths does (`errors.problem_response`)."""


class SegmentConvertor(Convertor[str]):
    """A model name or version in a path: no `/` and no `:`, which starts a verb (as in TF Serving's own URL
    pattern), so that `GET /v1/models/x:predict` is a 405, not the status of a model named `x:predict`."""

    regex = "[^/:]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("segment", SegmentConvertor())
PREFIX = TF_SERVING_PREFIX
ROUTES: list[tuple[str, Callable[..., Awaitable[Response]], dict[str, Any]]] = []
"""`(path, endpoint, add_api_route's options)` of every route here, in the order `install` adds them."""


def route(method: str, path: str, **options: Any) -> Callable[[Endpoint], Endpoint]:
    """Declares `endpoint` a route of `install`'s (as `APIRouter.get`, but not added to a router yet)."""

    def declare(endpoint: Endpoint) -> Endpoint:
        ROUTES.append((PREFIX + path, endpoint, {"methods": [method], **options}))
        return endpoint

    return declare


def install(app: FastAPI, route_class: type[APIRoute] = TFServingRoute) -> None:
    """Add the routes to the app's own router, tagged `models`, as `TFServingRoute`s: the direct call of a
    `DirectRoute` is the route's own app, which FastAPI's included routers do not use."""
    for path, endpoint, options in ROUTES:
        app.router.add_api_route(path, endpoint, route_class_override=route_class, tags=["models"], **options)


READ_PROBLEMS = problem_responses(401, 404, 422)
METADATA_PROBLEMS = {**READ_PROBLEMS, **problem_responses(503)}
PREDICT_PROBLEMS = {**PROBLEM_RESPONSES, **problem_responses(404, 503)}
Name = Annotated[str, Path(description="The model's folder name in the repository.", examples=["diabetes"])]
Version = Annotated[str, Path(description="A version: a positive integer.", examples=["1"])]


def get(
    path: str, response_model: type[Any], summary: str, responses: dict[int | str, dict[str, Any]] = READ_PROBLEMS
) -> Callable[[Endpoint], Endpoint]:
    """Declares a `GET` route answering `response_model`, its problems documented by `responses`."""
    return route("GET", path, response_model=response_model, responses=responses, summary=summary)


@get("", ModelList, "The served models", problem_responses(401))
async def list_models(models: ModelsDep) -> JSONBytesResponse:
    return json_response(adapt.model_list(models))


@get("/{name:segment}", ModelStatus, "A model's status: every version's state (TF Serving's GetModelStatus)")
async def model_status(name: Name, models: ModelsDep) -> JSONBytesResponse:
    return json_response(adapt.model_status(models.status(name)))


@get("/{name:segment}/versions/{version:segment}", ModelStatus, "One version's status")
async def model_version_status(name: Name, version: Version, models: ModelsDep) -> JSONBytesResponse:
    return json_response(adapt.model_status(models.status(name, adapt.parse_version(version))))


@get(
    "/{name:segment}/metadata",
    ModelMetadata,
    "The signatures of a model's highest available version (TF Serving's signature_def JSON)",
    METADATA_PROBLEMS,
)
async def model_metadata(name: Name, models: ModelsDep) -> JSONBytesResponse:
    with models.lease(name) as lease:
        return json_response(adapt.model_metadata(lease))


@get(
    "/{name:segment}/versions/{version:segment}/metadata",
    ModelMetadata,
    "The signatures of one version",
    METADATA_PROBLEMS,
)
async def model_version_metadata(name: Name, version: Version, models: ModelsDep) -> JSONBytesResponse:
    with models.lease(name, adapt.parse_version(version)) as lease:
        return json_response(adapt.model_metadata(lease))


PREDICT_DESCRIPTION = (
    "TF Serving's predict: `instances` (row format) answered with `predictions`, or `inputs` (columnar) "
    "answered with `outputs`. Inputs are checked against the signature (422 naming the input, its shape and "
    "dtype); a version still loading is a 503 with Retry-After."
)
GRADIENTS_DESCRIPTION = (
    "What `tape.gradient(target, sources)` gives in process on the same model and batch: the target is an "
    "output (the gradient of its sum), one class per instance (`class_index`), a cotangent "
    "(`output_gradients`), or a loss; the sources are inputs and/or the trainable variables."
)
JACOBIAN_DESCRIPTION = (
    "The tape's `batch_jacobian` of an output with respect to an input: (batch, *output_shape, *input_shape), "
    "or with `class_index` that class's row, (batch, *input_shape); refused (422) before it is computed when "
    "it would exceed TAPESERVE_MAX_ELEMENTS."
)
EXPLAIN_DESCRIPTION = (
    "Attributions of the served model's prediction (integrated gradients, saliency, gradient × input, "
    "SmoothGrad), F the selected class of `output`, with the completeness check of integrated gradients "
    "(prediction, baseline_prediction, convergence_delta) always reported. Every instance × step is one "
    "compiled call; concurrent requests are merged. With `Accept: image/png`, a bar chart per instance."
)
Job = TypeVar("Job")


@dataclass(frozen=True)
class Asked:
    """One verb's request: the parsed body (its large arrays read straight into numpy, see `adapt.ARRAYS`),
    the version it leases, the worker that computes it and the HTTP request."""

    parsed: ParsedBody[Any]
    lease: Lease
    worker: Worker
    request: Request

    @property
    def body(self) -> Any:
        return self.parsed.model

    def job(self, decode: Callable[[Any, Lease, int, adapt.Decoded], Job]) -> Job:
        """The engine's job `decode` makes of the body, bounded by the settings' element limit (the settings
        are the worker's, the app's one object: a dependency of its own costs every request)."""
        return decode(self.body, self.lease, self.worker.settings.max_elements, self.parsed.arrays)


Answer = Callable[[Asked], Awaitable[Response]]
"""A verb's answer to one request."""


async def _predict(asked: Asked) -> Response:
    outputs = await asked.worker.run("models", asked.job(adapt.decode_predict))
    return json_response(adapt.encode_predict(asked.body, outputs, asked.parsed.arrays))


async def _gradients(asked: Asked) -> Response:
    job = asked.job(adapt.decode_gradients)
    result = await asked.worker.run("models", job)
    device, encoding = asked.worker.pinned_device, asked.body.response_encoding
    return json_response(adapt.encode_gradients(asked.lease, job, result, device, encoding))


async def _jacobian(asked: Asked) -> Response:
    job = asked.job(adapt.decode_jacobian)
    result = await asked.worker.run("models", job)
    device, encoding = asked.worker.pinned_device, asked.body.response_encoding
    return json_response(adapt.encode_jacobian(asked.lease, job, result, device, encoding))


async def _explain(asked: Asked) -> Response:
    body, worker, png = asked.body, asked.worker, wants_png(asked.request.headers.get("accept", ""))
    deadline = worker.deadline()
    job, labels = asked.job(adapt.decode_explain)
    if png and job.attribution.instances > MAX_PANELS:
        raise ValidationFailed.at(
            job.loc,
            f"a PNG draws at most {MAX_PANELS} instances, one panel each; got {job.attribution.instances}: send "
            "fewer instances or ask for JSON",
        )
    result = await worker.run("models", job, deadline)
    if not png:
        return json_response(adapt.encode_explain(asked.lease, job, result, worker.pinned_device, body))
    figure = Call("plot_attributions", {**attribution_plot(result, labels, job.evaluation.method), "theme": body.theme})
    image = await worker.run("plots", figure, deadline)
    return Response(image, media_type="image/png", headers={"ETag": etag(image)})


@dataclass(frozen=True)
class Verb:
    """One `POST {model}:verb`, registered for both model paths (the highest version, and one version)."""

    name: str
    body: JSONBody[Any]
    response_model: type[Any]
    answer: Answer
    summaries: tuple[str, str]
    description: str
    responses: dict[int | str, dict[str, Any]] = field(default_factory=lambda: PREDICT_PROBLEMS)
    exclude_none: bool = False


VERBS = (
    Verb(
        "predict",
        JSONBody(PredictRequest, arrays=adapt.ARRAYS, undeclared_is_json=True),
        PredictResponse,
        _predict,
        ("Predict with a model's highest available version", "Predict with one version"),
        PREDICT_DESCRIPTION,
        exclude_none=True,
    ),
    Verb(
        "gradients",
        JSONBody(GradientsRequest, arrays=adapt.ARRAYS, undeclared_is_json=True),
        GradientsResponse,
        _gradients,
        ("Gradients of a model's highest available version", "Gradients of one version"),
        GRADIENTS_DESCRIPTION,
    ),
    Verb(
        "jacobian",
        JSONBody(JacobianRequest, arrays=adapt.ARRAYS, undeclared_is_json=True),
        JacobianResponse,
        _jacobian,
        ("Per-instance Jacobians of a model's highest available version", "Per-instance Jacobians of one version"),
        JACOBIAN_DESCRIPTION,
    ),
    Verb(
        "explain",
        JSONBody(ExplainRequest, arrays=adapt.ARRAYS, undeclared_is_json=True),
        ModelExplanationResponse,
        _explain,
        ("Attributions of a model's highest available version", "Attributions of one version"),
        EXPLAIN_DESCRIPTION,
        responses={**PREDICT_PROBLEMS, **EXPLANATION_RESPONSES},
        exclude_none=True,
    ),
)


async def _serve(  # noqa: PLR0917  (the endpoints pass FastAPI's arguments on)
    verb: Verb, request: Request, name: str, version: str | None, models: ModelRepository, worker: Worker
) -> Response:
    body = await verb.body.read(request)  # a body that is not JSON is a 400 whatever the path says
    number = None if version is None else adapt.parse_version(version)
    with models.lease(name, number) as lease:
        return await verb.answer(Asked(body, lease, worker, request))


def _register(verb: Verb) -> None:
    """Both paths of `verb`; the operation ids are `verb` and `verb_version`."""

    async def latest(request: Request, name: Name, models: ModelsDep, worker: WorkerDep) -> Response:
        return await _serve(verb, request, name, None, models, worker)

    async def versioned(
        request: Request, name: Name, version: Version, models: ModelsDep, worker: WorkerDep
    ) -> Response:
        return await _serve(verb, request, name, version, models, worker)

    paths = ("/{name:segment}", "/{name:segment}/versions/{version:segment}")
    endpoints: tuple[Endpoint, Endpoint] = (latest, versioned)
    for path, endpoint, suffix, summary in zip(paths, endpoints, ("", "_version"), verb.summaries, strict=True):
        route(
            "POST",
            f"{path}:{verb.name}",
            name=verb.name + suffix,
            response_model=verb.response_model,
            response_model_exclude_none=verb.exclude_none,
            responses=verb.responses,
            openapi_extra=verb.body.openapi,
            summary=summary,
            description=verb.description,
        )(endpoint)


for _verb in VERBS:
    _register(_verb)
