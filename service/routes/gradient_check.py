"""`POST /v1/gradient-check`: autodiff, central finite differences and the caller's claim, compared."""

from __future__ import annotations

from fastapi import APIRouter

from schemas.gradient_check import GradientCheckRequest, GradientCheckResponse
from schemas.problems import PROBLEM_RESPONSES, problem_responses
from service.adapters import gradient_check as adapt
from service.adapters.errors import located
from service.deps import ModelsDep, SettingsDep, WorkerDep
from service.http import JSONBytesResponse, StrictJSONRoute, json_response

router = APIRouter(prefix="/v1", tags=["gradient check"], route_class=StrictJSONRoute)


@router.post(
    "/gradient-check",
    response_model=GradientCheckResponse,
    responses={**PROBLEM_RESPONSES, **problem_responses(404, 503)},
    summary="Check gradients three ways: autodiff, central finite differences, and your own claim",
    description="The seed's 'recalculate pen-and-paper with numpy and compare', as a service. Answers 200 "
    "whether or not the gradients pass. Finite differences are batched for a network; a tape program is "
    "re-run per perturbation, so it may perturb at most 1,000 elements. A served model (`model`: a :gradients "
    "body with the model's name) is checked in its own dtype; an unknown model is a 404, one still loading a 503. "
    "Perturbing more elements than TAPESERVE_MAX_FD_ELEMENTS is a 422.",
)
async def gradient_check(
    body: GradientCheckRequest, worker: WorkerDep, settings: SettingsDep, models: ModelsDep
) -> JSONBytesResponse:
    deadline = worker.deadline()
    limits = {"max_elements": settings.max_elements, "max_fd_elements": settings.max_fd_elements}
    if body.model is not None:
        # the lease holds the version until its check is answered
        with models.lease(body.model.name, body.model.version) as lease:
            job = adapt.model_check_job(body, lease, **limits, deadline=deadline)
            with located():
                result = await worker.run("gradient checks", job, deadline)
    else:
        job = adapt.check_job(body, **limits, deadline=deadline)
        with located():
            result = await worker.run("gradient checks", job, deadline)
    return json_response(adapt.encode_check(result, worker.pinned_device, body.response_encoding))
