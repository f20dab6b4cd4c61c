"""One error family and one handler: every failure leaves the service as RFC 9457 problem+json."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from schemas.tensors import LIMIT_ERROR
from service.compute import errors as compute_errors
from service.middleware import route_path

logger = logging.getLogger("tapeserve")

PROBLEM_BASE = "https://tapeserve.dev/problems/"
PROBLEM_JSON = "application/problem+json"

Loc = Sequence[str | int]

TF_SERVING_PREFIX = "/v1/models"
"""TF Serving's REST paths: their problems also carry TF Serving's `error` member (API.md §9)."""


def speaks_tf_serving(path: str) -> bool:
    """Whether `path` is one of TF Serving's REST paths, whose clients read a problem's `error` member."""
    return path == TF_SERVING_PREFIX or path.startswith(TF_SERVING_PREFIX + "/")


class ServiceError(Exception):
    """Base of every error the service answers with; subclasses fix `status`, `slug` and `title`."""

    status: int = 500
    slug: str = "internal"
    title: str = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def body(self, request_id: str | None = None, *, error_member: bool = False) -> dict[str, Any]:
        """The problem document; `error_member` adds TF Serving's `error` (the detail), which its clients read."""
        problem: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            problem["errors"] = self.errors
        problem.update(self.extra)
        if error_member:
            problem["error"] = self.detail
        if request_id is not None:
            problem["request_id"] = request_id
        return problem


class BadRequest(ServiceError):
    status, slug, title = 400, "malformed-json", "Body is not valid JSON"


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Missing or invalid API key"


class NotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ServiceError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Body must be application/json"


class ValidationFailed(ServiceError):
    status, slug, title = 422, "validation", "Request is not valid"

    @classmethod
    def at(cls, loc: Loc, msg: str) -> ValidationFailed:
        """One error at one JSON location: the common case."""
        return cls(f"{format_loc(loc)}: {msg}", errors=[{"loc": list(loc), "msg": msg}])


class LimitExceeded(ValidationFailed):
    slug, title = "limit-exceeded", "Request exceeds a configured limit"


class ProgramRejected(ValidationFailed):
    slug, title = "program", "Program rejected"


class TapeSemantics(ValidationFailed):
    slug, title = "tape-semantics", "The tape cannot compute what was asked"


class NonPersistentTape(TapeSemantics):
    slug, title = "non-persistent-tape", "Non-persistent tape used twice"


class QueueFull(ServiceError):
    status, slug, title = 429, "queue-full", "Work queue is full"


class NotReady(ServiceError):
    status, slug, title = 503, "not-ready", "Service is starting"


class ModelNotFound(NotFound):
    status, slug, title = 404, "model-not-found", "Model or model version not found"


class ModelNotAvailable(NotReady):
    status, slug, title = 503, "model-loading", "Model version is loading"


class DeadlineExceeded(ServiceError):
    status, slug, title = 504, "deadline-exceeded", "Request deadline passed"


class InternalError(ServiceError):
    status, slug, title = 500, "internal", "Internal server error"


def format_loc(loc: Loc) -> str:
    """`("body", "layers", 0, "weights")` -> `body.layers[0].weights`."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def from_compute_error(error: compute_errors.ComputeError) -> ServiceError:
    """Map a compute-layer exception onto its problem type (all are the client's 422s)."""
    loc = list(error.loc)
    errors = [{"loc": loc, "msg": error.message}] if loc else None
    detail = f"{format_loc(loc)}: {error.message}" if loc else error.message
    if isinstance(error, compute_errors.NonPersistentTapeError):
        return NonPersistentTape(detail, errors=errors, extra={"compute_index": error.compute_index})
    if isinstance(error, compute_errors.TapeSemanticsError):
        return TapeSemantics(detail, errors=errors, extra={"compute_index": error.compute_index})
    if isinstance(error, compute_errors.ProgramError):
        extra = {"line": error.line, "column": error.column} if error.line is not None else {}
        kind = LimitExceeded if isinstance(error, compute_errors.LimitExceeded) else ProgramRejected
        return kind(error.message, errors=errors, extra=extra)
    if isinstance(error, compute_errors.LimitExceeded):
        return LimitExceeded(detail, errors=errors)
    return ValidationFailed(detail, errors=errors)


def problem_response(error: ServiceError, request_id: str | None, path: str) -> Response:
    """The one place a problem+json body is rendered; `path` is the request's route path
    (`middleware.route_path`), since TF Serving's paths add the `error` member."""
    headers = dict(error.headers)
    if request_id is not None:
        headers.setdefault("X-Request-ID", request_id)
    body = error.body(request_id if error.status >= 500 else None, error_member=speaks_tf_serving(path))
    return Response(
        orjson.dumps(body),
        status_code=error.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def _request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    return rid if isinstance(rid, str) else new_request_id()


def new_request_id() -> str:
    """32 random hex digits, like `uuid.uuid4().hex`. An id needs to be unique, not unguessable: `random`
    (seeded from the OS, reseeded in forked children) makes one with no system call, where `os.urandom`
    releases the GIL for one, and the event loop then waits to get it back."""
    return f"{random.getrandbits(128):032x}"


def _validation_errors(exc: RequestValidationError) -> ServiceError:
    errors: list[dict[str, Any]] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            return BadRequest(f"Body is not valid JSON: {reason}")
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "value_error" and "error" in (err.get("ctx") or {}):
            msg = str(err["ctx"]["error"])  # the validator's own words, without pydantic's "Value error, "
        if err.get("type") == "missing" and not loc[1:]:
            msg = "a JSON body is required"
        errors.append({"loc": loc, "msg": msg})
    first = errors[0] if errors else {"loc": ["body"], "msg": "invalid"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    limit = any(err.get("type") == LIMIT_ERROR for err in exc.errors())
    kind = LimitExceeded if limit else ValidationFailed
    return kind(f"{format_loc(first['loc'])}: {first['msg']}{more}", errors=errors)


_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationFailed,
    429: QueueFull,
    503: NotReady,
    504: DeadlineExceeded,
}


def as_service_error(exc: Exception) -> ServiceError:
    """Whatever was raised, the ServiceError that answers it."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, compute_errors.ComputeError):
        return from_compute_error(exc)
    if isinstance(exc, RequestValidationError):
        return _validation_errors(exc)
    if isinstance(exc, StarletteHTTPException):
        cls = _HTTP_ERRORS.get(exc.status_code)
        detail = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if cls is None:
            err = ServiceError(detail, headers=dict(exc.headers or {}))
            err.status, err.slug, err.title = exc.status_code, "http", detail
            return err
        return cls(detail, headers=dict(exc.headers or {}))
    return InternalError("An unexpected error occurred; quote the request_id when reporting it.")


async def handle_exception(request: Request, exc: Exception) -> Response | None:
    """The one exception handler, registered for every exception type the app can see. A client that left
    before its body arrived gets nothing: there is nobody to answer, and nothing went wrong here."""
    if isinstance(exc, ClientDisconnect):
        return None
    return answer_exception(exc, _request_id(request), route_path(request.scope))


def answer_exception(exc: Exception, request_id: str, path: str) -> Response:
    """The problem+json answer to whatever was raised, logged when it is a server error (see
    `handle_exception`); `path` is the route path (`middleware.route_path`)."""
    error = as_service_error(exc)
    if error.status >= 500:
        # a bug is an error with its traceback; a deadline or a service still starting is a warning
        bug = isinstance(error, InternalError)
        logger.log(
            logging.ERROR if bug else logging.WARNING,
            "request failed" if bug else error.title,
            exc_info=exc if bug and not isinstance(exc, ServiceError) else None,
            extra={"request_id": request_id, "path": path, "status": error.status},
        )
    return problem_response(error, request_id, path)


def _problems_as_problem_json(document: dict[str, Any]) -> None:
    """Error responses in the OpenAPI document say what they are: problem+json only, with the Problem schema.

    FastAPI writes a response's `model` under the route's own media type (application/json); every error
    this service sends is application/problem+json, so that schema is moved there.
    """
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if not (status.isdigit() and int(status) >= 400 and PROBLEM_JSON in content):
                    continue
                plain = content.pop("application/json", None)
                if plain is not None and "schema" in plain:
                    content[PROBLEM_JSON] = {**content[PROBLEM_JSON], "schema": plain["schema"]}


def extend_openapi(app: FastAPI, amend: Callable[[dict[str, Any]], None]) -> None:
    """Have `amend` edit the app's OpenAPI document in place once, when it is first generated."""
    generate = app.openapi

    def amended() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        amend(document)
        return document

    # FastAPI's documented way to customise the schema is to replace the bound method
    app.openapi = amended  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to `handle_exception`, and document its problem+json bodies in the OpenAPI schema."""
    extend_openapi(app, _problems_as_problem_json)
    for exc_type in (
        ServiceError,
        compute_errors.ComputeError,
        RequestValidationError,
        StarletteHTTPException,
        ClientDisconnect,
        Exception,
    ):
        app.add_exception_handler(exc_type, handle_exception)  # type: ignore[arg-type]
