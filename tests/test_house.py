"""The house rules of ARCHITECTURE.md that a reading of the source can check: sizes, and who imports whom."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LONGEST_FUNCTION = 60
LONGEST_MODULE = 600


def sources(*packages: str) -> list[Path]:
    return [path for package in packages for path in sorted((ROOT / package).rglob("*.py"))]


def long_functions(paths: Iterable[Path]) -> list[str]:
    """`path:line name (N lines)` of every function or method longer than LONGEST_FUNCTION lines."""
    return [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in paths
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]


def forbidden_imports(paths: Iterable[Path], forbidden: Iterable[str]) -> list[str]:
    """`path imports module` for every import, at any depth of the code, of a module in or under `forbidden`."""
    names = tuple(forbidden)
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            found += [
                f"{path.name} imports {module}"
                for module in modules
                if any(module == name or module.startswith(name + ".") for name in names)
            ]
    return found


def test_no_function_is_longer_than_60_lines() -> None:
    assert long_functions(sources("service", "schemas")) == []


def test_no_module_is_longer_than_600_lines() -> None:
    long = [
        f"{path.relative_to(ROOT)} ({count} lines)"
        for path in sources("service", "schemas")
        if (count := len(path.read_text().splitlines())) > LONGEST_MODULE
    ]
    assert long == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("service/routes", ("service.compute", "tensorflow", "keras")),
        ("schemas", ("numpy", "tensorflow", "service.compute")),
        ("service/compute", ("fastapi", "starlette", "pydantic", "schemas", "service.routes", "service.adapters")),
    ],
)
def test_a_room_does_not_import_what_it_must_not(package: str, forbidden: tuple[str, ...]) -> None:
    assert forbidden_imports(sources(package), forbidden) == []


def test_the_checks_find_a_long_function_and_an_import_inside_a_function(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    body = "\n".join(f"    x{index} = {index}" for index in range(LONGEST_FUNCTION))
    sample.write_text(f"def long():\n{body}\n\n\ndef short():\n    import service.compute.errors\n")
    assert long_functions([sample]) == [f"sample.py:1 long ({LONGEST_FUNCTION + 1} lines)"]
    assert forbidden_imports([sample], ["service.compute"]) == ["sample.py imports service.compute.errors"]
    assert forbidden_imports([sample], ["service.comp"]) == []
