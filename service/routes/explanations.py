"""`POST /v1/networks/explanations`: which feature drove a posted network's prediction (API.md §10)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response

from schemas.explain import MAX_PANELS, ExplanationResponse, NetworkExplanationRequest
from schemas.problems import PROBLEM_RESPONSES
from service import codec
from service.adapters.explain import decode_network_explanation, encode_explanation, plot_arguments
from service.adapters.plots import etag
from service.deps import SettingsDep, WorkerDep
from service.engines import Call
from service.http import JSONBytesResponse, StrictJSONRoute

router = APIRouter(prefix="/v1/networks", tags=["explanations"], route_class=StrictJSONRoute)


def _quality(accept: str, candidates: Sequence[str]) -> tuple[float, bool]:
    """The best q the Accept header gives any of `candidates` (media type, its wildcards), and whether the
    exact type was named."""
    best, named = 0.0, False
    for part in accept.split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        if media.lower() not in candidates:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = max(best, q)
        named = named or media.lower() == candidates[0]
    return best, named


def wants_png(accept: str) -> bool:
    """`Accept: image/png` asks for the bar chart; JSON stays the answer to no header, */* or a tie it names."""
    png, png_named = _quality(accept, ("image/png", "image/*", "*/*"))
    json, json_named = _quality(accept, ("application/json", "application/*", "*/*"))
    return png > json or (png == json > 0 and png_named and not json_named)


RESPONSES: dict[int | str, dict[str, Any]] = {
    **PROBLEM_RESPONSES,
    200: {
        "content": {"image/png": {}},
        "description": f"JSON (KServe's :explain shape), or with `Accept: image/png` a bar chart of attributions "
        f"per instance (at most {MAX_PANELS}).",
    },
}


@router.post(
    "/explanations",
    response_model=ExplanationResponse,
    responses=RESPONSES,
    summary="Attributions of a dense network's prediction: integrated gradients, saliency, SmoothGrad",
    description="Which feature drove the prediction, per instance, with the completeness check of integrated "
    "gradients (prediction, baseline_prediction, convergence_delta) always reported. Every instance × step is "
    "one compiled call; concurrent requests of one network structure are merged.",
)
async def network_explanations(
    body: NetworkExplanationRequest,
    request: Request,
    worker: WorkerDep,
    settings: SettingsDep,
) -> Response:
    png = wants_png(request.headers.get("accept", ""))
    deadline = worker.deadline()
    job = decode_network_explanation(body, settings.max_elements, png=png, stop_at=deadline)
    result = await worker.run("explanations", job, deadline)
    if not png:
        document = encode_explanation(
            job,
            result,
            device=worker.pinned_device,
            dtype=body.dtype,
            feature_names=body.feature_names,
            encoding=body.response_encoding,
        )
        return JSONBytesResponse(codec.render(document))
    figure = Call("plot_attributions", {**plot_arguments(job, result, body.feature_names), "theme": body.theme})
    image = await worker.run("plots", figure, deadline)
    return Response(image, media_type="image/png", headers={"ETag": etag(image)})
