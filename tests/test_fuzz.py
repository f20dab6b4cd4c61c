"""Property-based fuzzing of the OpenAPI document with schemathesis, against the real application.

For every operation the document describes: its examples, schemathesis' coverage phase (boundary values,
missing and wrong-typed fields, unexpected methods) and a bounded, deterministic fuzzing phase of valid and
invalid requests. Every answer must be documented: no server error, a status and content type the document
lists for the operation, a body that conforms to the documented schema, and every error problem+json
whose `status` repeats the HTTP status, without a traceback; an unexpected method gets a 405 whose `Allow`
lists the path's documented methods.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from service.app import create_app
from service.errors import PROBLEM_JSON
from service.settings import Settings

FUZZ_EXAMPLES = 50
"""Fuzzing-phase examples per operation (the examples and coverage phases add their own fixed sets)."""

# the ASGI transport runs the lifespan for every request, so a served model would always still be loading:
# the model routes are fuzzed against an empty repository here (tests/routes/test_models_hostile.py has models)
EMPTY_REPOSITORY = Path(__file__).with_name("no-such-model-repository")
app = create_app(Settings(cpu_logical_devices=2, warmup=False, model_dir=str(EMPTY_REPOSITORY)))
# from the application's own document; each operation's test starts the app's lifespan on its first request
schema = schemathesis.openapi.from_dict(app.openapi())
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=FUZZ_EXAMPLES, deterministic=True
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    # methods the document does not list answer 405 with `Allow`, which names exactly the documented ones
    unsupported_method,
    allow_header_conformance,
]

answered: Counter[tuple[str, int]] = Counter()
"""(operation, status) of every request the fuzzer sent, for the summary line."""
phases: Counter[str] = Counter()
"""Requests per schemathesis phase (examples, coverage, fuzzing)."""


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if answered:
        per_status = Counter[int]()
        for (_, status), count in answered.items():
            per_status[status] += count
        statuses = ", ".join(f"{status}: {count}" for status, count in sorted(per_status.items()))
        operations = len({operation for operation, _ in answered})
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(
                    f"\nfuzz: {answered.total()} requests over {operations} operations ({statuses}); "
                    f"by phase {dict(sorted(phases.items()))}"
                )


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    # the generated bodies are large and often filtered; the bound is max_examples, not Hypothesis' heuristics
    suppress_health_check=list(HealthCheck),
)
def test_every_answer_is_documented(case: schemathesis.Case[Any]) -> None:
    response = case.call_and_validate(app=app, checks=CHECKS)
    answered[(case.operation.label, response.status_code)] += 1
    phases[str(case.meta.phase.name) if case.meta is not None else "unknown"] += 1
    assert response.status_code < 500, response.text
    assert b"Traceback" not in response.content
    if response.status_code >= 400:
        assert response.headers["content-type"][0] == PROBLEM_JSON
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["type"].startswith("https://tapeserve.dev/problems/")
        assert problem["title"] and problem["detail"]


def test_every_documented_error_is_problem_json() -> None:
    document = app.openapi()
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    errors = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and status != "503":  # /readyz's 503 is its JSON readiness body
                    assert response["content"] == {PROBLEM_JSON: {"schema": problem_ref}}, (method, path, status)
                    errors += 1
            if path.startswith("/v1/") or path == "/metrics":
                assert "401" in operation["responses"], (method, path)
    assert errors >= 30
