"""`pip install tapeserve` is the Python client alone: httpx, numpy, orjson and pydantic, no server stack.

The project is built into a wheel from a copy of its source and installed, with the dependencies its metadata
declares at the lock's versions (`--constraint requirements.lock`), into a fresh virtual environment. There
the client is imported and calls a live `tapeserve serve`; the answer is checked against the seed's closed form.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from packaging.utils import canonicalize_name

from schemas.networks import SEED_FEATURES, SEED_WEIGHTS
from tests.live_server import serve_process
from tests.packages import ROOT, lock_pins, runtime_closure

CLIENT_REQUIREMENTS = ["httpx", "numpy", "orjson", "pydantic"]
SERVER_MODULES = ("tensorflow", "fastapi", "starlette", "matplotlib", "uvicorn", "prometheus_client")
INSTALLER = {"pip", "setuptools", "wheel"}
"""What `python -m venv` puts into every environment."""
CLIENT_SIZE_LIMIT = 250 * 1024 * 1024
"""The client install's ceiling; it was ~110 MB when measured (README), the server's ~2 GB."""


def run(*command: str | Path, timeout: float = 600) -> str:
    finished = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout


@pytest.fixture(scope="module")
def light_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh environment holding `pip install tapeserve` and nothing more."""
    work = tmp_path_factory.mktemp("light-client")
    source = work / "source"  # built from a copy, so that the build leaves nothing in the working tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("service", "schemas"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    quiet = ("--quiet", "--disable-pip-version-check")
    run(sys.executable, "-m", "pip", "wheel", *quiet, "--no-deps", "--no-build-isolation", "-w", work / "dist", source)
    (wheel,) = (work / "dist").glob("tapeserve-*.whl")
    run(sys.executable, "-m", "venv", work / "venv")
    python = work / "venv" / "bin" / "python"
    run(python, "-m", "pip", "install", *quiet, "--constraint", ROOT / "requirements.lock", wheel)
    return python


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve_process() as (base, _):
        yield base


def test_the_install_holds_the_client_s_four_dependencies_at_the_lock_s_versions(light_python: Path) -> None:
    listed = json.loads(run(light_python, "-m", "pip", "list", "--format", "json"))
    installed: dict[str, str] = {canonicalize_name(item["name"]): item["version"] for item in listed}
    assert installed.pop("tapeserve") == "0.1.0"
    for name in INSTALLER:
        installed.pop(name, None)
    # the four and what they need, at the versions this suite runs with (those of requirements.lock)
    expected = runtime_closure(CLIENT_REQUIREMENTS)
    assert installed == expected
    pins = lock_pins()
    assert {name: pins[name] for name in installed} == installed
    site = Path(run(light_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    size = sum(path.stat().st_size for path in site.rglob("*") if path.is_file())
    assert size < CLIENT_SIZE_LIMIT, f"{size / 2**20:.0f} MiB"


CLIENT_PROGRAM = """
import json, sys
from schemas.networks import SEED_REQUEST
from service.client import Client, ValidationError, to_numpy

with Client(sys.argv[1]) as client:
    answer = client.network_gradients(SEED_REQUEST)
    try:
        client.activations({"activations": ["relu", "relu"]})
    except ValidationError as error:
        problem = error.problem.detail
    try:
        client.network_gradients({**SEED_REQUEST, "features": [76.0, float("nan"), 37.5]})
    except ValueError as error:
        refused = str(error)
print(json.dumps({
    "loaded": sorted(name for name in sys.modules if name.split(".")[0] in set(sys.argv[2].split(","))),
    "loss": float(to_numpy(answer.loss)),
    "gradient": to_numpy(answer.gradients[0].weights).tolist(),
    "problem": problem,
    "refused": refused,
}))
"""


def test_the_light_client_calls_a_live_server_without_the_server_stack(light_python: Path, server: str) -> None:
    found: dict[str, Any] = json.loads(run(light_python, "-c", CLIENT_PROGRAM, server, ",".join(SERVER_MODULES)))
    assert found["loaded"] == []
    # the seed's softmax layer in numpy: z = W x_B, a = softmax(z), L = −log a₁, dL/dW = (a − y) ⊗ x_B
    x_b = np.array([*SEED_FEATURES, 1.0])
    z = np.array(SEED_WEIGHTS) @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(found["loss"], -np.log(a[1]), rtol=1e-5)
    np.testing.assert_allclose(found["gradient"], np.outer(a - [0.0, 1.0], x_b), rtol=1e-4, atol=1e-5)
    assert found["problem"] == "body.activations: each activation at most once; repeated: relu"
    assert found["refused"].startswith("body.features[1] is nan: ")


def test_serve_without_the_server_extra_says_what_to_install(light_python: Path) -> None:
    tapeserve = light_python.parent / "tapeserve"
    assert "serve" in run(tapeserve, "--help")
    refused = subprocess.run([tapeserve, "serve"], capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 2
    assert "pip install 'tapeserve[server]'" in refused.stderr, refused.stderr
