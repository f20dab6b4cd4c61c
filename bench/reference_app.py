"""The HTTP floor: FastAPI + pydantic endpoints that parse the same body models as tapeserve and answer
with tapeserve's own response bytes, doing no TensorFlow work: the networks route, and the example model's
`:predict` (TF Serving's predict body). Served with the same server settings."""

from __future__ import annotations

import os

from fastapi import FastAPI, Response

from schemas.models import PredictRequest
from schemas.networks import NetworkRequest

app = FastAPI(title="tapeserve reference floor")
_RESPONSES: dict[str, bytes] = {}


def canned(name: str) -> bytes:
    """The response body tapeserve sent for the same request, read from the file `BENCH_RESPONSE_<name>`
    names (the harness wrote it)."""
    if name not in _RESPONSES:
        with open(os.environ[f"BENCH_RESPONSE_{name}"], "rb") as handle:
            _RESPONSES[name] = handle.read()
    return _RESPONSES[name]


@app.post("/v1/networks/gradients")
async def gradients(body: NetworkRequest) -> Response:
    return Response(canned("FULL" if body.include else "PLAIN"), media_type="application/json")


@app.post("/v1/models/diabetes:predict")
async def predict(body: PredictRequest) -> Response:
    return Response(canned("PREDICT"), media_type="application/json")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}
