"""The HTTP floor: a FastAPI + pydantic endpoint that parses the same body model as tapeserve and answers
with a response of the same size, doing no TensorFlow work. Served with the same server settings."""

from __future__ import annotations

import os

from fastapi import FastAPI, Response

from schemas.networks import NetworkRequest

app = FastAPI(title="tapeserve reference floor")
_RESPONSES: dict[bool, bytes] = {}


def canned(with_includes: bool) -> bytes:
    """A response body of the size tapeserve sends for the seed sample (read from files the harness wrote)."""
    if with_includes not in _RESPONSES:
        path = os.environ["BENCH_RESPONSE_FULL" if with_includes else "BENCH_RESPONSE_PLAIN"]
        with open(path, "rb") as handle:
            _RESPONSES[with_includes] = handle.read()
    return _RESPONSES[with_includes]


@app.post("/v1/networks/gradients")
async def gradients(body: NetworkRequest) -> Response:
    return Response(canned(bool(body.include)), media_type="application/json")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}
