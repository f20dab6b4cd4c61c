"""/metrics (Prometheus text), JSON logs with request ids, access log lines, and request ids in 500 bodies."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from schemas.networks import SEED_REQUEST
from service import observability
from service.app import create_app
from service.observability import (
    UNMATCHED_ROUTE,
    BatchingStreamHandler,
    JsonFormatter,
    configure_logging,
    log_access,
)
from service.settings import Settings
from tests.blocking import BlockedWorker, wait_until
from tests.conftest import make_client, wait_ready
from tests.live_server import free_port

GRADIENTS = "/v1/networks/gradients"


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics keyed by (name, sorted labels), parsed with prometheus-client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def requests_total(samples: dict[Any, float], method: str, route: str, status: int) -> float:
    key = ("tapeserve_http_requests_total", (("method", method), ("route", route), ("status", str(status))))
    return samples.get(key, 0.0)


def two_layer_request() -> dict[str, Any]:
    """A structure the warm-up did not compile: its first request is a cache miss, the next a hit."""
    return {
        "features": [[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]],
        "labels": [0, 1],
        "layers": [
            {"weights": [[0.1, 0.2, -0.1, 0.0], [0.3, -0.2, 0.1, 0.05]], "activation": "relu"},
            {"weights": [[0.2, -0.3, 0.1], [-0.1, 0.4, 0.0]], "activation": "softmax"},
        ],
    }


def test_requests_are_counted_by_route_template_and_status() -> None:
    with make_client() as client:
        for _ in range(3):
            assert client.post(GRADIENTS, json=SEED_REQUEST).status_code == 200
        assert client.post(GRADIENTS, json={"features": [1.0]}).status_code == 422
        assert client.get("/no/such/path/12345").status_code == 404
        assert client.get(GRADIENTS).status_code == 405
        samples = scrape(client)
    assert requests_total(samples, "POST", GRADIENTS, 200) == 3
    assert requests_total(samples, "POST", GRADIENTS, 422) == 1
    assert requests_total(samples, "GET", GRADIENTS, 405) == 1
    assert requests_total(samples, "GET", UNMATCHED_ROUTE, 404) == 1
    assert not any("/no/such/path" in str(labels) for _, labels in samples)  # raw paths never become labels
    assert samples[("tapeserve_http_request_duration_seconds_count", (("route", GRADIENTS),))] == 5  # 3 + 1 + 405
    buckets = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "tapeserve_http_request_duration_seconds_bucket" and ("route", GRADIENTS) in labels
    }
    assert buckets[(("le", "+Inf"), ("route", GRADIENTS))] == 5
    assert buckets[(("le", "60.0"), ("route", GRADIENTS))] == 5


def test_answers_before_routing_are_counted_by_template_behind_a_root_path_too() -> None:
    """A 401 is answered before any route matched; behind a root path (uvicorn's `--root-path` puts it in front
    of every path) its template is still found."""
    with make_client(api_keys="the-key", warmup=False) as plain:
        client = TestClient(plain.app, root_path="/tapeserve")
        assert client.get("/tapeserve/v1/info").status_code == 401
        client.headers["Authorization"] = "Bearer the-key"
        samples = scrape(client)
    assert requests_total(samples, "GET", "/v1/info", 401) == 1
    assert requests_total(samples, "GET", UNMATCHED_ROUTE, 401) == 0


def test_unknown_methods_do_not_become_label_values(client: TestClient) -> None:
    client.request("BREW", "/healthz")
    samples = scrape(client)
    assert not any(("method", "BREW") in labels for _, labels in samples)
    assert any(("method", "OTHER") in labels for _, labels in samples)


def test_queue_depth_and_in_flight_are_read_at_scrape_time() -> None:
    with make_client(batch_window_ms=0) as client:
        blocked = BlockedWorker(client)
        blocked.occupy()
        blocked.enqueue(depth=1)
        blocked.enqueue(depth=2)
        waiting = threading.Thread(target=client.post, args=(GRADIENTS,), kwargs={"json": SEED_REQUEST})
        waiting.start()
        wait_until(lambda: blocked.worker.queue_depth == 3)
        samples = scrape(client)
        blocked.release.set()
        waiting.join(30)
        after = scrape(client)
    assert samples[("tapeserve_queue_depth", ())] == 3
    assert samples[("tapeserve_http_requests_in_flight", ())] == 2  # the waiting request and the scrape itself
    assert after[("tapeserve_queue_depth", ())] == 0
    assert after[("tapeserve_http_requests_in_flight", ())] == 1


def test_merged_batch_sizes_are_a_histogram() -> None:
    concurrent = 6
    with make_client(batch_window_ms=5) as client:
        blocked = BlockedWorker(client)
        blocked.occupy()
        before = scrape(client)  # the service's own warm-up request was a merged call too
        answers: list[int] = []
        threads = [
            threading.Thread(target=lambda: answers.append(client.post(GRADIENTS, json=SEED_REQUEST).status_code))
            for _ in range(concurrent)
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: blocked.worker.queue_depth == concurrent)
        blocked.release.set()  # the six waiting requests share one structure: one merged call
        for thread in threads:
            thread.join(30)
        samples = scrape(client)
    assert answers == [200] * concurrent

    def grew(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return samples[key] - before[key]

    assert grew(("tapeserve_batch_size_count", ())) == 1
    assert grew(("tapeserve_batch_size_sum", ())) == concurrent
    assert grew(("tapeserve_batch_size_bucket", (("le", "4"),))) == 0
    assert grew(("tapeserve_batch_size_bucket", (("le", "8"),))) == 1


def test_function_cache_hits_misses_and_traces() -> None:
    engine = (("engine", "networks"),)
    with make_client() as client:
        wait_ready(client)  # its own warm-up requests hit the cache too
        client.post(GRADIENTS, json=SEED_REQUEST)
        before = scrape(client)
        assert client.post(GRADIENTS, json=two_layer_request()).status_code == 200
        first = scrape(client)
        assert client.post(GRADIENTS, json=two_layer_request()).status_code == 200
        second = scrape(client)

    def delta(late: dict[Any, float], early: dict[Any, float], name: str) -> float:
        return late[(f"tapeserve_function_cache_{name}", engine)] - early[(f"tapeserve_function_cache_{name}", engine)]

    assert before[("tapeserve_function_cache_traces_total", engine)] >= 1  # the warm-up traced the seed
    assert delta(first, before, "misses_total") == 1 and delta(first, before, "traces_total") == 1
    assert delta(second, first, "hits_total") == 1 and delta(second, first, "misses_total") == 0
    assert delta(second, first, "traces_total") == 0
    assert first[("tapeserve_function_cache_size", engine)] == before[("tapeserve_function_cache_size", engine)] + 1


# ------------------------------------------------------------------------------------------------ logs
def test_json_formatter_writes_one_object_per_line() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("tapeserve.access", logging.INFO, __file__, 1, "%s %s", ("GET", "/healthz"), None)
    record.request_id = "req-1"
    record.status = 200
    record.duration_ms = 1.25
    line = formatter.format(record)
    assert "\n" not in line
    document = orjson.loads(line)
    assert document["level"] == "INFO" and document["logger"] == "tapeserve.access"
    assert document["msg"] == "GET /healthz"
    assert document["request_id"] == "req-1" and document["status"] == 200 and document["duration_ms"] == 1.25
    assert document["ts"].endswith("+00:00") and "T" in document["ts"]


def test_json_formatter_keeps_tracebacks_on_one_line() -> None:
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        record = logging.LogRecord("tapeserve", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert "ZeroDivisionError" in orjson.loads(line)["exc"]


@contextlib.contextmanager
def json_logging(stream: io.StringIO, flush_interval: float = 0.25) -> Iterator[logging.Handler]:
    """`configure_logging` writing to `stream`, and the root logger as it was afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("info", stream, flush_interval=flush_interval)
        yield root.handlers[0]
    finally:
        for handler in root.handlers:
            if handler not in saved_handlers:
                handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_configure_logging_routes_every_logger_to_json() -> None:
    stream = io.StringIO()
    with json_logging(stream) as handler:
        logging.getLogger("uvicorn.error").info("started")
        logging.getLogger("tapeserve.worker").debug("not at info level")
        handler.flush()
    lines = stream.getvalue().splitlines()
    assert [orjson.loads(line)["msg"] for line in lines] == ["started"]


def batching_logger(stream: io.StringIO, interval: float) -> tuple[logging.Logger, BatchingStreamHandler]:
    handler = BatchingStreamHandler(stream, interval)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"tapeserve.test.batching.{interval}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def test_info_lines_wait_for_the_interval_and_a_warning_writes_them_in_order() -> None:
    stream = io.StringIO()
    logger, handler = batching_logger(stream, interval=60)
    try:
        logger.info("one")
        logger.info("two")
        assert stream.getvalue() == ""  # batched: no write per line
        logger.warning("three")
        assert [orjson.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["one", "two", "three"]
        logger.info("four")
    finally:
        handler.close()  # what logging.shutdown does at exit: nothing pending is lost
    assert stream.getvalue().splitlines()[-1].endswith('"msg":"four"}')


def test_the_flusher_writes_pending_lines_within_the_interval() -> None:
    stream = io.StringIO()
    logger, handler = batching_logger(stream, interval=0.05)
    try:
        logger.info("waiting")
        wait_until(lambda: "waiting" in stream.getvalue(), seconds=5)
    finally:
        handler.close()


def test_interval_zero_writes_every_line_at_once() -> None:
    stream = io.StringIO()
    logger, handler = batching_logger(stream, interval=0)
    try:
        logger.info("now")
        assert "now" in stream.getvalue()
    finally:
        handler.close()


def test_access_lines_written_directly_equal_those_logging_writes() -> None:
    # the direct path (the batching handler is the only one) against logging's own (a filter on the
    # access logger sends the record through Logger, LogRecord and JsonFormatter.format)
    stream = io.StringIO()
    scope = {"method": "POST", "path": "/v1/networks/gradients", "state": {"request_id": "req-7"}}
    access = logging.getLogger("tapeserve.access")
    with json_logging(stream, flush_interval=0) as handler:
        assert observability._sole_access_handler() is handler
        log_access(scope, 200, 0.0012345)
        access.addFilter(lambda record: True)
        try:
            assert observability._sole_access_handler() is None
            log_access(scope, 200, 0.0012345)
        finally:
            access.filters.clear()
    direct, logged = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert direct.pop("ts")[:16] == logged.pop("ts")[:16]  # the same minute (ISO 8601 with milliseconds)
    assert list(direct.items()) == list(logged.items())  # the same members, in the same order
    assert direct == {
        "level": "INFO",
        "logger": "tapeserve.access",
        "msg": "POST /v1/networks/gradients 200",
        "request_id": "req-7",
        "method": "POST",
        "path": "/v1/networks/gradients",
        "status": 200,
        "duration_ms": 1.234,
    }


def test_log_timestamps_are_what_datetime_writes() -> None:
    # every millisecond of two seconds, and times either side of each rounding edge: microseconds round
    # half to even (999999.5 µs is the next second), milliseconds are cut
    start = 1_796_700_000
    times = [start + step / 1000 for step in range(2000)]
    times += [start + fraction for fraction in (0.9999995, 0.9999994, 0.0004995, 0.0005, 0.9995, 0.5000005)]
    times += [math.nextafter(value, direction) for value in times[-6:] for direction in (0, 2 * start)]
    rng = np.random.default_rng(5)
    times += (rng.uniform(0, 4e9, size=20_000)).tolist()
    for created in times:
        assert observability.timestamp(created) == datetime.fromtimestamp(created, UTC).isoformat(
            timespec="milliseconds"
        ), created


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "tapeserve.access"]


def test_one_access_line_per_request_with_its_request_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tapeserve.access"):
        given = client.post(GRADIENTS, json=SEED_REQUEST, headers={"X-Request-ID": "trace-42.a:b"})
        generated = client.get("/healthz", headers={"X-Request-ID": "not a valid id!"})
    records = access_records(caplog)
    assert len(records) == 2
    assert given.headers["x-request-id"] == "trace-42.a:b"
    assert generated.headers["x-request-id"] != "not a valid id!" and len(generated.headers["x-request-id"]) == 32
    for record, response in zip(records, (given, generated), strict=True):
        fields = record.__dict__
        assert fields["request_id"] == response.headers["x-request-id"]
        assert fields["status"] == response.status_code
        assert fields["method"] == response.request.method and fields["path"] == response.request.url.path
        assert fields["duration_ms"] > 0


def test_every_answer_carries_exactly_one_request_id() -> None:
    with make_client(api_keys="the-key", warmup=False) as client:
        answers = [
            client.get("/healthz"),
            client.get("/v1/info"),  # 401 from the key check
            client.post(GRADIENTS, json={"features": 1}, headers={"Authorization": "Bearer the-key"}),  # 422
            client.get("/nowhere"),  # 404
        ]
    assert [answer.status_code for answer in answers] == [200, 401, 422, 404]
    for answer in answers:
        assert len(answer.headers.get_list("x-request-id")) == 1, answer.headers


def test_access_log_can_be_turned_off(caplog: pytest.LogCaptureFixture) -> None:
    with make_client(access_log=False, warmup=False) as client, caplog.at_level(logging.INFO):
        assert client.get("/healthz").status_code == 200
    assert access_records(caplog) == []


# ------------------------------------------------------------------------------------------------ 500s
def failing_app_client() -> TestClient:
    app = create_app(Settings(cpu_logical_devices=2, warmup=False))

    async def broken() -> None:
        raise RuntimeError("secret internal state")

    app.add_api_route("/v1/broken", broken, methods=["GET"])
    return TestClient(app, raise_server_exceptions=False)


def test_500_body_repeats_the_request_id_and_the_log_has_it(caplog: pytest.LogCaptureFixture) -> None:
    with failing_app_client() as client, caplog.at_level(logging.INFO):
        response = client.get("/v1/broken", headers={"X-Request-ID": "incident-7"})
        generated = client.get("/v1/broken")
        samples = scrape(client)
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["request_id"] == "incident-7" == response.headers["x-request-id"]
    assert "secret internal state" not in response.text and "Traceback" not in response.text
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(record.__dict__.get("request_id") == "incident-7" and record.exc_info for record in errors)
    assert [record.__dict__["status"] for record in access_records(caplog)][:2] == [500, 500]
    assert requests_total(samples, "GET", "/v1/broken", 500) == 2


# ------------------------------------------------------------------------------------------------ the real command
def test_served_process_logs_json_lines(tmp_path: Any) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TAPESERVE_PORT": str(port),
        "TAPESERVE_WARMUP": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "service", "serve"], env=env, stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, "the server never answered"
                try:
                    response = httpx.get(base + "/healthz", headers={"X-Request-ID": "from-the-test"}, timeout=1)
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            assert response.status_code == 200
        finally:
            process.terminate()
            process.wait(timeout=30)
    # TensorFlow's C++ start-up lines bypass Python logging; every Python log line is one JSON object
    documents = [orjson.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(document["logger"].startswith("uvicorn") for document in documents)
    assert not any("color_message" in document for document in documents)  # no terminal colour codes
    access = [document for document in documents if document["logger"] == "tapeserve.access"]
    assert access and access[-1]["request_id"] == "from-the-test"
    assert access[-1]["path"] == "/healthz" and access[-1]["status"] == 200
    assert {"ts", "level", "logger", "msg", "method", "duration_ms"} <= access[-1].keys()


def test_fastapis_opentelemetry_is_off_unless_asked_for() -> None:
    # its per-request check for configured providers cost ~4 µs; the service has /metrics and JSON logs
    assert create_app(Settings(warmup=False))._telemetry["tracing"] is False
    assert create_app(Settings(warmup=False, opentelemetry=True))._telemetry["tracing"] is True
