"""The worker: owns TensorFlow and the device, and runs every job of every engine in its own threads.

Engines register by name with a factory (a callable, or a "package.module:factory" path imported in the
worker's thread), and with a lane: a thread of the worker with its bounded queue. The worker builds each
engine in its lane's thread, so TensorFlow is imported and used there, never on the event loop nor at import
time: `start` loads it in the lanes' threads, before anything else of the service does. The one other thread
that uses TensorFlow is the repository's loader, which the app's lifespan starts after the worker: it loads
and warms up what the service serves off the request path. `await worker.run(engine, job, deadline)` is the one
way to run anything: a full queue is a 429, a passed deadline a 504 (a job whose deadline passed before it
started is dropped, not run). Every lane runs inside `with tf.device(pinned_device)`. An engine keys its
jobs: jobs of one non-None key waiting together become one call of its `run` (micro-batching), split back.
The worker knows no engine by name.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.compute.errors import ComputeError, JobFailed, LimitExceeded
from service.errors import DeadlineExceeded, QueueFull, ServiceError
from service.settings import Settings

logger = logging.getLogger("tapeserve.worker")

MAIN_LANE = "compute"
"""The lane every worker has: it resolves the device, and engines run there unless they name another."""


class Engine(Protocol):
    """What the worker needs of an engine. It may also have `warmup() -> None` (run in its lane before the
    worker reports ready) and `stats() -> Mapping[str, int]` (its compiled-function cache, read by any thread)."""

    def merge_key(self, job: Any) -> Hashable | None:
        """Jobs with one non-None key may run in one call of `run`; None: the job always runs alone.
        Called in the lane's thread; it must not raise."""

    def run(self, jobs: Sequence[Any]) -> Sequence[Any]:
        """One result per job, in order. An exception answers every job of the call; a `JobFailed` result
        answers its own job with its error."""


class EngineContext(Protocol):
    """What a factory gets: the settings, and the other engines (built on demand)."""

    settings: Settings

    def engine(self, name: str) -> Engine: ...


EngineFactory = Callable[[EngineContext], Engine]


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine (and no fallback was allowed)."""


@dataclass(eq=False)
class WorkerStats:
    jobs: int = 0
    merged_calls: int = 0
    merged_jobs: int = 0
    dropped_expired: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)


_UNKEYED: Any = object()
"""A job's key before its lane has asked the engine."""


@dataclass(eq=False)
class _Registration:
    name: str
    factory: EngineFactory | str
    lane: _Lane
    engine: Engine | None = None


@dataclass(eq=False, slots=True)
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    deadline: float
    registration: _Registration
    item: Any
    key: Any = _UNKEYED
    abandoned: bool = False


class _Lane:
    """One thread of the worker, its bounded queue, and the engines that run in it."""

    def __init__(self, name: str, queue_limit: int, full: str) -> None:
        self.name = name
        self.queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_limit)
        self.full = full
        """The 429's detail when the queue is full."""
        self.registrations: list[_Registration] = []
        self.thread: threading.Thread | None = None
        self.built = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.stats = WorkerStats()
        self.carry: list[_Job | None] = []
        self.merge_load = 1.0
        """Moving average of requests per merged call: above 1.5, the lane waits the window for more."""

    def next(self, block: bool) -> _Job | None:
        if self.carry:
            return self.carry.pop(0)
        return self.queue.get() if block else self.queue.get_nowait()


def resolve_device(requested: str, fallback: str, cpu_logical_devices: int) -> tuple[str, list[str]]:
    """Resolve `TAPESERVE_DEVICE` to a logical device name once, at start; returns (pinned, visible)."""
    import tensorflow as tf  # noqa: PLC0415  (called in the main lane's thread, which loads TensorFlow)

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
    """The lanes (threads that own TensorFlow), their bounded job queues, and the engines registered in them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lanes: dict[str, _Lane] = {}
        self._registrations: dict[str, _Registration] = {}
        self._building = threading.RLock()
        self._device_resolved = threading.Event()
        self._started = False
        self.add_lane(
            MAIN_LANE,
            settings.queue_limit,
            f"{settings.queue_limit} jobs are already waiting (TAPESERVE_QUEUE_LIMIT); retry shortly.",
        )
        self.pinned_device = ""
        self.visible_devices: list[str] = []
        self.tf_version = ""

    # ------------------------------------------------------------------------------ engines and lanes
    def add_lane(self, name: str, queue_limit: int, full: str | None = None) -> None:
        """A thread of its own, for engines whose jobs must not wait behind the others' (nor hold them up);
        `full` is the 429's detail when `queue_limit` jobs already wait in it."""
        if self._started:
            raise RuntimeError("lanes are added before the worker starts")
        if name in self._lanes:
            raise ValueError(f"the worker already has a lane named {name!r}")
        detail = full or f"{queue_limit} jobs are already waiting for the {name} lane; retry shortly."
        self._lanes[name] = _Lane(name, queue_limit, detail)

    def register(self, name: str, factory: EngineFactory | str, lane: str = MAIN_LANE) -> None:
        """The engine `factory(context)` builds, run in `lane` as `name`. `factory` may be a
        "package.module:function" path, imported in the lane's thread. Engines registered before `start`
        are built there, in order; later ones on their first job. Registering a name again with the same
        factory and lane does nothing."""
        found = self._registrations.get(name)
        if found is not None:
            if found.factory == factory and found.lane.name == lane:
                return
            raise ValueError(f"an engine named {name!r} is already registered")
        chosen = self._lanes.get(lane)
        if chosen is None:
            raise ValueError(f"the worker has no lane named {lane!r}; add it with add_lane first")
        registration = _Registration(name, factory, chosen)
        chosen.registrations.append(registration)
        self._registrations[name] = registration

    def engine(self, name: str) -> Engine:
        """The engine registered as `name`, built now if it is not yet. For factories (which run in the
        worker's threads): an engine is never built on the event loop."""
        registration = self._registrations.get(name)
        if registration is None:
            raise LookupError(f"no engine named {name!r} is registered with the worker")
        if registration.engine is None and not self._in_lane():
            raise RuntimeError(f"the {name} engine is built in the worker's threads only")
        return self._build(registration)

    def engine_stats(self) -> dict[str, Mapping[str, int]]:
        """The `stats()` of every built engine that has them, by name."""
        found: dict[str, Mapping[str, int]] = {}
        for name, registration in list(self._registrations.items()):
            stats = getattr(registration.engine, "stats", None)
            if stats is not None:
                found[name] = stats()
        return found

    def _in_lane(self) -> bool:
        current = threading.current_thread()
        return any(lane.thread is current for lane in self._lanes.values())

    def _build(self, registration: _Registration) -> Engine:
        engine = registration.engine
        if engine is not None:
            return engine
        with self._building:  # one build of each engine, whichever lane asks first
            if registration.engine is None:
                factory = registration.factory
                if isinstance(factory, str):
                    factory = _imported(factory)
                registration.engine = factory(self)
            return registration.engine

    # ------------------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        """Start every lane; returns once the device is resolved and the engines registered so far are built
        (raises what failed: the device, or an engine's factory)."""
        self._started = True
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.thread = threading.Thread(target=self._main, args=(lane,), name=f"tapeserve-{lane.name}", daemon=True)
            lane.thread.start()
        for lane in lanes:
            await asyncio.to_thread(lane.built.wait)
        errors = [lane.error for lane in lanes if lane.error is not None]
        if errors:
            await self.stop()
            raise errors[0]

    async def stop(self) -> None:
        """Drain: jobs already queued finish, then the lanes' threads end."""
        lanes = [lane for lane in self._lanes.values() if lane.thread is not None]
        for lane in lanes:
            await asyncio.to_thread(lane.queue.put, None)
        for lane in lanes:
            if lane.thread is not None:
                await asyncio.to_thread(lane.thread.join, 60)
                lane.thread = None

    @property
    def ready(self) -> bool:
        """Whether every lane has finished its engines' warm-ups."""
        return all(lane.ready.is_set() for lane in self._lanes.values())

    async def wait_ready(self) -> None:
        """Return once warm-up has finished."""
        while not self.ready:
            await asyncio.sleep(0.01)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting, in every lane."""
        return sum(lane.queue.qsize() for lane in self._lanes.values())

    @property
    def stats(self) -> WorkerStats:
        """Every lane's counts, summed (a snapshot)."""
        total = WorkerStats()
        for lane in self._lanes.values():
            counts = lane.stats
            total.jobs += counts.jobs
            total.merged_calls += counts.merged_calls
            total.merged_jobs += counts.merged_jobs
            total.dropped_expired += counts.dropped_expired
            for size, calls in list(counts.batch_sizes.items()):
                total.batch_sizes[size] = total.batch_sizes.get(size, 0) + calls
        return total

    def _main(self, lane: _Lane) -> None:
        try:
            import tensorflow as tf  # noqa: PLC0415  (TensorFlow is loaded in the worker's threads only)

            if lane.name == MAIN_LANE:
                self._resolve()
                self._device_resolved.set()
            else:
                self._device_resolved.wait()
                if not self.pinned_device:
                    raise RuntimeError("the worker's device could not be resolved")
            with tf.device(self.pinned_device):
                for registration in list(lane.registrations):
                    self._build(registration)
        except BaseException as error:  # reported to start() and re-raised there
            lane.error = error
            return
        finally:
            if lane.name == MAIN_LANE:
                self._device_resolved.set()  # the other lanes wait for it, even when it failed
            lane.built.set()
        with tf.device(self.pinned_device):
            if self.settings.warmup:
                self._warm(lane)
            lane.ready.set()
            self._loop(lane)

    def _resolve(self) -> None:
        import tensorflow as tf  # noqa: PLC0415

        try:
            threads = os.cpu_count() or 1
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:
            pass  # already initialised by an earlier app in this process
        self.pinned_device, self.visible_devices = resolve_device(
            self.settings.device, self.settings.device_fallback, self.settings.cpu_logical_devices
        )
        self.tf_version = tf.__version__

    def _warm(self, lane: _Lane) -> None:
        for registration in list(lane.registrations):
            warmup = getattr(registration.engine, "warmup", None)
            if warmup is None:
                continue
            try:
                warmup()
            except Exception:
                logger.exception("the %s engine's warm-up failed; serving anyway", registration.name)

    # ------------------------------------------------------------------------------ submitting
    async def run(self, engine: str, job: Any, deadline: float | None = None) -> Any:
        """`job`'s result from the engine registered as `engine`, run in its lane on the pinned device (merged
        with queued jobs of its key, if it has one). 429 when the lane's queue is full; 504 at `deadline`
        (monotonic; default TAPESERVE_TIMEOUT_S from now)."""
        try:
            registration = self._registrations[engine]
        except KeyError:
            raise LookupError(f"no engine named {engine!r} is registered with the worker") from None
        loop = asyncio.get_running_loop()
        return await self._await(_Job(loop, loop.create_future(), deadline or self.deadline(), registration, job))

    async def _await(self, job: _Job) -> Any:
        # jobs submitted during warm-up wait in the queue; /readyz is what keeps balancers away until then
        lane = job.registration.lane
        try:
            lane.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(lane.full, headers={"Retry-After": "1"}) from None
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

    # ------------------------------------------------------------------------------ the lanes' threads
    def _loop(self, lane: _Lane) -> None:
        while True:
            job = lane.next(block=True)
            if job is None:
                return
            if self._key(job) is None:
                self._run_single(lane, job)
            else:
                self._run_merged(lane, self._gather(lane, job))

    def _key(self, job: _Job) -> Any:
        """The job's merge key, asked of its engine once."""
        key = job.key
        if key is _UNKEYED:
            try:
                key = self._build(job.registration).merge_key(job.item)
            except Exception:
                key = None  # it runs alone, and running it answers its request with what went wrong
            job.key = key
        return key

    def _live(self, lane: _Lane, job: _Job) -> bool:
        """Whether to run a job: not if its request gave up or its deadline passed while it waited."""
        if job.abandoned:
            return False
        if time.monotonic() > job.deadline:
            lane.stats.dropped_expired += 1
            error = DeadlineExceeded("The request's deadline passed while it waited in the queue.")
            self._finish(job, None, error)
            return False
        return True

    def _gather(self, lane: _Lane, first: _Job) -> list[_Job]:
        """`first` plus queued jobs of its engine and key: those already waiting, then any arriving in the window."""
        batch = [first]
        window = self.settings.batch_window_ms / 1000.0
        if window <= 0:
            return batch
        limit = self.settings.max_batch_requests
        registration, key = first.registration, first.key
        others: list[_Job | None] = []
        until = time.monotonic() + window
        # wait out the window only under load (recent calls merged several requests): a lone client
        # never waits, and a burst keeps its requests together instead of trickling through one by one
        loaded = lane.merge_load > 1.5
        while len(batch) < limit:
            try:
                job = lane.next(block=False)
            except queue.Empty:
                if not (loaded or len(batch) > 1) or time.monotonic() >= until:
                    break
                try:
                    job = lane.queue.get(timeout=max(until - time.monotonic(), 0.0))
                except queue.Empty:
                    break
            if job is None:
                others.append(None)  # the stop marker: the loop sees it after this batch
                break
            (batch if job.registration is registration and self._key(job) == key else others).append(job)
        lane.carry.extend(others)
        lane.merge_load = 0.8 * lane.merge_load + 0.2 * len(batch)
        return batch

    def _finish(self, job: _Job, outcome: Any, error: BaseException | None) -> None:
        """Hand the outcome to the job's event loop (futures are not thread-safe)."""
        _hand_over(job.loop, _resolve, job.future, outcome, error)

    def _run_single(self, lane: _Lane, job: _Job) -> None:
        if not self._live(lane, job):
            return
        lane.stats.jobs += 1
        try:
            (outcome,) = self._build(job.registration).run((job.item,))
        except BaseException as error:
            self._finish(job, None, _translate(error))
            return
        self._finish(job, outcome, None)

    def _run_merged(self, lane: _Lane, jobs: list[_Job]) -> None:
        live = [job for job in jobs if self._live(lane, job)]
        if not live:
            return
        stats = lane.stats
        stats.jobs += len(live)
        stats.merged_calls += 1
        stats.merged_jobs += len(live)
        stats.batch_sizes[len(live)] = stats.batch_sizes.get(len(live), 0) + 1
        try:
            outcomes = self._build(live[0].registration).run([job.item for job in live])
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


def _imported(path: str) -> EngineFactory:
    """The factory a "package.module:function" path names (imported in the calling thread)."""
    module, _, name = path.partition(":")
    if not module or not name:
        raise ValueError(f"an engine factory path reads 'package.module:function', not {path!r}")
    factory: EngineFactory = getattr(importlib.import_module(module), name)
    return factory


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
        if isinstance(outcome, JobFailed):
            _resolve(future, None, _translate(outcome.error))
        else:
            _resolve(future, outcome, None)


def _translate(error: BaseException) -> BaseException:
    """TensorFlow's resource errors become the client's 422; our own errors pass as they are."""
    if isinstance(error, ServiceError | ComputeError):
        return error
    name = type(error).__name__
    if name == "ResourceExhaustedError" or isinstance(error, MemoryError):
        return LimitExceeded("The computation ran out of memory on the device; send a smaller request.")
    return error
