"""HTTP plumbing shared by every route: strict JSON bodies, body-size limits, request ids."""

from __future__ import annotations

import re
import typing
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import codec
from service.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
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


async def read_strict_json(request: Request) -> Any:
    """The request's body as strict JSON (no NaN/Infinity/overflowing numbers), cached on the request.

    415 for a body not declared as JSON, 400 for one that is not JSON, 422 for none at all.
    """
    body = await request.body()
    if not _is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.headers.get('content-type')!r}."
        )
    if not body.strip():
        raise ValidationFailed.at(("body",), "a JSON body is required")
    try:
        request._json = codec.parse(body)  # Starlette caches the parsed body here, where FastAPI looks
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"Body is not valid strict JSON: {error}") from None
    return request._json


class StrictJSONRoute(APIRoute):
    """Parses bodies with strict JSON before FastAPI validates them (see `read_strict_json`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            if request.method in _BODY_METHODS:
                await read_strict_json(request)
            return await handler(request)

        return strict_handler


class DirectBodyRoute(APIRoute):
    """For the hottest route: validate the body model and call the endpoint directly.

    FastAPI's per-request dependency resolution costs tens of microseconds, a large share of a request
    that computes in ~0.2 ms. The endpoint must be `async def endpoint(body: Model, request: Request)`;
    FastAPI still documents it from that signature. Validation errors carry the same `("body", ...)`
    locations FastAPI's would and go through the same handler.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        hints = typing.get_type_hints(self.endpoint)
        model: type[BaseModel] = hints["body"]
        endpoint = self.endpoint

        async def direct_handler(request: Request) -> Response:
            document = await read_strict_json(request)
            try:
                body = model.model_validate(document)
            except ValidationError as error:
                raise RequestValidationError(
                    [{**detail, "loc": ("body", *detail["loc"])} for detail in error.errors(include_url=False)]
                ) from None
            response: Response = await endpoint(body, request)
            return response

        return direct_handler


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
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
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
        declared = headers.get("content-length", "")
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
