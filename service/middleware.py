"""The service's own ASGI middleware share one shape: HTTP requests go to `handle`, every other scope (the
lifespan's) straight to the wrapped app."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable

from starlette.types import ASGIApp, Receive, Scope, Send


class HttpMiddleware(ABC):
    """A pure ASGI middleware that acts on HTTP requests only. Subclasses implement `handle`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # returns the awaitable rather than awaiting it: no extra coroutine per request and middleware
        if scope["type"] != "http":
            return self.app(scope, receive, send)
        return self.handle(scope, receive, send)

    @abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request through `self.app`."""


def route_path(scope: Scope) -> str:
    """The request's path as the app's routes match it: without the root path the server was given (uvicorn's
    `--root-path`), which it puts in front of `path` (Starlette's own rule, `starlette._utils.get_route_path`)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path
