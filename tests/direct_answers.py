"""What the direct-route tests share: one request's answer, and each request answered both ways (the route's
direct call, then FastAPI's generic handler through a dependency override) on the same app."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from service.deps import get_worker
from service.worker import Worker

Answer = tuple[int, dict[str, str], bytes]
"""Status, headers and body bytes."""


class Delegate:
    """A dependency override that hands out the app's own worker and counts the requests it served."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, request: Request) -> Worker:
        self.calls += 1
        worker: Worker = await get_worker(request)
        return worker


def answer(client: TestClient, path: str, body: bytes, headers: dict[str, str]) -> Answer:
    response = client.post(path, content=body, headers={**headers, "x-request-id": "same-id"})
    return response.status_code, dict(response.headers), response.content


def both_ways(
    app: FastAPI, requests: Iterable[tuple[str, str, bytes, dict[str, str]]], root_path: str = ""
) -> Iterator[tuple[str, Answer, Answer]]:
    """`(label, direct, generic)` for each `(label, path, body, headers)`; `path` includes the root path."""
    client = TestClient(app, root_path=root_path, raise_server_exceptions=False)
    for label, path, body, headers in requests:
        direct = answer(client, path, body, headers)
        delegate = Delegate()
        app.dependency_overrides[get_worker] = delegate
        try:
            generic = answer(client, path, body, headers)
        finally:
            app.dependency_overrides.clear()
        assert delegate.calls == 1, label  # the generic handler answered it
        yield label, direct, generic


class BrokenWorker:
    """The app's worker, but for its `run`, which fails as no request could make it."""

    def __init__(self, worker: Worker) -> None:
        self.settings, self.pinned_device = worker.settings, worker.pinned_device
        self.deadline = worker.deadline

    async def run(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internal state")
