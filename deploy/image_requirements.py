"""What the container image installs: the project's runtime dependencies at the lock's exact versions.

`python image_requirements.py cpu|gpu REQUIREMENTS CONSTRAINTS` (run beside pyproject.toml and
requirements.lock) writes a requirements file (the client's dependencies, the `server` extra's and the build
backend of pyproject.toml) and a constraints file (requirements.lock), so that `pip install -r REQUIREMENTS -c
CONSTRAINTS` installs the runtime closure pinned by the lock and none of its test and lint tools.
`gpu` swaps tensorflow-cpu for `tensorflow[and-cuda]` at the version the lock pins for tensorflow-cpu.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

TF_VARIANTS = ("cpu", "gpu")
_CPU_TENSORFLOW = "tensorflow-cpu"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical_name(requirement: str) -> str:
    """The PEP 503 normalised project name a requirement line starts with ("" for comments and blanks)."""
    match = _NAME.match(requirement.split("#", 1)[0])
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else ""


def image_requirements(
    pyproject: dict[str, object], lock_lines: Sequence[str], variant: str
) -> tuple[list[str], list[str]]:
    """(requirements, constraints) for one TensorFlow build of the image."""
    if variant not in TF_VARIANTS:
        raise ValueError(f"TF_VARIANT must be one of {', '.join(TF_VARIANTS)}, not {variant!r}")
    project = pyproject.get("project")
    build_system = pyproject.get("build-system")
    if not isinstance(project, dict) or not isinstance(build_system, dict):
        raise ValueError("pyproject.toml has no [project] or [build-system] table")
    # the build backend too: the image installs the project itself without build isolation
    extras = project.get("optional-dependencies", {})
    server = extras.get("server", []) if isinstance(extras, dict) else []
    requirements = [str(item) for item in [*project["dependencies"], *server, *build_system["requires"]]]
    constraints = [line.strip() for line in lock_lines if canonical_name(line)]
    if variant == "gpu":
        pins = {canonical_name(line): line.split("==", 1)[1].strip() for line in constraints if "==" in line}
        if _CPU_TENSORFLOW not in pins:
            raise ValueError(f"the lock pins no {_CPU_TENSORFLOW} version to match")
        requirements = [item for item in requirements if canonical_name(item) != _CPU_TENSORFLOW]
        requirements.append(f"tensorflow[and-cuda]=={pins[_CPU_TENSORFLOW]}")
        constraints = [line for line in constraints if canonical_name(line) != _CPU_TENSORFLOW]
    return requirements, constraints


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("variant", choices=TF_VARIANTS, help="the TensorFlow build")
    parser.add_argument("requirements", type=Path, help="requirements file to write")
    parser.add_argument("constraints", type=Path, help="constraints file to write")
    parser.add_argument("--project", type=Path, default=Path("pyproject.toml"))
    parser.add_argument("--lock", type=Path, default=Path("requirements.lock"))
    args = parser.parse_args(argv)
    pyproject = tomllib.loads(args.project.read_text(encoding="utf-8"))
    requirements, constraints = image_requirements(
        pyproject, args.lock.read_text(encoding="utf-8").splitlines(), args.variant
    )
    args.requirements.write_text("\n".join(requirements) + "\n", encoding="utf-8")
    args.constraints.write_text("\n".join(constraints) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
