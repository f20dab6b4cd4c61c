"""HTTP method hygiene (RFC 9110 §9.3.2 and §15.5.6): `HEAD` wherever `GET` is served, and a 405's `Allow`
listing every method of its path.

Starlette answers a method no route of a path takes with the `Allow` of the first route it tried, so a path
served by two routes (`GET` and `POST /v1/activations`) advertised one method; and FastAPI's routes do not
take `HEAD`. One ASGI middleware, next to the router, mends both: a `HEAD` request is routed as `GET` and
answered with the same status and headers and no body, and a 405's `Allow` is recomputed from every route
whose path matches.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.routing import BaseRoute, Match, Mount, Router
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware import HttpMiddleware

STATIC_METHODS = frozenset({"GET", "HEAD"})
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
"""The methods a path is asked about (RFC 9110's, but CONNECT, and HEAD, which follows GET)."""


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at the request's path, `HEAD` wherever there is `GET`, sorted.

    Each route is asked whether it would take the path with each method (`BaseRoute.matches`), which holds
    for FastAPI's included routers as for plain routes; a mount of static files takes GET and HEAD only.
    """
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Mount) and isinstance(route.app, StaticFiles):
            if route.matches(scope)[0] is not Match.NONE:
                methods |= STATIC_METHODS
            continue
        methods.update(method for method in METHODS if route.matches({**scope, "method": method})[0] is Match.FULL)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


class MethodsMiddleware(HttpMiddleware):
    """`HEAD` as `GET` without the body; a 405's `Allow` from every route of the path (see the module)."""

    def __init__(self, app: ASGIApp, router: Router) -> None:
        super().__init__(app)
        self.router = router

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        # routing rewrites the scope's root_path (mounts): the path as it arrived is what Allow is about
        path, root_path = scope["path"], scope.get("root_path", "")

        async def send_mended(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 405:
                asked = {"type": "http", "method": "GET", "path": path, "root_path": root_path}
                allow = ", ".join(allowed_methods(self.router.routes, asked)).encode("latin-1")
                headers = [(name, value) for name, value in message.get("headers", []) if name.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", allow)]}
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}  # Content-Length stays the GET's, as RFC 9110 has it
            await send(message)

        await self.app(scope, receive, send_mended)


def install_methods(app: FastAPI) -> None:
    """Add the middleware; call it before any other middleware, so that it is the innermost, at the router."""
    app.add_middleware(MethodsMiddleware, router=app.router)
