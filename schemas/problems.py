"""RFC 9457 problem details, the body of every error response."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class ProblemItem(BaseModel):
    loc: list[Annotated[str, Field(title="Key")] | Annotated[int, Field(title="Index")]] = Field(
        description="JSON location of the offending value, from the body's root."
    )
    msg: str = Field(description="What is wrong with it.")


class Problem(BaseModel):
    """An error. Extra members may follow (`compute_index`, `line`, `column`, `request_id`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI of the problem type; its last segment names it (e.g. non-persistent-tape).")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request.")
    errors: list[ProblemItem] | None = Field(default=None, description="Every offending value, with its location.")


PROBLEM_DESCRIPTIONS: dict[int, str] = {
    400: "Body is not JSON",
    401: "API keys are configured and the request has none that is valid",
    404: "Nothing found under the path's parameters",
    413: "Body larger than TAPESERVE_MAX_BODY_BYTES",
    415: "Body is not application/json",
    422: "Schema, shape, dtype, value, program or tape-semantics error",
    429: "Work queue full (see Retry-After)",
    500: "A bug in the service (quote the problem's request_id)",
    503: "The service is starting or shutting down (see Retry-After)",
    504: "Request deadline TAPESERVE_TIMEOUT_S passed",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` for these error statuses, each an application/problem+json Problem."""
    return {
        status: {
            "model": Problem,
            "description": PROBLEM_DESCRIPTIONS[status],
            "content": {"application/problem+json": {}},
        }
        for status in statuses
    }


PROBLEM_RESPONSES = problem_responses(400, 401, 413, 415, 422, 429, 504)
"""The errors of an operation that takes a JSON body."""
QUERY_PROBLEM_RESPONSES = problem_responses(401, 422, 429, 504)
"""The errors of an operation that reads only its query (no body, so no 400, 413 or 415)."""
