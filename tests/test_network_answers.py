"""POST /v1/networks/gradients answers the recorded cases byte for byte as it did before the one-stack
rewrite (when a fast lane beside FastAPI served it, tested then to answer exactly as the full stack did).

The fixture holds, per case, the request's digest, the status, the content type and the exact response
bytes (for large bodies their digest, and the bytes gzipped). Every answer is compared byte for byte, but
one: a large body's numbers, where they differ, are compared to the float rounding of their dtype.
TensorFlow's CPU kernels pick their vector width by the CPU's features, so a sum over thousands of rows
rounds differently on another CPU (seen for the four large 200s, float32 and float64). Re-record
(`python -m tests.test_network_answers`) only when the answers are meant to change.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.networks import SEED_REQUEST
from service.app import create_app
from service.deps import get_worker
from service.settings import Settings
from tests.conftest import wait_ready

GRADIENTS = "/v1/networks/gradients"
FIXTURE = Path(__file__).parent / "fixtures" / "network_answers.jsonl"
INLINE_BYTES = 4096
"""Request and response bodies up to this size are kept whole in the fixture; larger ones by digest and size."""
PLAIN = {key: value for key, value in SEED_REQUEST.items() if key != "include"}

ROWS = 4_000
LARGE = {**PLAIN, "features": [[76.5, 120.5, 37.5]] * ROWS, "labels": [0, 1] * (ROWS // 2)}


def _b64(values: list[float], dtype: str) -> str:
    return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()


# (body bytes, content type): answers, good and bad
CASES: list[tuple[bytes, str]] = [
    (orjson.dumps(SEED_REQUEST), "application/json"),
    (orjson.dumps({**PLAIN, "dtype": "float64", "response_encoding": "b64"}), "application/json"),
    (orjson.dumps({**PLAIN, "features": [[1.0, 2.0, 3.0], [4.0, 5.0]]}), "application/json"),  # ragged
    (orjson.dumps({**PLAIN, "labels": [0, 1]}), "application/json"),  # labels for two samples, one given
    (orjson.dumps({**PLAIN, "layers": []}), "application/json"),
    (orjson.dumps({**PLAIN, "loss": "hinge"}), "application/json"),
    (orjson.dumps({**PLAIN, "layers": [[0.5]]}), "application/json"),  # a non-object where a layer belongs
    (b'{"features": [NaN, 1, 2]}', "application/json"),
    (b'{"features": [1, 2', "application/json"),
    (b"", "application/json"),
    (orjson.dumps(SEED_REQUEST), "text/plain"),
    (orjson.dumps(SEED_REQUEST), ""),
    (orjson.dumps(SEED_REQUEST), "application/problem+json; charset=utf-8"),
    # bodies past 64 KiB, whose arrays the codec reads straight into numpy (codec.parse)
    (orjson.dumps(LARGE), "application/json"),
    (orjson.dumps({**LARGE, "labels": None, "targets": [[0.0, 1.0]] * ROWS, "dtype": "float64"}), "application/json"),
    (orjson.dumps({**LARGE, "include": ["input_gradients"], "reduction": "mean"}), "application/json"),
    (orjson.dumps(LARGE).replace(b"[76.5,120.5,37.5]", b"[76.5,120.5]", 1), "application/json"),  # ragged
    (orjson.dumps(LARGE).replace(b"[76.5,120.5,37.5]", b"[76.5,true,37.5]", 1), "application/json"),
    (orjson.dumps({**LARGE, "labels": [0.0] + [1] * (ROWS - 1)}), "application/json"),  # not a class index
    (orjson.dumps({**LARGE, "labels": [[1]] * ROWS}), "application/json"),  # labels of rank 2
    (orjson.dumps({**LARGE, "labels": [2] * ROWS}), "application/json"),  # no such class
    (
        orjson.dumps({**LARGE, "layers": 0}).replace(b'"layers":0', b'"layers":' + b"[" * 1000 + b"]" * 1000),
        "application/json",
    ),
    # base64 tensors in and out, small and large
    (
        orjson.dumps(
            {
                **PLAIN,
                "features": {"shape": [3], "dtype": "float64", "b64": _b64([76.0, 120.0, 37.5], "<f8")},
                "response_encoding": "b64",
            }
        ),
        "application/json",
    ),
    (orjson.dumps({**PLAIN, "features": {"shape": [3], "b64": "not base64!"}}), "application/json"),
    (
        orjson.dumps(
            {
                **LARGE,
                "features": {"shape": [ROWS, 3], "dtype": "float32", "b64": _b64([76.5, 120.5, 37.5] * ROWS, "<f4")},
                "response_encoding": "b64",
            }
        ),
        "application/json",
    ),
]
STATUSES = [200, 200, 422, 422, 422, 422, 422, 400, 400, 400, 415, 415, 200, 200, 200, 200]
STATUSES += [422, 422, 422, 422, 422, 422, 200, 422, 200]


def _kept(content: bytes, whole: bool = False) -> dict[str, Any]:
    if len(content) <= INLINE_BYTES:
        return {"text": content.decode()}
    kept: dict[str, Any] = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    if whole:
        kept["gzip"] = base64.b64encode(gzip.compress(content, mtime=0)).decode()
    return kept


ROUNDING_ULPS = 64
"""How far apart a large answer's numbers may be on another CPU, in units of their dtype's epsilon
(relative to each tensor's largest magnitude)."""


def _tensors(document: Any) -> list[tuple[str, np.ndarray]]:
    """Every response tensor in `document`, in order, as (its place, its array); plain values as arrays too."""
    found: list[tuple[str, np.ndarray]] = []

    def walk(value: Any, place: str) -> None:
        if isinstance(value, dict) and "shape" in value and ("values" in value or "b64" in value):
            if "b64" in value:
                array = np.frombuffer(base64.b64decode(value["b64"]), dtype=np.dtype(value["dtype"]).newbyteorder("<"))
            else:
                array = np.asarray(value["values"], dtype=value["dtype"])
            found.append((place, array.reshape(value["shape"])))
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{place}.{key}")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{place}[{index}]")

    walk(document, "")
    return found


def _without_numbers(document: Any) -> Any:
    """`document` with every tensor's numbers left out: its structure, names, shapes and dtypes."""
    if isinstance(document, dict):
        return {key: _without_numbers(item) for key, item in document.items() if key not in {"values", "b64"}}
    if isinstance(document, list):
        return [_without_numbers(item) for item in document]
    return document


def assert_same_answer(now: dict[str, Any], before: dict[str, Any], case: int) -> None:
    """Byte for byte; a large body's numbers (where its bytes differ) to `ROUNDING_ULPS` of their dtype."""
    if now["response"].get("sha256") == before["response"].get("sha256") or "gzip" not in before["response"]:
        assert now == before, f"case {case} answers differently"
        return
    assert {**now, "response": None} == {**before, "response": None}, f"case {case} answers differently"
    answer, recorded = (
        orjson.loads(gzip.decompress(base64.b64decode(kept["response"]["gzip"]))) for kept in (now, before)
    )
    assert _without_numbers(answer) == _without_numbers(recorded), f"case {case} answers differently"
    for (place, value), (_, expected) in zip(_tensors(answer), _tensors(recorded), strict=True):
        assert value.dtype == expected.dtype and value.shape == expected.shape, f"case {case}: {place}"
        tolerance = ROUNDING_ULPS * np.finfo(expected.dtype).eps * max(float(np.max(np.abs(expected))), 1e-30)
        np.testing.assert_allclose(value, expected, rtol=0, atol=tolerance, err_msg=f"case {case}: {place}")


def answers() -> list[dict[str, Any]]:
    """Each case's request (kept or digested) and the service's answer: status, content type, body."""
    app = create_app(Settings(cpu_logical_devices=2))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        recorded = []
        for body, content_type in CASES:
            headers = {"content-type": content_type} if content_type else {}
            response = client.post(GRADIENTS, content=body, headers=headers)
            recorded.append(
                {
                    "request": {"content_type": content_type, **_kept(body)},
                    "status": response.status_code,
                    "content_type": response.headers["content-type"],
                    "response": _kept(response.content, whole=response.status_code == 200),
                }
            )
        return recorded


def test_the_networks_route_answers_the_recorded_cases_byte_for_byte() -> None:
    recorded = [orjson.loads(line) for line in FIXTURE.read_bytes().splitlines()]
    now = answers()
    assert [answer["status"] for answer in now] == STATUSES
    assert [answer["request"] for answer in now] == [answer["request"] for answer in recorded]
    for case, (answer, before) in enumerate(zip(now, recorded, strict=True)):
        assert_same_answer(answer, before, case)


def _with_first_gradient_scaled(kept: dict[str, Any], factor: float) -> dict[str, Any]:
    document = orjson.loads(gzip.decompress(base64.b64decode(kept["response"]["gzip"])))
    values = np.asarray(document["gradients"][0]["weights"]["values"], dtype=document["dtype"])
    document["gradients"][0]["weights"]["values"] = (values * np.asarray(factor, values.dtype)).tolist()
    content = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    return {**kept, "response": _kept(content, whole=True)}


@pytest.mark.parametrize("case", [13, 14])  # float32 and float64
def test_a_large_answer_may_differ_by_rounding_and_no_more(case: int) -> None:
    recorded = orjson.loads(FIXTURE.read_bytes().splitlines()[case])
    dtype = np.dtype(orjson.loads(gzip.decompress(base64.b64decode(recorded["response"]["gzip"])))["dtype"])
    rounding = _with_first_gradient_scaled(recorded, 1 + 4 * float(np.finfo(dtype).eps))
    assert rounding["response"]["sha256"] != recorded["response"]["sha256"]
    assert_same_answer(rounding, recorded, case)
    wrong = _with_first_gradient_scaled(recorded, 1 + 1e-3)
    with pytest.raises(AssertionError, match=f"case {case}: .gradients"):
        assert_same_answer(wrong, recorded, case)


def test_other_methods_and_a_trailing_slash_go_through_the_router(client: TestClient) -> None:
    assert client.get(GRADIENTS).status_code == 405
    assert client.put(GRADIENTS, json=SEED_REQUEST).status_code == 405
    redirected = client.post(GRADIENTS + "/", json=SEED_REQUEST, follow_redirects=False)
    assert redirected.status_code == 307 and redirected.headers["location"].endswith(GRADIENTS)


class _BrokenWorker:
    pinned_device = "/device:CPU:0"

    async def run(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internal state")

    async def network_gradients(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("secret internal state")


def test_an_unexpected_error_in_the_networks_route_is_a_logged_500_problem(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(cpu_logical_devices=2, warmup=False))
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.INFO):
        app.dependency_overrides[get_worker] = _BrokenWorker
        response = client.post(GRADIENTS, json=SEED_REQUEST, headers={"X-Request-ID": "incident-9"})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["request_id"] == "incident-9" == response.headers["x-request-id"]
    assert "secret internal state" not in response.text
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(record.__dict__.get("request_id") == "incident-9" and record.exc_info for record in errors)
    assert f'tapeserve_http_requests_total{{method="POST",route="{GRADIENTS}",status="500"}} 1.0' in metrics


def test_a_client_that_leaves_mid_body_gets_no_answer_and_logs_no_error(caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(Settings(cpu_logical_devices=2, warmup=False))
    messages = [{"type": "http.request", "body": b'{"features": [', "more_body": True}, {"type": "http.disconnect"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": GRADIENTS,
        "raw_path": GRADIENTS.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def leave_mid_body() -> None:
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    with caplog.at_level(logging.INFO):
        asyncio.run(leave_mid_body())
    assert sent == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


if __name__ == "__main__":
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_bytes(b"".join(orjson.dumps(answer) + b"\n" for answer in answers()))
    sys.stdout.write(f"{FIXTURE}: {len(CASES)} answers recorded\n")
