"""The model repository: TF Serving's layout read from `TAPESERVE_MODEL_DIR`, versions and their states.

`<dir>/<name>/<version>/` holds a SavedModel (`saved_model.pb`, `variables/`) or one Keras v3 file
`model.keras`; `name` matches `[A-Za-z0-9][A-Za-z0-9_.-]*`, `version` is a positive integer. A loader
thread of its own reads the directory at start and again every `TAPESERVE_MODEL_POLL_S`, and is the only
place versions are loaded, warmed up and unloaded, so neither the event loop nor the worker waits for a
load; it runs at a lower OS priority (`LOADER_NICE`), so a load takes the cores only when they are idle. A
version's state follows TF Serving's: START (found), LOADING, AVAILABLE (serves), UNLOADING
(draining: requests already holding it finish, new ones are refused), END (unloaded, or failed with a
non-OK error code saying why).

The rules: a version serves only after it has loaded and warmed up; the versions serving before keep
serving until then. A version folder is complete once it holds `saved_model.pb` or `model.keras` and its
files did not change between two reads of the directory (at start, once it holds either file); until then
it is ignored, not an error. A version that fails to load stays END with its error and is tried again
when its files change; under `latest` the highest version that has not failed serves. A version whose
folder is gone, or that the policy no longer wants, is unloaded after its in-flight requests finish.

Nothing here imports TensorFlow at import time: the loader thread imports `service.compute.models.loading`,
and is the one thread besides the worker's lanes that uses TensorFlow (the lifespan starts it after the
worker, whose lanes have loaded TensorFlow by then).
"""

from __future__ import annotations

import logging
import os
import pathlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from service.compute.models.spec import LoadRefused, SignatureInfo
from service.errors import ModelNotAvailable, ModelNotFound
from service.settings import Settings
from service.vocabulary import VersionState

logger = logging.getLogger("tapeserve.models")

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
VERSION = re.compile(r"[0-9]{1,18}")
MARKERS = ("saved_model.pb", "model.keras")
"""A version folder is a candidate once it holds one of these."""
MAX_FILES = 10_000
"""Files of one version folder read for its fingerprint at most (the rest are not looked at)."""
RETRY_AFTER = "1"
LOADER_NICE = 10
"""How much lower than the process's the loader thread's OS scheduling priority is (Linux: a thread's nice):
when the cores are busy, the event loop and the worker run before a load does."""
DRAIN_MARGIN_S = 5.0
"""How much longer than a request's deadline an unloading version waits for its requests to finish."""

Fingerprint = tuple[tuple[str, int, int], ...]
"""(path relative to the version folder, size, mtime in ns) of every file: a changing folder changes it."""


@dataclass(eq=False)
class ModelVersion:
    """One version of a model, as the repository knows it."""

    name: str
    version: int
    folder: pathlib.Path
    state: VersionState = "START"
    error_code: str = "OK"
    error_message: str = ""
    served: Any = None
    """The loaded model (`service.compute.models.loading.ServedModel`) while AVAILABLE or UNLOADING."""
    signatures: dict[str, SignatureInfo] = field(default_factory=dict)
    kind: str = ""
    """`keras` or `saved_model`, once loaded."""
    in_flight: int = 0
    tried: Fingerprint | None = None
    """The files of the last load attempt: a failed version is tried again only when they change."""

    @property
    def failed(self) -> bool:
        return self.state == "END" and self.error_code != "OK"


@dataclass(frozen=True)
class VersionStatus:
    """A version's state as TF Serving reports it, read at one moment."""

    version: int
    state: VersionState
    error_code: str
    error_message: str

    @classmethod
    def of(cls, record: ModelVersion) -> VersionStatus:
        return cls(record.version, record.state, record.error_code, record.error_message)


@dataclass(eq=False)
class Lease:
    """A request's hold on an AVAILABLE version: the version is not unloaded before every lease is released."""

    version: ModelVersion
    served: Any
    release: Callable[[], None]

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def number(self) -> int:
        return self.version.version

    @property
    def signatures(self) -> dict[str, SignatureInfo]:
        return self.version.signatures


@dataclass(frozen=True)
class OnDisk:
    """A version folder found by a scan."""

    folder: pathlib.Path
    fingerprint: Fingerprint
    complete: bool


def fingerprint(folder: pathlib.Path) -> Fingerprint:
    """Every file under `folder` (at most MAX_FILES), with its size and modification time."""
    found: list[tuple[str, int, int]] = []
    for root, _dirs, files in os.walk(folder):
        for file_name in files:
            path = pathlib.Path(root) / file_name
            try:
                stat = path.stat()
            except OSError:  # removed while the folder was read: the next scan sees the folder as it is then
                continue
            found.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
            if len(found) >= MAX_FILES:
                return tuple(sorted(found))
    return tuple(sorted(found))


def scan(root: pathlib.Path) -> dict[str, dict[int, OnDisk]]:
    """The model names and version folders under `root` (none when it does not exist)."""
    models: dict[str, dict[int, OnDisk]] = {}
    try:
        names = sorted(entry for entry in root.iterdir() if entry.is_dir() and NAME.fullmatch(entry.name))
    except OSError:
        return models
    for model_folder in names:
        versions: dict[int, OnDisk] = {}
        try:
            entries = sorted(model_folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if not (VERSION.fullmatch(entry.name) and int(entry.name) > 0 and entry.is_dir()):
                continue
            number = int(entry.name)
            if number in versions:  # "1" and "01": the first one read serves
                continue
            complete = any((entry / marker).is_file() for marker in MARKERS)
            versions[number] = OnDisk(entry, fingerprint(entry), complete)
        models[model_folder.name] = versions
    return models


def lower_priority(nice: int) -> None:
    """Lower the calling thread's OS scheduling priority by `nice` (at most to 19); threads it starts inherit it.
    Only Linux schedules threads by their own nice value; elsewhere this does nothing."""
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError:  # a sandbox may refuse it: the load still runs, at the usual priority
        logger.warning("cannot lower the model loader's priority", exc_info=True)


class ModelRepository:
    """Versions of every model and their states; loads and unloads them in a loader thread of its own."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = pathlib.Path(settings.model_dir)
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._initial = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: dict[tuple[str, int], Fingerprint] = {}
        self._pinned_device = ""
        self.loads = 0
        """Load attempts so far (successful or not)."""

    # ------------------------------------------------------------------------------ life cycle
    def start(self, pinned_device: str) -> None:
        """Start the loader thread; it loads what the directory holds now, then polls it."""
        self._pinned_device = pinned_device
        self._stop.clear()
        self._initial.clear()
        self._previous = {}
        self._thread = threading.Thread(target=self._main, name="tapeserve-models", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling (a load in progress finishes first) and drop every loaded version (END); a later
        `start` loads them again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            for versions in self.models.values():
                for record in versions.values():
                    if record.served is not None or record.state in ("START", "LOADING", "AVAILABLE", "UNLOADING"):
                        record.served, record.state = None, "END"

    @property
    def ready(self) -> bool:
        """Whether every model found at start is loaded, or has failed with its status saying why."""
        return self._initial.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._initial.wait(timeout)

    def _main(self) -> None:
        try:
            import tensorflow as tf  # noqa: PLC0415  (TensorFlow only in the worker's threads and this one)

            lower_priority(LOADER_NICE)
            with tf.device(self._pinned_device or None):
                self.poll(first=True)
                self._initial.set()
                while self.settings.model_poll_s > 0 and not self._stop.wait(self.settings.model_poll_s):
                    self.poll()
        except Exception:
            logger.exception("the model repository's loader stopped")
        finally:
            self._initial.set()  # readiness never waits for a loader that is gone

    # ------------------------------------------------------------------------------ polling
    def poll(self, first: bool = False) -> None:
        """Read the directory once and bring the loaded versions in line with it (in the loader thread)."""
        found = scan(self.root)
        current = {
            (name, number): disk.fingerprint for name, versions in found.items() for number, disk in versions.items()
        }
        stable = {
            name: {
                number: disk
                for number, disk in versions.items()
                if disk.complete and (first or self._previous.get((name, number)) == disk.fingerprint)
            }
            for name, versions in found.items()
        }
        self._previous = current
        with self._lock:
            for name in found:
                self.models.setdefault(name, {})
        for name in sorted(set(self.models) | set(found)):
            if self._stop.is_set():
                return
            self._reconcile(name, found.get(name, {}), stable.get(name, {}))

    def _aspired(self, name: str, on_disk: dict[int, OnDisk], stable: dict[int, OnDisk]) -> list[int]:
        """The versions the policy wants served: the complete ones not failed with these very files, and
        those serving already whose folder is still there (a served version is never reloaded)."""
        versions = self.models.get(name, {})
        candidates = []
        for number in sorted(on_disk, reverse=True):
            record = versions.get(number)
            serving = record is not None and record.state == "AVAILABLE"
            failed_as_is = record is not None and record.failed and record.tried == on_disk[number].fingerprint
            if serving or (number in stable and not failed_as_is):
                candidates.append(number)
        return candidates if self.settings.model_versions == "all" else candidates[:1]

    def _reconcile(self, name: str, on_disk: dict[int, OnDisk], stable: dict[int, OnDisk]) -> None:
        """Load the aspired versions (the next one down when one fails), then unload the rest."""
        while True:
            aspired = self._aspired(name, on_disk, stable)
            pending = [number for number in aspired if self._state(name, number) != "AVAILABLE"]
            if not pending:
                break
            for number in pending:
                self._load(name, number, on_disk[number])
                if self._stop.is_set():
                    return
        for number, record in sorted(self.models.get(name, {}).items()):
            if record.state == "AVAILABLE" and number not in aspired:
                # gone from disk, or superseded: it stops after the requests holding it finish
                self._unload(record, removed=number not in on_disk)

    def _state(self, name: str, number: int) -> str | None:
        record = self.models.get(name, {}).get(number)
        return None if record is None else record.state

    # ------------------------------------------------------------------------------ loading
    def _load(self, name: str, number: int, disk: OnDisk) -> None:
        from service.compute.models.loading import load_version, warm_up  # noqa: PLC0415  (TensorFlow)

        with self._lock:
            record = self.models[name].setdefault(number, ModelVersion(name, number, disk.folder))
            record.folder, record.state, record.tried = disk.folder, "LOADING", disk.fingerprint
            record.error_code, record.error_message = "OK", ""
        started = time.monotonic()
        self.loads += 1
        try:
            served = load_version(
                disk.folder,
                allow_unsafe_ops=self.settings.allow_unsafe_ops,
                cache_size=self.settings.function_cache_size,
                xla=self.settings.xla,
            )
            warm_up(served, self.settings.max_elements)
        except LoadRefused as refused:
            self._fail(record, refused.code, refused.message)
            return
        except Exception as error:  # a load must never take the loader down
            logger.exception("loading %s version %s failed", name, number)
            self._fail(record, "INTERNAL", f"cannot load {number}: {type(error).__name__}: {error}")
            return
        with self._lock:
            record.served, record.signatures, record.kind = served, dict(served.signatures), served.kind
            record.state = "AVAILABLE"
        logger.info(
            "model version available",
            extra={"model": name, "version": number, "load_s": round(time.monotonic() - started, 3)},
        )

    def _fail(self, record: ModelVersion, code: str, message: str) -> None:
        with self._lock:
            record.state, record.error_code, record.error_message = "END", code, message
        logger.warning(
            "model version failed to load",
            extra={"model": record.name, "version": record.version, "error_code": code, "error": message},
        )

    def _unload(self, record: ModelVersion, removed: bool) -> None:
        drain_s = self.settings.timeout_s + DRAIN_MARGIN_S
        with self._lock:
            record.state = "UNLOADING"
            # every lease belongs to a request with a deadline, so the wait is bounded by it
            self._lock.wait_for(lambda: record.in_flight == 0, timeout=drain_s)
            served, record.served = record.served, None
            record.state = "END"
        if served is not None:
            served.functions.clear()  # its compiled functions go with it
        logger.info(
            "model version unloaded", extra={"model": record.name, "version": record.version, "removed": removed}
        )

    # ------------------------------------------------------------------------------ requests
    def acquire(self, name: str, version: int | None = None) -> Lease:
        """A lease on the asked version, or on the highest AVAILABLE one; 404 for an unknown model or version
        (or one that is not served: the detail says why), 503 with Retry-After while it is loading."""
        with self._lock:
            record = self._pick(name, version)
            record.in_flight += 1
            served = record.served
        return Lease(record, served, lambda: self._release(record))

    @contextmanager
    def lease(self, name: str, version: int | None = None) -> Iterator[Lease]:
        held = self.acquire(name, version)
        try:
            yield held
        finally:
            held.release()

    def _release(self, record: ModelVersion) -> None:
        with self._lock:
            record.in_flight -= 1
            if record.in_flight == 0:
                self._lock.notify_all()

    def _pick(self, name: str, version: int | None) -> ModelVersion:
        versions = self.models.get(name)
        if versions is None:
            raise ModelNotFound(f"Servable not found for request: model {name!r} is not in the repository.")
        if version is not None:
            record = versions.get(version)
            if record is None:
                raise ModelNotFound(f"Servable not found for request: version {version} of model {name!r}.")
            if record.state == "AVAILABLE" and record.served is not None:
                return record
            raise self._not_serving(record)
        available = [
            record
            for _, record in sorted(versions.items(), reverse=True)
            if record.state == "AVAILABLE" and record.served is not None
        ]
        if available:
            return available[0]
        loading = [record for record in versions.values() if record.state in ("START", "LOADING")]
        if loading:
            raise self._not_serving(loading[0])
        reasons = "; ".join(
            f"version {number}: {record.error_message}" for number, record in sorted(versions.items()) if record.failed
        )
        raise ModelNotFound(
            f"Servable not found for request: model {name!r} has no available version"
            + (f" ({reasons})." if reasons else ".")
        )

    @staticmethod
    def _not_serving(record: ModelVersion) -> ModelNotFound | ModelNotAvailable:
        where = f"version {record.version} of model {record.name!r}"
        if record.state in ("START", "LOADING"):
            return ModelNotAvailable(f"{where} is loading; retry shortly.", headers={"Retry-After": RETRY_AFTER})
        if record.failed:
            return ModelNotFound(f"{where} failed to load: {record.error_message}")
        return ModelNotFound(f"{where} is not served (state {record.state}).")

    # ------------------------------------------------------------------------------ status
    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """The versions of `name` (or the one asked), highest first; 404 for an unknown model or version."""
        with self._lock:
            versions = self.models.get(name)
            if versions is None:
                raise ModelNotFound(f"Could not find any versions of model {name!r}.")
            if version is not None and version not in versions:
                raise ModelNotFound(f"Could not find version {version} of model {name!r}.")
            numbers = [version] if version is not None else sorted(versions, reverse=True)
            return [VersionStatus.of(versions[number]) for number in numbers]

    def listing(self) -> list[tuple[str, list[int]]]:
        """Every model, with its AVAILABLE versions (ascending)."""
        with self._lock:
            return [
                (name, [number for number, record in sorted(versions.items()) if record.state == "AVAILABLE"])
                for name, versions in sorted(self.models.items())
            ]
