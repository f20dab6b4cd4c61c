"""HTTP plumbing shared by every route: strict JSON bodies, body-size limits, request ids."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.telemetry import get_telemetry_data
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import codec
from service.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    new_request_id,
    problem_response,
)
from service.middleware import HttpMiddleware, route_path
from service.observability import WARM_UP_SCOPE_KEY

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_UNDECLARED = frozenset({"", "application/x-www-form-urlencoded"})


class JSONBytesResponse(Response):
    """A response whose body is already-rendered JSON bytes (see `codec.render`)."""

    media_type = "application/json"


def json_response(
    document: BaseModel | Mapping[str, Any], status_code: int = 200, headers: Mapping[str, str] | None = None
) -> JSONBytesResponse:
    """The one way a route renders its answer: a response model, or a document of its shape (numpy arrays
    allowed inside), as strict JSON bytes (`codec.render`)."""
    if isinstance(document, BaseModel):
        document = document.model_dump(mode="json")
    return JSONBytesResponse(codec.render(document), status_code=status_code, headers=headers)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse_json_body(body: bytes, content_type: str, arrays: Mapping[str, codec.ArrayField] | None = None) -> Any:
    """A request body as strict JSON (no NaN/Infinity/overflowing numbers); the top-level `arrays`
    fields of a large body may come as numpy arrays (see `codec.parse`).

    415 for a body not declared as JSON, 400 for one that is not JSON (an empty body is not JSON either).
    """
    if not _is_json(content_type):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type or None!r}.")
    if not body.strip():
        raise BadRequest("Body is not valid strict JSON: the body is empty.")
    try:
        return codec.parse(body, arrays)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"Body is not valid strict JSON: {error}") from None


async def read_strict_json(request: Request) -> Any:
    """The request's body as strict JSON (see `parse_json_body`), cached on the request."""
    body = await request.body()
    request._json = parse_json_body(body, request.headers.get("content-type", ""))  # where FastAPI looks
    return request._json


M = TypeVar("M", bound=BaseModel)


def validate_body(model: type[M], document: Any) -> M:
    """`model` validated from a parsed body as FastAPI validates one (`from_attributes`, which words the
    error for a non-object where an object belongs); errors carry the `("body", ...)` locations FastAPI's would."""
    try:
        return model.model_validate(document, from_attributes=True)
    except ValidationError as error:
        raise RequestValidationError(
            [{**detail, "loc": ("body", *detail["loc"])} for detail in error.errors(include_url=False)]
        ) from None


class StrictJSONRoute(APIRoute):
    """Parses bodies with strict JSON before FastAPI validates them (see `read_strict_json`); a route that
    reads its body itself (`JSONBody`) declares no body parameter and is left alone."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict_handler(request: Request) -> Response:
            if request.method in _BODY_METHODS:
                await read_strict_json(request)
            return await handler(request)

        return strict_handler


DirectCall = Callable[[Request], Awaitable[Any]]


@dataclass(frozen=True)
class DirectPlan:
    """What a `DirectRoute` passes its endpoint: the request, each path parameter (`(parameter, key in the
    scope's path_params)`) and each dependency's answer (`(parameter, dependency)`)."""

    request: str
    path_params: list[tuple[str, str]]
    dependencies: list[tuple[str, DirectCall]]


def direct_plan(dependant: Dependant) -> DirectPlan | None:
    """The plan for an endpoint that a `DirectRoute` can call directly: an `async def` endpoint answering
    with a `Response` class, taking the `Request`, path parameters annotated plain `str` (no constraints,
    so that FastAPI's validation of a `str` leaves them as they are), and dependencies, each of which is an
    `async def f(request)` with no dependencies of its own (as `service.deps` has them). None for any other
    endpoint."""
    call = dependant.call
    if call is None or not inspect.iscoroutinefunction(call) or dependant.request_param_name is None:
        return None
    if not _takes_only_the_request(dependant, path_params=True):
        return None
    answer = inspect.signature(call, eval_str=True).return_annotation
    if not (isinstance(answer, type) and issubclass(answer, Response)):
        return None
    if any(param.field_info.annotation is not str or param.field_info.metadata for param in dependant.path_params):
        return None
    direct: list[tuple[str, DirectCall]] = []
    for sub in dependant.dependencies:
        if sub.name is None or sub.dependencies or not inspect.iscoroutinefunction(sub.call):
            return None
        if not _takes_only_the_request(sub):
            return None
        direct.append((sub.name, sub.call))
    params = [(param.name, param.alias) for param in dependant.path_params]
    return DirectPlan(dependant.request_param_name, params, direct)


def _takes_only_the_request(dependant: Dependant, path_params: bool = False) -> bool:
    params = (
        () if path_params else dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
    )
    others = (
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
    )
    return (
        dependant.request_param_name is not None
        and not any(params)
        and all(name is None for name in others)
        and not dependant.own_oauth_scopes
    )


Endpoint = Callable[..., Awaitable[Response]]


class DirectRoute(APIRoute):
    """An `APIRoute` that calls an endpoint of the shape `direct_plan` accepts without FastAPI's generic
    request handler (request-scoped exit stacks, body reading, dependency solving, serialisation): it takes
    the path parameters from the match, awaits the dependencies in order, then the endpoint, and sends the
    `Response` it returns. Errors raise into the app's exception handlers as from any route. Matching,
    `root_path`, middlewares and OpenAPI are `APIRoute`'s. A request goes to the generic handler instead
    while `app.dependency_overrides` holds anything, or while FastAPI's OpenTelemetry records it: those are
    the generic handler's to honour; so does one whose path parameter a convertor made other than a `str`.
    `direct` says whether the endpoint has the shape; a route whose endpoint has not is an `APIRoute`.

    Only the route's own `app` is direct: add it to the app's router (`app.router.add_api_route`), since
    FastAPI answers the routes of an included `APIRouter` through their `get_route_handler`. A subclass
    that wraps the generic handler wraps the direct endpoint the same way in `direct_endpoint`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plan = direct_plan(self.dependant)
        endpoint = self.dependant.call
        self.direct = plan is not None and endpoint is not None
        if plan is not None and endpoint is not None:
            self.app = self._direct_app(self.app, self.direct_endpoint(endpoint), plan)

    def direct_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """The endpoint the direct path calls (by keyword): `endpoint` itself here."""
        return endpoint

    def _direct_app(self, generic: ASGIApp, endpoint: Endpoint, plan: DirectPlan) -> ASGIApp:
        provider = self.dependency_overrides_provider
        request_name, path_params, dependencies = plan.request, plan.path_params, plan.dependencies

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if getattr(provider, "dependency_overrides", None) or get_telemetry_data() is not None:
                await generic(scope, receive, send)
                return
            request = Request(scope, receive, send)
            values: dict[str, Any] = {request_name: request}
            if path_params:
                matched = scope["path_params"]
                for name, key in path_params:
                    value = matched[key]
                    if type(value) is not str:
                        await generic(scope, receive, send)
                        return
                    values[name] = value
            for name, call in dependencies:
                values[name] = await call(request)
            response = await endpoint(**values)
            await response(scope, receive, send)

        return app


@dataclass(frozen=True)
class ParsedBody(Generic[M]):
    """A validated body, and the fields the parser read straight into numpy (their place in `model` holds a
    stand-in, see `codec.set_aside`)."""

    model: M
    arrays: dict[str, np.ndarray]


BODY_MODELS: dict[str, type[BaseModel]] = {}
"""The models of every `JSONBody`, by component name: the OpenAPI document holds each (see `service.openapi`)."""


@dataclass(frozen=True)
class JSONBody(Generic[M]):
    """The JSON body of a route that reads it itself (`await body.read(request)`), so
    that large numeric arrays can skip the nested lists: strict JSON, the `arrays` fields as the codec's
    fast parser reads them (see `codec.parse`), validated by `model` with FastAPI's locations. `openapi`
    documents the body as FastAPI documents a `model` parameter (the route's `openapi_extra`)."""

    model: type[M]
    arrays: Mapping[str, codec.ArrayField] = field(default_factory=dict)
    undeclared_is_json: bool = False
    """Read a body sent with no Content-Type, or with curl's default for `-d`
    (application/x-www-form-urlencoded), as JSON too: TF Serving does, and its documented calls rely on it."""

    def __post_init__(self) -> None:
        BODY_MODELS.setdefault(self.model.__name__, self.model)

    @property
    def openapi(self) -> dict[str, Any]:
        schema = {"$ref": f"#/components/schemas/{self.model.__name__}"}
        return {"requestBody": {"content": {"application/json": {"schema": schema}}, "required": True}}

    async def read(self, request: Request) -> ParsedBody[M]:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        if self.undeclared_is_json and content_type.split(";", 1)[0].strip().lower() in _UNDECLARED:
            content_type = "application/json"
        document = parse_json_body(body, content_type, self.arrays)
        arrays = codec.set_aside(document, self.arrays)
        return ParsedBody(validate_body(self.model, document), arrays)


class RequestContextMiddleware(HttpMiddleware):
    """Gives every request an id (X-Request-ID in, or a new one; echoed back) and bounds its body size.

    A declared Content-Length over the limit is answered 413 before anything is read; a body streamed
    without one is counted as it arrives and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        super().__init__(app)
        self.max_body_bytes = max_body_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given, declared = "", ""
        for key, value in scope["headers"]:
            name = key.lower()
            if name == b"x-request-id":
                given = value.decode("latin-1")
            elif name == b"content-length":
                declared = value.decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                # problem responses already carry it (a 500 is sent from outside this middleware)
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message["headers"] = [*headers, (b"x-request-id", raw_id)]
            await send(message)

        limit = self.max_body_bytes
        if declared.isdigit() and int(declared) > limit:
            too_large = PayloadTooLarge(
                f"Body of {int(declared):,} bytes exceeds {limit:,} (TAPESERVE_MAX_BODY_BYTES)."
            )
            await problem_response(too_large, request_id, route_path(scope))(scope, receive, send_with_id)
            return

        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"Body exceeds {limit:,} bytes (TAPESERVE_MAX_BODY_BYTES).")
            return message

        await self.app(scope, bounded_receive, send_with_id)


async def call_self(app: ASGIApp, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """Send one request through the app in memory (no socket) and return its status; used to warm it up,
    so it is marked as such and kept out of metrics and access logs."""
    messages: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
        WARM_UP_SCOPE_KEY: True,
    }
    await app(scope, receive, send)
    return status
