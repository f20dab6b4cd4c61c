"""The TensorFlow worker: owns the device, runs every computation in its own thread.

Routes `await worker.run(...)`; jobs wait in a bounded queue (429 when full), carry a deadline (504 when it
passes; a job whose deadline passed before it started is dropped, not run) and run inside
`with tf.device(pinned_device)`. Compatible network jobs waiting together are merged into one compiled call
(micro-batching) and split back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.compute.errors import ComputeError, LimitExceeded
from service.compute.networks import NetworkProblem, NetworkResult
from service.compute.networks.engine import NetworkEngine
from service.errors import DeadlineExceeded, QueueFull, ServiceError
from service.settings import Settings

logger = logging.getLogger("tapeserve.worker")

T = TypeVar("T")
MergeFn = Callable[[Sequence[Any]], Sequence[Any]]


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine (and no fallback was allowed)."""


@dataclass(eq=False)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    deadline: float
    call: Callable[[], Any] | None = None
    merge_key: Hashable | None = None
    merge_item: Any = None
    merge_fn: MergeFn | None = None
    abandoned: bool = False
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class WorkerStats:
    jobs: int = 0
    merged_calls: int = 0
    merged_jobs: int = 0
    dropped_expired: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


def resolve_device(requested: str, fallback: str, cpu_logical_devices: int) -> tuple[str, list[str]]:
    """Resolve `TAPESERVE_DEVICE` to a logical device name once, at start; returns (pinned, visible)."""
    import tensorflow as tf  # noqa: PLC0415  (TensorFlow is loaded in the worker thread only)

    cpus = tf.config.list_physical_devices("CPU")
    gpus = tf.config.list_physical_devices("GPU")
    if cpu_logical_devices > 1 and cpus:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_logical_devices)]
            )
        except RuntimeError:
            logger.info("TensorFlow already initialised; keeping its logical CPU devices")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except (RuntimeError, ValueError):
            logger.info("memory growth for %s could not be changed after initialisation", gpu.name)
    logical = [device.name for device in tf.config.list_logical_devices()]
    gpu_names = [name for name in logical if ":GPU:" in name]
    cpu_names = [name for name in logical if ":CPU:" in name]

    wanted = requested.strip().lower()
    candidates: list[str]
    if wanted == "auto":
        candidates = gpu_names[:1] or cpu_names[:1]
    elif wanted == "cpu":
        candidates = cpu_names[:1]
    elif wanted == "gpu" or wanted.startswith("gpu:"):
        index = int(wanted.split(":", 1)[1]) if ":" in wanted else 0
        candidates = [name for name in gpu_names if name.endswith(f":GPU:{index}")]
    else:
        suffix = requested.strip().upper().lstrip("/")
        suffix = suffix.removeprefix("DEVICE:")
        candidates = [name for name in logical if name.upper().endswith(suffix)]
    if not candidates and fallback == "cpu" and cpu_names:
        logger.warning("device %r is not available; falling back to %s", requested, cpu_names[0])
        candidates = cpu_names[:1]
    if candidates:
        # the fully qualified name, as TensorFlow reports where a tensor lives
        with tf.device(candidates[0]):
            placed = tf.identity(tf.zeros(()))
        return str(placed.device), logical
    raise DeviceUnavailable(
        f"TAPESERVE_DEVICE={requested!r} is not available (visible devices: {', '.join(logical)}); "
        "set TAPESERVE_DEVICE_FALLBACK=cpu to run on the CPU instead"
    )


class Worker:
    """One thread that owns TensorFlow and the pinned device; an asyncio-facing bounded job queue."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.networks = NetworkEngine(cache_size=settings.function_cache_size, jit_compile=settings.xla)
        # merged calls pad to the smallest compiled size: 8 and the merge limit cover every burst without
        # compiling on the request path, at two compiles' cost of start-up time
        merged = sorted({min(8, settings.max_batch_requests), settings.max_batch_requests} - {1})
        self._warmups: list[Callable[[], None]] = (
            [lambda: self.networks.warmup(merged_sizes=merged)] if settings.warmup else []
        )
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=settings.queue_limit)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.pinned_device = ""
        self.visible_devices: list[str] = []
        self.tf_version = ""
        self.stats = WorkerStats()
        self._carry: list[_Job | None] = []
        self._merge_load = 1.0
        """Moving average of requests per merged call: above 1.5, the worker waits the window for more."""

    # ------------------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start the thread; returns once the device is resolved (raises if it cannot be)."""
        self._thread = threading.Thread(target=self._main, name="tapeserve-worker", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._started.wait)
        if self._start_error is not None:
            raise self._start_error

    async def stop(self) -> None:
        """Drain: jobs already queued finish, then the thread ends."""
        if self._thread is None:
            return
        await asyncio.to_thread(self._queue.put, None)
        await asyncio.to_thread(self._thread.join, 60)
        self._thread = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Return once warm-up has finished."""
        while not self._ready.is_set():
            await asyncio.sleep(0.01)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _main(self) -> None:
        try:
            import tensorflow as tf  # noqa: PLC0415

            threads = os.cpu_count() or 1
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:
            pass  # already initialised by an earlier app in this process
        try:
            self.pinned_device, self.visible_devices = resolve_device(
                self.settings.device, self.settings.device_fallback, self.settings.cpu_logical_devices
            )
            self.tf_version = tf.__version__
        except BaseException as error:  # reported to start() and re-raised there
            self._start_error = error
            self._started.set()
            return
        self._started.set()
        with tf.device(self.pinned_device):
            for warmup in self._warmups:
                try:
                    warmup()
                except Exception:
                    logger.exception("warm-up failed; serving anyway")
            # everything long-lived is loaded now (TensorFlow, the app, compiled functions): moving it out of
            # the collector's sight makes the collections a large JSON body triggers ~10x cheaper
            gc.freeze()
            self._ready.set()
            self._loop()

    # ------------------------------------------------------------------------------ submitting
    def _job(self, deadline: float | None) -> _Job:
        loop = asyncio.get_running_loop()
        return _Job(loop, loop.create_future(), deadline or self.deadline())

    async def _await(self, job: _Job) -> Any:
        # jobs submitted during warm-up wait in the queue; /readyz is what keeps balancers away until then
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"{self.settings.queue_limit} jobs are already waiting (TAPESERVE_QUEUE_LIMIT); retry shortly.",
                headers={"Retry-After": "1"},
            ) from None
        # a timer on the loop, cheaper than asyncio.wait_for's extra future and task per request
        expiry = job.loop.call_at(job.loop.time() + max(job.deadline - time.monotonic(), 0.0), self._expire, job)
        try:
            return await job.future
        finally:
            expiry.cancel()

    def _expire(self, job: _Job) -> None:
        """At the deadline, on the loop: answer 504 now; the computation may finish, its result is dropped."""
        if not job.future.done():
            job.abandoned = True
            job.future.set_exception(
                DeadlineExceeded(
                    f"The request took longer than its deadline of {self.settings.timeout_s:g} s (TAPESERVE_TIMEOUT_S)."
                )
            )

    def deadline(self) -> float:
        """The monotonic deadline of a request starting now."""
        return time.monotonic() + self.settings.timeout_s

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float | None = None, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` in the worker thread on the pinned device."""
        job = self._job(deadline)
        job.call = lambda: fn(*args, **kwargs)
        result: T = await self._await(job)
        return result

    async def run_merged(self, key: Hashable, item: Any, merge_fn: MergeFn, deadline: float | None = None) -> Any:
        """Run `merge_fn([item])[0]`, possibly merged with other queued items of the same `key`."""
        job = self._job(deadline)
        job.merge_key, job.merge_item, job.merge_fn = key, item, merge_fn
        return await self._await(job)

    async def network_gradients(self, problem: NetworkProblem, deadline: float | None = None) -> NetworkResult:
        """One network request; merged with queued requests of the same structure."""
        result: NetworkResult = await self.run_merged(("networks", problem.spec), problem, self.networks.run, deadline)
        return result

    # ------------------------------------------------------------------------------ the thread
    def _next(self, block: bool) -> _Job | None:
        if self._carry:
            return self._carry.pop(0)
        return self._queue.get() if block else self._queue.get_nowait()

    def _loop(self) -> None:
        while True:
            job = self._next(block=True)
            if job is None:
                return
            if job.merge_key is None:
                self._run_single(job)
            else:
                self._run_merged(self._gather(job))

    def _live(self, job: _Job) -> bool:
        """Whether to run a job: not if its request gave up or its deadline passed while it waited."""
        if job.abandoned:
            return False
        if time.monotonic() > job.deadline:
            self.stats.dropped_expired += 1
            error = DeadlineExceeded("The request's deadline passed while it waited in the queue.")
            self._finish(job, None, error)
            return False
        return True

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` plus queued jobs with its merge key: those already waiting, then any arriving in the window."""
        batch = [first]
        window = self.settings.batch_window_ms / 1000.0
        if window <= 0:
            return batch
        limit = self.settings.max_batch_requests
        others: list[_Job | None] = []
        until = time.monotonic() + window
        # wait out the window only under load (recent calls merged several requests): a lone client
        # never waits, and a burst keeps its requests together instead of trickling through one by one
        loaded = self._merge_load > 1.5
        while len(batch) < limit:
            try:
                job = self._next(block=False)
            except queue.Empty:
                if not (loaded or len(batch) > 1) or time.monotonic() >= until:
                    break
                try:
                    job = self._queue.get(timeout=max(until - time.monotonic(), 0.0))
                except queue.Empty:
                    break
            if job is None:
                others.append(None)  # the stop marker: the loop sees it after this batch
                break
            (batch if job.merge_key == first.merge_key else others).append(job)
        self._carry.extend(others)
        self._merge_load = 0.8 * self._merge_load + 0.2 * len(batch)
        return batch

    def _finish(self, job: _Job, outcome: Any, error: BaseException | None) -> None:
        """Hand the outcome to the job's event loop (futures are not thread-safe)."""
        _hand_over(job.loop, _resolve, job.future, outcome, error)

    def _run_single(self, job: _Job) -> None:
        if not self._live(job):
            return
        self.stats.jobs += 1
        try:
            outcome = job.call() if job.call is not None else None
        except BaseException as error:
            self._finish(job, None, _translate(error))
            return
        self._finish(job, outcome, None)

    def _run_merged(self, jobs: list[_Job]) -> None:
        live = [job for job in jobs if self._live(job)]
        if not live:
            return
        self.stats.jobs += len(live)
        self.stats.merged_calls += 1
        self.stats.merged_jobs += len(live)
        self.stats.batch_sizes[len(live)] = self.stats.batch_sizes.get(len(live), 0) + 1
        merge_fn = live[0].merge_fn
        try:
            if merge_fn is None:
                raise TypeError("a merged job needs a merge function")
            outcomes = merge_fn([job.merge_item for job in live])
        except BaseException as error:
            translated = _translate(error)
            for job in live:
                self._finish(job, None, translated)
            return
        # one hand-over to the event loop for the whole batch, not one wake-up of it per request
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for job, outcome in zip(live, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, outcome))
        for loop, answers in by_loop.items():
            _hand_over(loop, _resolve_all, answers)


def _hand_over(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        logger.info("the event loop of a finished job is closed; its result is dropped")


def _resolve(future: asyncio.Future[Any], outcome: Any, error: BaseException | None) -> None:
    if future.done():  # the deadline answered first, or the request was cancelled
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome)


def _resolve_all(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in answers:
        _resolve(future, outcome, None)


def _translate(error: BaseException) -> BaseException:
    """TensorFlow's resource errors become the client's 422; our own errors pass as they are."""
    if isinstance(error, ServiceError | ComputeError):
        return error
    name = type(error).__name__
    if name == "ResourceExhaustedError" or isinstance(error, MemoryError):
        return LimitExceeded("The computation ran out of memory on the device; send a smaller request.")
    return error
