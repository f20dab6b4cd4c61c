"""Packages the tests (and the benchmarks) stand on: the lock's Python pins, and Debian tools installed on need."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_DIRECTORIES = ("/usr/sbin", "/sbin")
"""Searched besides PATH: Debian puts daemons such as nginx there, often off an ordinary user's PATH."""


def ensure_debian_package(package: str, *executables: str) -> list[str]:
    """The paths of `executables` (default: the package's name), installing Debian's `package` when one is
    missing. Installing takes root (as CI has); without it, a missing tool raises with what to install."""
    wanted = executables or (package,)

    def found() -> list[str | None]:
        search = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_DIRECTORIES])
        return [shutil.which(name, path=search) for name in wanted]

    paths = found()
    if all(paths):
        return [path for path in paths if path]
    if os.geteuid() != 0:
        raise RuntimeError(f"{', '.join(wanted)} not found: install Debian's {package} (apt-get install {package})")
    print(f"{', '.join(wanted)} not found; installing Debian's {package}", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, timeout=300, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, check=True, timeout=900, capture_output=True)
    paths = found()
    missing = [name for name, path in zip(wanted, paths, strict=True) if not path]
    if missing:
        raise RuntimeError(f"apt-get installed {package}, but {', '.join(missing)} is still not to be found")
    return [path for path in paths if path]


def lock_pins() -> dict[str, str]:
    """requirements.lock as {canonical name: version}."""
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def runtime_closure(requirements: list[str]) -> dict[str, str]:
    """Every distribution the requirements pull in, as installed here: {name: version}."""
    environment = {key: str(value) for key, value in default_environment().items()}
    closure: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    pending = [Requirement(line) for line in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        new_extras = set(requirement.extras) - extras_seen.get(name, set())
        if name in closure and not new_extras:
            continue
        extras_seen.setdefault(name, set()).update(requirement.extras)
        closure[name] = importlib.metadata.version(name)
        for line in importlib.metadata.requires(name) or []:
            dependency = Requirement(line)
            wanted = dependency.marker is None or any(
                dependency.marker.evaluate({**environment, "extra": extra}) for extra in ("", *extras_seen[name])
            )
            if wanted:
                pending.append(dependency)
    return closure
