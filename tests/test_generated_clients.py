"""Clients in other languages, as their users make them: generated from the live `/openapi.json`.

* The document itself: valid OpenAPI 3.1 (openapi-spec-validator), one named component per tensor form,
  every array with `items`, union members with distinct titles, problem+json on every error.
* Python: `openapi-python-client` (pinned in the lock) generates a client with no warnings but the PNG
  response it cannot type; installed into a temporary directory, it calls every JSON operation of the live
  document with the examples the document gives, parses every answer into its typed models, and gets the
  numbers the service's own client (`service.client`) gets.
* TypeScript: `openapi-typescript` and `tsc --noEmit` from the npm registry, installed into a temporary
  directory; a small program types the seed request and the live answer with the generated types.

Every operation is walked from the live document, so routes added later are covered without editing this.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import attrs
import httpx
import pytest
from openapi_spec_validator import validate

from schemas.networks import SEED_REQUEST
from service.client import Client
from service.errors import PROBLEM_JSON
from tests.live_server import live_server

BIN = Path(sys.executable).parent
PACKAGE = "tapeserve_client"
NPM_PACKAGES = ("openapi-typescript@7.13.0", "typescript@5.9.3")
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
TENSOR_FORMS = {"Tensor", "TensorFlat", "TensorB64", "TensorOut"}

OWN_CLIENT: dict[str, Callable[[Client, Any], Any]] = {
    "network_gradients": lambda client, body: client.network_gradients(body),
    "tape": lambda client, body: client.tape(body),
    "activations": lambda client, body: client.activations(body),
    "gradient_check": lambda client, body: client.gradient_check(body),
    "catalogue": lambda client, _: client.activation_catalogue(),
    "info": lambda client, _: client.info(),
    "ops": lambda client, _: client.ops(),
    "healthz": lambda client, _: client.health(),
    "readyz": lambda client, _: client.ready(),
}
"""The service's own client's call for each operation id; an operation it has no method for is compared
with the raw JSON answer instead."""


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with live_server() as base:
        yield base


@pytest.fixture(scope="module")
def document(server: str) -> dict[str, Any]:
    response = httpx.get(server + "/openapi.json")
    assert response.status_code == 200
    found: dict[str, Any] = response.json()
    return found


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, items in document["paths"].items():
        for method, operation in items.items():
            if method in {"get", "put", "post", "delete", "patch", "head", "options", "trace"}:
                yield method, path, operation


def schemas_in(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema-like object of a document, with a JSON pointer-ish location."""
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from schemas_in(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schemas_in(value, f"{where}/{index}")


def component_name(schema: dict[str, Any]) -> str:
    reference = schema["$ref"]
    assert isinstance(reference, str) and reference.startswith("#/components/schemas/"), schema
    return reference.rsplit("/", 1)[1]


def json_schema_of(content: dict[str, Any]) -> dict[str, Any] | None:
    found = content.get("application/json", {}).get("schema")
    return found if isinstance(found, dict) else None


# ------------------------------------------------------------------------------------------------ the document
def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_array_has_items_and_every_union_member_a_distinct_title(document: dict[str, Any]) -> None:
    arrays = 0
    for where, schema in schemas_in(document["components"]["schemas"], "#/components/schemas"):
        if schema.get("type") == "array":
            arrays += 1
            assert "items" in schema, where
        for union in ("anyOf", "oneOf"):
            members = [member for member in schema.get(union, []) if member != {"type": "null"}]
            if len(members) < 2:
                continue
            names = [member.get("title") or member.get("$ref") for member in members]
            assert all(names), (where, members)
            assert len(set(names)) == len(names), (where, names)
    assert arrays >= 20


def test_one_component_per_tensor_form_referenced_everywhere(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    assert set(components) >= TENSOR_FORMS
    assert {component_name(member) for member in components["Tensor"]["anyOf"] if "$ref" in member} == {
        "TensorFlat",
        "TensorB64",
    }
    references = {name: 0 for name in TENSOR_FORMS}
    for where, schema in schemas_in(document):
        reference = schema.get("$ref")
        if isinstance(reference, str) and component_name(schema) in references:
            references[component_name(schema)] += 1
        # a tensor's fields appear nowhere but in its components: nothing inlines a copy
        properties = schema.get("properties", {})
        if isinstance(properties, dict) and ("b64" in properties or "data" in properties) and "shape" in properties:
            assert re.search(r"/components/schemas/(TensorFlat|TensorB64|TensorOut)$", where), where
    # features, targets, weights, z, output_gradients, tangents, a tape input's value, claimed
    assert references["Tensor"] >= 8 and references["TensorOut"] >= 10, references


def test_every_operation_declares_its_problems(document: dict[str, Any]) -> None:
    ids = []
    for method, path, operation in operations(document):
        ids.append(operation["operationId"])
        responses = operation["responses"]
        statuses = set(responses)
        expected = {"500"}
        if path.startswith("/v1/") or path == "/metrics":
            expected.add("401")
        if "requestBody" in operation:
            expected |= {"400", "413", "415", "422", "429", "504"}
        if any(parameter["in"] == "path" for parameter in operation.get("parameters", [])):
            expected.add("404")
        if operation.get("parameters"):
            expected.add("422")
        assert expected <= statuses, (method, path, sorted(expected - statuses))
        for status, response in responses.items():
            if int(status) >= 400 and not (path == "/readyz" and status == "503"):
                assert response["content"] == {PROBLEM_JSON: {"schema": PROBLEM_REF}}, (method, path, status)
    assert len(ids) == len(set(ids)), ids
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", operation_id) for operation_id in ids), ids


# ------------------------------------------------------------------------------------------------ Python
def run(command: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None) -> str:
    finished = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    return output


def warnings_of(output: str) -> list[str]:
    """The generator's warnings: each `WARNING parsing ...` / `Unable to ...` block with its reason."""
    return [
        line.strip()
        for line in output.splitlines()
        if re.match(r"\s*(WARNING|Unable to|Failure to|Cannot parse|Invalid|Could not|Skipping)", line)
    ]


@pytest.fixture(scope="module")
def generated(document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The generated client, pip-installed into a temporary directory and imported from there."""
    work = tmp_path_factory.mktemp("python-client")
    (work / "openapi.json").write_text(json.dumps(document))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # its ruff post-hooks
    output = run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "setup",
            "--output-path",
            "project",
        ],
        work,
        env=env,
    )
    png_operations = {
        f"{method.upper()} {path}"
        for method, path, operation in operations(document)
        if "image/png" in operation["responses"]["200"].get("content", {})
    }
    for line in warnings_of(output):
        if line.startswith("WARNING parsing"):
            assert any(line.startswith(f"WARNING parsing {name} ") for name in png_operations), output
        else:
            assert line.startswith("Cannot parse response") and "Unsupported content_type image/png" in line, output
    site = work / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            "./project",
        ],
        work,
    )
    sys.path.insert(0, str(site))
    try:
        package = importlib.import_module(PACKAGE)
        assert Path(package.__file__ or "").is_relative_to(site)
        yield package
    finally:
        sys.path.remove(str(site))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def operation_modules(package: ModuleType) -> dict[str, ModuleType]:
    api = importlib.import_module(f"{package.__name__}.api")
    found = {}
    for info in pkgutil.walk_packages(api.__path__, prefix=f"{api.__name__}."):
        if not info.ispkg:
            found[info.name.rsplit(".", 1)[1]] = importlib.import_module(info.name)
    return found


def raw_dicts(value: Any, where: str = "answer") -> Iterator[str]:
    """Where a parsed answer holds a plain dict instead of a generated model (a part the generator left untyped)."""
    if attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            inner = getattr(value, field.name)
            if field.name == "additional_properties":
                for key, item in inner.items():
                    yield from raw_dicts(item, f"{where}[{key!r}]")
            else:
                yield from raw_dicts(inner, f"{where}.{field.name}")
    elif isinstance(value, dict):
        yield where
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from raw_dicts(item, f"{where}[{index}]")


def request_examples(document: dict[str, Any], operation: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """(request body component, its examples); (None, [None]) for an operation without a body."""
    if "requestBody" not in operation:
        return None, [None]
    schema = json_schema_of(operation["requestBody"]["content"])
    assert schema is not None, operation["operationId"]
    name = component_name(schema)
    examples = document["components"]["schemas"][name].get("examples", [])
    assert examples, f"{name} has no OpenAPI examples to call {operation['operationId']} with"
    return name, examples


def test_generated_python_client_calls_every_json_operation(
    generated: ModuleType, document: dict[str, Any], server: str
) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    modules = operation_modules(generated)
    called = []
    with (
        generated.Client(base_url=server, raise_on_unexpected_status=True, timeout=httpx.Timeout(60.0)) as api_client,
        Client(server) as own,
    ):
        for method, path, operation in operations(document):
            answer_schema = json_schema_of(operation["responses"]["200"].get("content", {}))
            if answer_schema is None:
                continue  # PNG and the Prometheus text: not JSON operations
            operation_id = operation["operationId"]
            assert operation_id in modules, f"{operation_id} was not generated"
            model = getattr(models, component_name(answer_schema))
            # a required (path) parameter is called with its documented example: the example model's name, "1"
            parameters = {
                parameter["name"]: parameter["schema"]["examples"][0]
                for parameter in operation.get("parameters", [])
                if parameter.get("required")
            }
            body_name, examples = request_examples(document, operation)
            for example in examples:
                kwargs = {} if body_name is None else {"body": getattr(models, body_name).from_dict(example)}
                kwargs.update(parameters)
                response = modules[operation_id].sync_detailed(client=api_client, **kwargs)
                assert response.status_code == 200, (method, path, response.content[:500])
                assert isinstance(response.parsed, model), (operation_id, type(response.parsed))
                assert not list(raw_dicts(response.parsed)), (operation_id, list(raw_dicts(response.parsed)))
                if operation_id in OWN_CLIENT:
                    expected = OWN_CLIENT[operation_id](own, example).model_dump(mode="json", exclude_unset=True)
                else:
                    expected = httpx.request(method, server + path.format(**parameters), json=example).json()
                assert response.parsed.to_dict() == expected, operation_id
                called.append(operation_id)
    assert {"network_gradients", "tape", "activations", "gradient_check", "info", "predict", "model_status"} <= set(
        called
    ), called


def test_generated_models_type_the_seed_answer(generated: ModuleType, server: str) -> None:
    models = importlib.import_module(f"{PACKAGE}.models")
    network_gradients = operation_modules(generated)["network_gradients"]
    body = models.NetworkRequest.from_dict(SEED_REQUEST)
    assert isinstance(body.layers[0], models.Layer)
    with generated.Client(base_url=server) as api_client:
        answer = network_gradients.sync(client=api_client, body=body)
        # a problem answer parses into the generated Problem model
        wrong = models.NetworkRequest.from_dict({**SEED_REQUEST, "labels": 7})
        problem = network_gradients.sync(client=api_client, body=wrong)
    assert isinstance(answer, models.NetworkResponse)
    assert isinstance(answer.loss, models.TensorOut) and answer.loss.shape == []
    gradient = answer.gradients[0].weights
    assert isinstance(gradient, models.TensorOut) and gradient.shape == [2, 4]
    with Client(server) as own:
        expected = own.network_gradients(SEED_REQUEST).gradients[0].weights.values
    assert gradient.values == expected
    assert isinstance(problem, models.Problem) and problem.status == 422 and problem.detail


# ------------------------------------------------------------------------------------------------ TypeScript
def npm_executable() -> str:
    """npm, with node; Debian's packages are installed when absent and running as root (as CI does)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return npm
    if os.geteuid() != 0:
        pytest.fail("the TypeScript check needs node and npm (apt-get install nodejs npm)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, check=True, timeout=300, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "nodejs", "npm"], env=env, check=True, timeout=900, capture_output=True
    )
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "apt-get installed nodejs and npm but they are not on PATH"
    return npm


TYPESCRIPT_PROGRAM = """\
import type { components, paths } from "./api";

type Schemas = components["schemas"];
type NetworkRequest = paths["/v1/networks/gradients"]["post"]["requestBody"]["content"]["application/json"];
type NetworkResponse = paths["/v1/networks/gradients"]["post"]["responses"]["200"]["content"]["application/json"];
type Problem = paths["/v1/networks/gradients"]["post"]["responses"]["422"]["content"]["application/problem+json"];

const seed: NetworkRequest = __SEED__;
const answer: NetworkResponse = __ANSWER__;
const loss: Schemas["TensorOut"] = answer.loss;
const shape: number[] = answer.gradients[0].weights.shape;
const layer: number = answer.gradients[0].layer;
const flat: Schemas["Tensor"] = { shape: [2], data: [1, 2] } satisfies Schemas["TensorFlat"];
const packed: Schemas["Tensor"] = { shape: [2], dtype: "float32", b64: "AACAPwAAAEA=" } satisfies Schemas["TensorB64"];
const problem: Problem = { type: "t", title: "t", status: 422, detail: "d" };
const unknownActivation: NetworkRequest = {
  features: [1],
  labels: 0,
  // @ts-expect-error an activation the service does not know is a type error
  layers: [{ weights: [[1, 2]], activation: "mish" }],
};
// @ts-expect-error features are required
const noFeatures: NetworkRequest = { labels: 0, layers: [] };
// @ts-expect-error a loss is a TensorOut, not a number
const lossNumber: number = answer.loss;
export { seed, loss, shape, layer, flat, packed, problem, unknownActivation, noFeatures, lossNumber };
"""


def test_typescript_types_check_the_seed_request_and_answer(
    document: dict[str, Any], server: str, tmp_path: Path
) -> None:
    npm = npm_executable()
    run([npm, "init", "-y"], tmp_path)
    run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", *NPM_PACKAGES], tmp_path, timeout=600)
    (tmp_path / "openapi.json").write_text(json.dumps(document))
    tools = tmp_path / "node_modules" / ".bin"
    # fields with a default are optional in a request (the tool's default makes them required everywhere)
    run([str(tools / "openapi-typescript"), "openapi.json", "--default-non-nullable=false", "-o", "api.d.ts"], tmp_path)
    answer = httpx.post(server + "/v1/networks/gradients", json=SEED_REQUEST).json()
    program = TYPESCRIPT_PROGRAM.replace("__SEED__", json.dumps(SEED_REQUEST)).replace("__ANSWER__", json.dumps(answer))
    (tmp_path / "check.ts").write_text(program)
    tsc = [
        str(tools / "tsc"),
        "--noEmit",
        "--strict",
        "--target",
        "es2022",
        "--module",
        "es2022",
        "--moduleResolution",
        "bundler",
    ]
    run([*tsc, "check.ts"], tmp_path)
    # the check has teeth: a request the types refuse fails it
    (tmp_path / "wrong.ts").write_text(
        'import type { components } from "./api";\n'
        'const wrong: components["schemas"]["NetworkRequest"] = { features: "x", labels: 0, layers: [] };\n'
        "export { wrong };\n"
    )
    failed = subprocess.run([*tsc, "wrong.ts"], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert failed.returncode != 0 and "wrong.ts" in failed.stdout, failed.stdout + failed.stderr
