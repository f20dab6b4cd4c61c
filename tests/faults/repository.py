"""The model repository the fault scenarios' replicas share, and its faults (scenario (e)).

It holds the example `diabetes` (copied from the project's repository) and `linear`, whose versions answer
distinguishably: version v is y = x Wᵥᵀ + bᵥ with bᵥ = 10·v, so every answer names the one version that
computed it (a mixture of two versions matches none). Version files are built before the load starts, in a
staging folder beside the repository, and published by one rename, as an operator would; the faults are
then made on the repository itself, under load: a version half-written, a corrupt file, a version deleted
while it serves, a new version added.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from tests.faults.harness import ROOT, get
from tests.faults.traffic import Call, http_request

MODEL = "linear"
SERVABLE = (1, 2, 4)
"""The versions the faults publish whole; version 3 is the corrupt one and never serves."""
CORRUPT = 3
VARIANTS = 16


def linear_weights(version: int) -> tuple[np.ndarray, np.ndarray]:
    """Version `version`'s W (2×3) and b (2,), as float32 values."""
    rng = np.random.default_rng(version)
    return rng.normal(size=(2, 3)).astype(np.float32), np.full(2, 10.0 * version, dtype=np.float32)


def expected(version: int, x: np.ndarray) -> np.ndarray:
    w, b = linear_weights(version)
    return np.asarray(x, np.float64) @ w.T.astype(np.float64) + b.astype(np.float64)


def build_version(staging: Path, version: int) -> Path:
    """`linear` version `version` saved as a Keras file in a staging folder of its own."""
    import keras

    folder = staging / f"{MODEL}-{version}"
    folder.mkdir(parents=True)
    model = keras.Sequential([keras.Input((3,), name="x"), keras.layers.Dense(2, name="y")])
    w, b = linear_weights(version)
    model.set_weights([w.T, b])
    model.save(folder / "model.keras")
    return folder


@dataclass
class Repository:
    """The shared repository (`root`), the staged versions and the answers seen (monotonic time, version)."""

    root: Path
    staging: Path
    staged: dict[int, Path] = field(default_factory=dict)
    seen: list[tuple[float, int]] = field(default_factory=list)

    @property
    def model(self) -> Path:
        return self.root / MODEL

    def publish(self, version: int) -> None:
        """A staged version moved in whole (one rename on the same file system)."""
        self.staged.pop(version).rename(self.model / str(version))

    def calls(self) -> list[Call]:
        return [self.predict_call(variant) for variant in range(VARIANTS)]

    def predict_call(self, variant: int) -> Call:
        """`:predict` of two instances; its answer must be wholly one servable version's."""
        x = np.random.default_rng(1000 + variant).normal(size=(2, 3)).astype(np.float32)
        head, body = http_request(f"/v1/models/{MODEL}:predict", {"instances": x.tolist()})
        answers = {version: expected(version, x) for version in SERVABLE}

        def check(answer: Any) -> bool:
            got = np.asarray(answer["predictions"], dtype=np.float64)
            matches = [v for v, want in answers.items() if np.allclose(got, want, rtol=1e-5, atol=1e-4)]
            if len(matches) != 1:
                return False
            self.seen.append((time.monotonic(), matches[0]))
            return True

        return Call("model", head, body, check)


def prepare(directory: Path) -> Repository:
    """The repository with `diabetes` 1 and `linear` 1 published, versions 2 and 4 staged."""
    root, staging = directory / "models", directory / "staging"
    root.mkdir(parents=True)
    shutil.copytree(ROOT / "models" / "diabetes", root / "diabetes")
    repository = Repository(root, staging)
    (root / MODEL).mkdir()
    for version in (1, 2, 4):
        repository.staged[version] = build_version(staging, version)
    repository.publish(1)
    return repository


# ---------------------------------------------------------------------------------------------- status
Status = dict[int, tuple[str, str]]
"""version -> (state, error_code), as one replica reports it."""


def status(port: int) -> Status:
    code, body = get(port, f"/v1/models/{MODEL}", timeout=10.0)
    if code != 200:
        return {}
    return {
        int(entry["version"]): (entry["state"], entry["status"]["error_code"])
        for entry in orjson.loads(body)["model_version_status"]
    }


def serving(found: Status) -> list[int]:
    return sorted(version for version, (state, _) in found.items() if state == "AVAILABLE")


async def wait_for_status(ports: Sequence[int], holds: Callable[[Status], bool], timeout: float = 90.0) -> bool:
    """Until every replica's status satisfies `holds` (False after `timeout` s)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < timeout:
        statuses = await asyncio.gather(*(asyncio.to_thread(status, port) for port in ports))
        if all(holds(found) for found in statuses):
            return True
        await asyncio.sleep(0.1)
    return False


# ---------------------------------------------------------------------------------------------- faults
@dataclass
class Step:
    """One fault: what is done to the repository, and what every replica's status must then say."""

    name: str
    act: Callable[[Repository], None]
    truth: Callable[[Status], bool]


def half_write(repository: Repository) -> None:
    """Version 2 being copied in: its folder and half its file, under a name that is not the model file yet."""
    folder = repository.model / "2"
    folder.mkdir()
    payload = (repository.staged[2] / "model.keras").read_bytes()
    (folder / "model.keras.partial").write_bytes(payload[: len(payload) // 2])


def complete(repository: Repository) -> None:
    """The copy finishes and the file gets its name."""
    folder = repository.model / "2"
    payload = (repository.staged.pop(2) / "model.keras").read_bytes()
    with (folder / "model.keras.partial").open("ab") as file:
        file.write(payload[len(payload) // 2 :])
    (folder / "model.keras.partial").rename(folder / "model.keras")


def corrupt(repository: Repository) -> None:
    folder = repository.staging / f"{MODEL}-{CORRUPT}"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"PK\x03\x04 this is not a Keras archive")
    folder.rename(repository.model / str(CORRUPT))


def delete_serving(repository: Repository) -> None:
    shutil.rmtree(repository.model / "2")


def add_new(repository: Repository) -> None:
    repository.publish(4)


STEPS = (
    Step("half-written version 2", half_write, lambda found: serving(found) == [1] and 2 not in found),
    Step("version 2 complete", complete, lambda found: serving(found) == [2]),
    Step(
        "corrupt version 3",
        corrupt,
        lambda found: serving(found) == [2] and found.get(CORRUPT) == ("END", "INVALID_ARGUMENT"),
    ),
    Step(
        "serving version 2 deleted",
        delete_serving,
        lambda found: serving(found) == [1] and found.get(2, ("", ""))[0] == "END",
    ),
    Step("new version 4", add_new, lambda found: serving(found) == [4]),
)


async def make_faults(
    repository: Repository, ports: Sequence[int], now: Callable[[], float], settle_s: float
) -> dict[str, Any]:
    """Every step in turn; after each, the time until every replica's status told its truth (None: never)."""
    marks: dict[str, Any] = {"steps": []}
    for step in STEPS:
        started = now()
        await asyncio.to_thread(step.act, repository)
        if step.act is half_write:
            await asyncio.sleep(settle_s)  # a few polls see the folder unfinished
        held = await wait_for_status(ports, step.truth)
        marks["steps"].append({"name": step.name, "at": started, "truth_after_s": now() - started if held else None})
    return marks


def versions_between(seen: Iterable[tuple[float, int]], start: float, end: float) -> dict[int, int]:
    """How many answers each version gave between two monotonic times."""
    counts: dict[int, int] = {}
    for at, version in seen:
        if start <= at < end:
            counts[version] = counts.get(version, 0) + 1
    return dict(sorted(counts.items()))
