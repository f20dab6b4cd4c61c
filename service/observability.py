"""Prometheus metrics at `/metrics`, one JSON log line per request, and the JSON log format itself.

The middleware is the only code on the hot path: a counter, a histogram observation and (optionally) one
access-log record per request. Everything read from the worker (queue depth, batch sizes, function-cache
hits/misses/traces) is collected at scrape time, so requests pay nothing for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.middleware import HttpMiddleware, route_path

access_logger = logging.getLogger("tapeserve.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
"""Route label of requests no route matched: raw paths would let clients create unbounded label values."""

# attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON object
# (uvicorn's color_message is its msg again with terminal colour codes)
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",
}


_second: list[Any] = [None, ""]
"""The last whole second `timestamp` wrote and its text up to the seconds."""


def timestamp(created: float) -> str:
    """`datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`, the date and time of day
    formatted once per second: microseconds rounded half to even as `fromtimestamp` rounds them, then
    the milliseconds cut as `isoformat` cuts them."""
    whole = math.floor(created)
    micro = round((created - whole) * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    second, text = _second
    if whole != second:
        text = datetime.fromtimestamp(whole, UTC).isoformat()[:19]
        _second[:] = [whole, text]  # one list assignment: another thread reads a matching pair
    return f"{text}.{micro // 1000:03d}+00:00"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then every `extra=` field (request_id, status, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()

    @staticmethod
    def access_line(created: float, method: str, path: str, status: int, extra: dict[str, Any]) -> str:
        """What `format` writes for the access record `"%s %s %d" % (method, path, status)` with `extra`,
        logged at `created`: the same object, built without a `LogRecord`."""
        document: dict[str, Any] = {
            "ts": timestamp(created),
            "level": "INFO",
            "logger": access_logger.name,
            "msg": f"{method} {path} {status}",
            **extra,
        }
        return orjson.dumps(document, default=str).decode()


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches, as nginx's `access_log ... buffer= flush=` does.

    Info and debug lines (the access log above all) wait in memory until a warning or error arrives (which
    is written at once, after them, so the order holds), 64 KiB are pending, or `interval` seconds have
    passed (a daemon thread flushes). One write per batch instead of per line matters on the event loop:
    every write releases the GIL, and getting it back from the TensorFlow thread cost ~75 µs a request
    under load, a quarter of the throughput. `interval` 0 writes every line at once.
    """

    capacity = 64 * 1024

    def __init__(self, stream: IO[str], interval: float) -> None:
        super().__init__(stream)
        self.interval = interval
        self._pending: list[str] = []
        self._pending_chars = 0
        self._stop = threading.Event()
        if interval > 0:
            threading.Thread(target=self._flush_every_interval, name="tapeserve-log-flush", daemon=True).start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle holds self.lock around emit
        try:
            line = self.format(record) + self.terminator
            self._pending.append(line)
            self._pending_chars += len(line)
            if self.interval <= 0 or record.levelno >= logging.WARNING or self._pending_chars >= self.capacity:
                self._write_pending()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def emit_line(self, line: str) -> None:
        """Write one already formatted info line as `emit` would (batched)."""
        with self.lock:  # type: ignore[union-attr]
            self._pending.append(line + self.terminator)
            self._pending_chars += len(line) + 1
            if self.interval <= 0 or self._pending_chars >= self.capacity:
                self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            self.stream.write("".join(self._pending))
            self._pending.clear()
            self._pending_chars = 0
        self.stream.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _flush_every_interval(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # a closed stream at shutdown: nothing left to write to
                return

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(ValueError):  # the stream was closed before the handler
            self.flush()
        super().close()


def configure_logging(level: str, stream: IO[str] | None = None, flush_interval: float = 0.25) -> None:
    """Route every logger (the service's, uvicorn's, TensorFlow's) to one JSON-lines handler on stderr,
    writing in batches at least every `flush_interval` seconds (see `BatchingStreamHandler`)."""
    handler = BatchingStreamHandler(stream or sys.stderr, flush_interval)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # TensorFlow's and absl's Python loggers may carry a plain-text handler of their own: theirs go to ours
    for name in ("tensorflow", "absl"):
        own = logging.getLogger(name)
        own.handlers.clear()
        own.propagate = True
    logging.captureWarnings(True)  # warnings.warn(...) as JSON records of the "py.warnings" logger
    # the JSON lines carry none of these, and gathering them is a third of the cost of a record (the
    # logging HOWTO's "Optimization" section): the caller's frame, thread, process and process name
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


class Metrics:
    """The per-app registry (tests build many apps; the process-global registry would collide)."""

    def __init__(self, app: FastAPI) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tapeserve_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "tapeserve_http_request_duration_seconds",
            "Time from receiving a request to having sent its whole response, by route template.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = 0
        # labelled children cached: `labels()` takes a lock and builds a key on every call
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.registry.register(WorkerCollector(app, self))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.latency.labels(route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class WorkerCollector(Collector):
    """Read at scrape time: in-flight requests, the worker's queue depth, batch sizes and function caches."""

    def __init__(self, app: FastAPI, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "tapeserve_http_requests_in_flight", "Requests being served now.", value=self.metrics.in_flight
        )
        worker = getattr(self.app.state, "worker", None)
        if worker is None:
            return
        yield GaugeMetricFamily("tapeserve_worker_ready", "1 once the worker is warm.", value=int(worker.ready))
        yield GaugeMetricFamily(
            "tapeserve_queue_depth", "Jobs waiting for the TensorFlow worker.", value=worker.queue_depth
        )
        stats = worker.stats
        yield CounterMetricFamily("tapeserve_worker_jobs", "Jobs the worker ran.", value=stats.jobs)
        yield CounterMetricFamily(
            "tapeserve_worker_expired_jobs",
            "Jobs dropped unrun because their deadline passed while they waited.",
            value=stats.dropped_expired,
        )
        yield _batch_size_histogram(dict(stats.batch_sizes), worker.settings.max_batch_requests)
        caches = worker.engine_stats().items()
        for name, family, help_text in (
            ("hits", CounterMetricFamily, "Requests served by an already compiled function."),
            ("misses", CounterMetricFamily, "Requests that needed a function compiled for a new structure."),
            ("traces", CounterMetricFamily, "Times a compiled function was traced (retraces included)."),
            ("size", GaugeMetricFamily, "Compiled functions held."),
        ):
            metric = family(f"tapeserve_function_cache_{name}", help_text, labels=("engine",))
            for engine, counts in caches:
                metric.add_metric((engine,), counts[name])
            yield metric


def _batch_size_histogram(batch_sizes: dict[int, int], max_batch: int) -> HistogramMetricFamily:
    """Merged-call sizes as a Prometheus histogram with power-of-two buckets up to the batch limit."""
    bounds: list[int] = []
    bound = 1
    while bound < max_batch:
        bounds.append(bound)
        bound *= 2
    bounds.append(max_batch)
    buckets = [(str(edge), sum(count for size, count in batch_sizes.items() if size <= edge)) for edge in bounds]
    buckets.append(("+Inf", sum(batch_sizes.values())))
    total = sum(size * count for size, count in batch_sizes.items())
    return HistogramMetricFamily(
        "tapeserve_batch_size",
        "Requests merged into one compiled call (1 = not merged).",
        buckets=buckets,
        sum_value=total,
    )


class RouteLabels:
    """The route-template label of a request: the matched route's, else found from the app's templates.

    Requests answered before routing (401, 413) and static mounts carry no matched route in the scope; their
    template is looked up among the OpenAPI paths and mounts, compiled once on first need.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, scope: Scope) -> str:
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        for pattern, template in self._compiled():
            if pattern.match(route_path(scope)):
                return template
        return UNMATCHED_ROUTE

    def _compiled(self) -> list[tuple[re.Pattern[str], str]]:
        if self._patterns is None:
            try:
                templates = list(self.app.openapi().get("paths", {}))
            except Exception:  # a broken schema must not break metrics; it is reported at /openapi.json
                templates = []
            patterns = [(compile_path(template)[0], template) for template in templates]
            for route in self.app.routes:
                path = getattr(route, "path", None)
                if isinstance(route, Mount):
                    patterns.append((re.compile(re.escape(route.path) + "/"), route.path))
                elif isinstance(path, str):
                    patterns.append((compile_path(path)[0], path))
            self._patterns = patterns
        return self._patterns


WARM_UP_SCOPE_KEY = "tapeserve.warm_up"
"""Set in the scope of the request the service sends itself at start-up (see `service.http.call_self`)."""


class ObservabilityMiddleware(HttpMiddleware):
    """Counts, times and logs every request: the outermost middleware, so it sees every answer."""

    def __init__(self, app: ASGIApp, metrics: Metrics, route_labels: RouteLabels, access_log: bool) -> None:
        super().__init__(app)
        self.metrics = metrics
        self.route_labels = route_labels
        self.access_log = access_log

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        if scope.get(WARM_UP_SCOPE_KEY):  # the service's own start-up request is not traffic
            await self.app(scope, receive, send)
            return
        metrics = self.metrics
        metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            metrics.in_flight -= 1
            seconds = time.perf_counter() - started
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            metrics.observe(method, self.route_labels(scope), status, seconds)
            if self.access_log and access_logger.isEnabledFor(logging.INFO):
                log_access(scope, status, seconds)


def _sole_access_handler() -> BatchingStreamHandler | None:
    """The handler every access record reaches and the only one, when nothing else (a filter, another
    handler, another formatter) could see or change the record on its way: then the line can be handed to
    it ready-made. Checked on every call, so a reconfigured logging (pytest's caplog, say) takes effect."""
    logger: logging.Logger | None = access_logger
    while logger is not None and logger is not logging.root:
        if logger.handlers or logger.filters or not logger.propagate:
            return None
        logger = logger.parent
    root = logging.root
    if logger is not root or len(root.handlers) != 1 or root.filters:
        return None
    handler = root.handlers[0]
    if type(handler) is not BatchingStreamHandler or type(handler.formatter) is not JsonFormatter:
        return None
    return None if handler.filters or handler.level > logging.INFO else handler


def log_access(scope: Scope, status: int, seconds: float) -> None:
    """The access line of one request: `"METHOD path status"` with its request id, method, path, status
    and duration. Where logging would only format it and batch it (`_sole_access_handler`), it is
    formatted here and batched directly, without a `LogRecord`."""
    method, path = scope["method"], scope["path"]
    extra = {
        "request_id": scope.get("state", {}).get("request_id"),
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": round(seconds * 1000.0, 3),
    }
    handler = _sole_access_handler()
    if handler is None:
        access_logger.info("%s %s %d", method, path, status, extra=extra)
    else:
        handler.emit_line(JsonFormatter.access_line(time.time(), method, path, status, extra))


router = APIRouter(tags=["service"])


@router.get(
    "/metrics",
    summary="Prometheus metrics (text format; OpenMetrics when asked for)",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics.registry
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)


def install_observability(app: FastAPI, access_log: bool) -> None:
    """Add the metrics/access-log middleware (call last: it must be the outermost) and `GET /metrics`."""
    app.state.metrics = Metrics(app)
    app.add_middleware(
        ObservabilityMiddleware, metrics=app.state.metrics, route_labels=RouteLabels(app), access_log=access_log
    )
    app.include_router(router)
