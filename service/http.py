"""HTTP plumbing shared by every route: strict JSON bodies, body-size limits, request ids."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import codec
from service.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    answer_exception,
    new_request_id,
    problem_response,
)
from service.observability import WARM_UP_SCOPE_KEY

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class JSONBytesResponse(Response):
    """A response whose body is already-rendered JSON bytes (see `codec.render`)."""

    media_type = "application/json"


def json_response(document: Any) -> JSONBytesResponse:
    return JSONBytesResponse(codec.render(document))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def parse_json_body(body: bytes, content_type: str, arrays: Mapping[str, str] | None = None) -> Any:
    """A request body as strict JSON (no NaN/Infinity/overflowing numbers); the top-level `arrays`
    fields of a large body may come as numpy arrays (see `codec.parse`).

    415 for a body not declared as JSON, 400 for one that is not JSON, 422 for none at all.
    """
    if not _is_json(content_type):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {content_type or None!r}.")
    if not body.strip():
        raise ValidationFailed.at(("body",), "a JSON body is required")
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
    """Parses bodies with strict JSON before FastAPI validates them (see `read_strict_json`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method in _BODY_METHODS:
                await read_strict_json(request)
            return await handler(request)

        return strict_handler


HotAnswer = Callable[[Any, FastAPI], Awaitable[bytes]]
"""`answer(body, app)`: the JSON bytes of a 200 answer to a validated body."""


@dataclass(frozen=True)
class HotRoute:
    """An operation served by the fast lane: `POST path` with a `model` body, answered by `answer`."""

    path: str
    model: type[BaseModel]
    answer: HotAnswer
    arrays: Mapping[str, str] = field(default_factory=dict)
    """Top-level tensor fields the model takes as numpy arrays too, with their kinds (see `codec.parse`)."""


class HotEndpoint:
    """The raw ASGI endpoint of a hot route: read, parse, validate, answer, send; every error through
    `answer_exception`, the same function as the app's one exception handler."""

    def __init__(self, app: FastAPI, route: HotRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            chunks: list[bytes] = []
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return  # nobody is left to answer
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
            content_type = next((value for name, value in scope["headers"] if name.lower() == b"content-type"), b"")
            document = parse_json_body(b"".join(chunks), content_type.decode("latin-1"), self.route.arrays)
            payload = await self.route.answer(validate_body(self.route.model, document), self.app)
        except Exception as exc:
            request_id = scope.get("state", {}).get("request_id") or new_request_id()
            await answer_exception(exc, request_id, scope["path"])(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class FastLane:
    """Sends `POST` requests for a hot route straight to its endpoint, behind the same user middlewares
    (request ids, limits, auth, metrics, access log) as every other request; everything else goes through
    the full stack. What it skips is Starlette's and FastAPI's per-request machinery (exception and
    body-limit middlewares, routing, dependency solving, Request and Response objects): under 64
    connections the seed request went from ~2,500 to ~3,450 req/s when the lane came in."""

    def __init__(self, app: ASGIApp, lanes: dict[str, tuple[ASGIApp, BaseRoute]]) -> None:
        self.app = app
        self.lanes = lanes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self.lanes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if lane is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = lane[1]
        await lane[0](scope, receive, send)


class TapeserveAPI(FastAPI):
    """FastAPI with a fast lane for hot routes (see `FastLane`). Register each hot route as an ordinary
    route too: that documents it in OpenAPI and answers its other methods (405)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_routes: list[HotRoute] = []

    def add_hot_route(self, route: HotRoute) -> None:
        self.hot_routes.append(route)
        self.middleware_stack = None

    def build_middleware_stack(self) -> ASGIApp:
        lanes: dict[str, tuple[ASGIApp, BaseRoute]] = {}
        for hot in self.hot_routes:
            endpoint: ASGIApp = HotEndpoint(self, hot)
            # in the scope, as the router would put the route it matched: metrics label by its template
            route = Route(hot.path, endpoint, methods=["POST"])
            for cls, args, kwargs in reversed(self.user_middleware):
                endpoint = cls(endpoint, *args, **kwargs)
            lanes[hot.path] = (endpoint, route)
        return FastLane(super().build_middleware_stack(), lanes)


class RequestContextMiddleware:
    """Gives every request an id (X-Request-ID in, or a new one; echoed back) and bounds its body size.

    A declared Content-Length over the limit is answered 413 before anything is read; a body streamed
    without one is counted as it arrives and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
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
            await problem_response(too_large, request_id)(scope, receive, send_with_id)
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
