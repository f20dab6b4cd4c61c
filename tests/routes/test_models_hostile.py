"""Hostile requests on every served-model route: each gets its exact 4xx problem+json, naming the field, with
TF Serving's `error` member; none is a 500, and the model keeps serving. Every hostile input of API.md §1 sent
to `:predict` is sent to `:gradients`, `:jacobian` and `/v1/gradient-check` on the model too (`on_verb`,
`on_check`), as are the hostile forms of the derivative verbs' own tensors."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from tests import model_repo
from tests.hostile_case import Hostile as Case

MAX_ELEMENTS = 4096
MAX_BODY = 256 * 1024
SEQ = "/v1/models/seq:predict"
SEQ_V1 = "/v1/models/seq/versions/1:predict"
TWO = "/v1/models/two:predict"
COUNTER = "/v1/models/counter:predict"
GOOD_ROW = [0.5, -1.0, 2.0, 0.25]


def post(name: str, path: str, body: Any, status: int, slug: str, **kw: Any) -> Case:
    return Case(name, "POST", path, status, slug, body=orjson.dumps(body), **kw)


def raw(name: str, path: str, body: bytes, status: int, slug: str, **kw: Any) -> Case:
    return Case(name, "POST", path, status, slug, body=body, **kw)


def invalid(name: str, path: str, body: Any, **kw: Any) -> Case:
    """A body the schema refuses: 422 validation."""
    return post(name, path, body, 422, "validation", **kw)


def get(name: str, path: str, status: int, slug: str, **kw: Any) -> Case:
    return Case(name, "GET", path, status, slug, content_type=None, **kw)


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


def one_row_b64(dtype: str, values: np.ndarray) -> dict[str, Any]:
    """A columnar body of one row of x, declared `dtype`, carrying `values`' bytes."""
    return {"inputs": {"x": {"shape": [1, 4], "dtype": dtype, "b64": b64(values)}}}


INSTANCES = ("body", "instances")
INPUTS = ("body", "inputs")
CASES = [
    # the body itself
    raw("not json", SEQ, b'{"instances": [[1, 2', 400, "malformed-json"),
    raw("empty body", SEQ, b"", 400, "malformed-json"),
    raw("nan token", SEQ, b'{"instances": [[NaN, 1, 2, 3]]}', 400, "malformed-json"),
    raw("text/plain", SEQ, b'{"instances": [[1, 2, 3, 4]]}', 415, "unsupported-media-type", content_type="text/plain"),
    invalid("a list body", SEQ, [[1, 2, 3, 4]], loc=("body",)),
    invalid("neither format", SEQ, {"signature_name": "serving_default"}, loc=("body",)),
    invalid("both formats", SEQ, {"instances": [GOOD_ROW], "inputs": [GOOD_ROW]}, loc=("body",)),
    invalid("unknown field", SEQ, {"instance": [GOOD_ROW]}, loc=("body", "instance")),
    invalid("instances a string", SEQ, {"instances": "1, 2, 3, 4"}, loc=INSTANCES),
    invalid("instances empty", SEQ, {"instances": []}, loc=INSTANCES),
    invalid("inputs a boolean", SEQ, {"inputs": True}, loc=INPUTS, says="boolean"),
    invalid("inputs null", SEQ, {"inputs": None}, loc=("body",)),
    # values
    invalid("a string value", SEQ, {"instances": [[1, "2", 3, 4]]}, loc=(*INSTANCES, 0, 1)),
    invalid("a boolean value", SEQ, {"instances": [[1, 2, True, 4]]}, loc=(*INSTANCES, 0, 2)),
    invalid("a null instance", SEQ, {"instances": [GOOD_ROW, None]}, loc=(*INSTANCES, 1)),
    invalid("ragged instances", SEQ, {"instances": [GOOD_ROW, [1, 2]]}, loc=(*INSTANCES, 1)),
    invalid("float32 overflow", SEQ, {"instances": [[1e39, 0, 0, 0]]}, loc=INSTANCES, says="float32"),
    invalid("too deep", SEQ, {"inputs": [[[[[[[[[[1]]]]]]]]]]}, loc=INPUTS, says="rank"),
    post(
        "too many elements",
        SEQ,
        {"instances": [GOOD_ROW] * (MAX_ELEMENTS // 4 + 1)},
        422,
        "limit-exceeded",
        loc=INSTANCES,
        says="TAPESERVE_MAX_ELEMENTS",
    ),
    raw(
        "a huge body",
        SEQ,
        b'{"instances": [' + b"[0.5, 1.5, 2.5, 3.5]," * (MAX_BODY // 20) + b"[0, 0, 0, 0]]}",
        413,
        "payload-too-large",
    ),
    # shapes and dtypes against the signature
    invalid("wrong instance shape", SEQ, {"instances": [[1, 2, 3]]}, loc=INSTANCES, says="shape [4]"),
    invalid("wrong rank", SEQ, {"inputs": GOOD_ROW}, loc=INPUTS, says="shape [-1, 4]"),
    invalid("scalar input", SEQ_V1, {"inputs": 3.0}, loc=INPUTS, says="float32"),
    invalid("bad b64", SEQ, {"inputs": {"x": {"shape": [1, 4], "b64": "***"}}}, loc=(*INPUTS, "x", "b64")),
    invalid("b64 byte count", SEQ, one_row_b64("float32", np.zeros(3, np.float32)), loc=(*INPUTS, "x", "b64")),
    invalid(
        "flat data length", SEQ, {"inputs": {"x": {"shape": [2, 4], "data": GOOD_ROW}}}, loc=(*INPUTS, "x", "data")
    ),
    invalid("unknown input", TWO, {"inputs": {"a": [[1, 2]], "b": [[1, 2, 3]], "c": [1]}}, loc=(*INPUTS, "c")),
    invalid("missing input", TWO, {"inputs": {"a": [[1, 2]]}}, loc=(*INPUTS, "b"), says="shape [-1, 3]"),
    invalid("unnamed inputs", TWO, {"inputs": [[1, 2]]}, loc=INPUTS, says="'a', 'b'"),
    invalid("unnamed instances", TWO, {"instances": [[1, 2]]}, loc=(*INSTANCES, 0)),
    invalid(
        "instance missing an input",
        TWO,
        {"instances": [{"a": [1, 2], "b": [1, 2, 3]}, {"a": [1, 2]}]},
        loc=(*INSTANCES, 1, "b"),
    ),
    invalid(
        "a bad value in a named instance",
        TWO,
        {"instances": [{"a": [1, 2], "b": [1, 2, 3]}, {"a": [1, "x"], "b": [1, 2, 3]}]},
        loc=(*INSTANCES, 1, "a", 1),
    ),
    invalid("mixed instances", TWO, {"instances": [{"a": [1, 2], "b": [1, 2, 3]}, [1, 2]]}, loc=(*INSTANCES, 1)),
    invalid("batch sizes that differ", TWO, {"inputs": {"a": [[1, 2]], "b": [[1, 2, 3], [4, 5, 6]]}}, loc=INPUTS),
    invalid(
        "a fraction for an int64 input",
        COUNTER,
        {"inputs": {"x": [[1, 2]], "steps": [1.5]}},
        loc=(*INPUTS, "steps"),
        says="int64",
    ),
    raw(
        "beyond int64",
        COUNTER,
        b'{"inputs": {"x": [[1, 2]], "steps": [1180591620717411303424]}}',
        422,
        "validation",
        loc=(*INPUTS, "steps"),
    ),
    # signatures
    invalid(
        "unknown signature",
        SEQ,
        {"signature_name": "nope", "instances": [GOOD_ROW]},
        loc=("body", "signature_name"),
        says="serving_default",
    ),
    invalid(
        "no default signature",
        "/v1/models/quad:predict",
        {"instances": [[1, 2]]},
        loc=("body", "signature_name"),
        says="score",
    ),
    invalid(
        "a numeric signature name", SEQ, {"signature_name": 5, "instances": [GOOD_ROW]}, loc=("body", "signature_name")
    ),
    invalid(
        "a huge signature name",
        SEQ,
        {"signature_name": "s" * 300, "instances": [GOOD_ROW]},
        loc=("body", "signature_name"),
    ),
    # models and versions in the path
    post("unknown model", "/v1/models/nope:predict", {"instances": [GOOD_ROW]}, 404, "model-not-found"),
    post("unknown version", "/v1/models/seq/versions/7:predict", {"instances": [GOOD_ROW]}, 404, "model-not-found"),
    post("version 0", "/v1/models/seq/versions/0:predict", {"instances": [GOOD_ROW]}, 404, "model-not-found"),
    *(
        invalid(
            f"version {raw_version!r}",
            f"/v1/models/seq/versions/{raw_version}:predict",
            {"instances": [GOOD_ROW]},
            loc=("path", "version"),
        )
        for raw_version in ("abc", "-1", "1.5", "1e3", "%D9%A3", "9" * 20, "%20")
    ),
    get("status of an unknown model", "/v1/models/nope", 404, "model-not-found"),
    get("status of a bad version", "/v1/models/seq/versions/x1", 422, "validation", loc=("path", "version")),
    get("status of an unknown version", "/v1/models/seq/versions/2", 404, "model-not-found"),
    get("metadata of an unknown model", "/v1/models/nope/metadata", 404, "model-not-found"),
    get("metadata of a bad version", "/v1/models/seq/versions/-2/metadata", 422, "validation", loc=("path", "version")),
    get("metadata of an unknown version", "/v1/models/seq/versions/3/metadata", 404, "model-not-found"),
    get("a verb by GET", "/v1/models/seq:predict", 405, "method-not-allowed"),  # a POST-only path
    # the rest of §1's forms
    invalid("a NaN string", SEQ, {"instances": [["NaN", 1, 2, 3]]}, loc=(*INSTANCES, 0, 0)),
    invalid(
        "an Infinity string",
        SEQ,
        {"inputs": {"x": [[1, 2, "-Infinity", 4]]}},
        loc=(*INPUTS, "x", 0, 2),
        says="non-finite",
    ),
    raw("number 1e400", SEQ, b'{"instances": [[1e400, 1, 2, 3]]}', 400, "malformed-json", says="infinity"),
    raw("nested 3000 deep", SEQ, b'{"inputs": ' + b"[" * 3000 + b"1" + b"]" * 3000 + b"}", 400, "malformed-json"),
    post(
        "a huge declared shape",
        SEQ,
        {"inputs": {"x": {"shape": [100000, 100000], "data": [1]}}},
        422,
        "limit-exceeded",
        loc=(*INPUTS, "x", "shape"),
        says="TAPESERVE_MAX_ELEMENTS",
    ),
    invalid(
        "a negative size", SEQ, {"inputs": {"x": {"shape": [-1, 4], "data": GOOD_ROW}}}, loc=(*INPUTS, "x", "shape")
    ),
    invalid("an unknown dtype", SEQ, one_row_b64("float16", np.zeros(4, np.float16)), loc=(*INPUTS, "x", "dtype")),
    invalid(
        "float32 bytes declared float64",
        SEQ,
        one_row_b64("float64", np.zeros(4, np.float32)),
        loc=(*INPUTS, "x", "b64"),
        says="32 bytes",
    ),
    invalid("an empty signature name", SEQ, {"signature_name": "", "instances": [GOOD_ROW]}),
]

CHECK = "/v1/gradient-check"
SEQ_GRADIENTS = "/v1/models/seq:gradients"
SEQ_JACOBIAN = "/v1/models/seq:jacobian"
ONE = {"inputs": [GOOD_ROW]}
X2 = {"a": [[1.0, 2.0]], "b": [[1.0, 2.0, 3.0]]}
CLASS = ("body", "class_index")
OUTPUT = ("body", "output")
INPUT = ("body", "input")
COUNTER_MODEL = "/v1/models/counter"
COUNTER_ROW = {"inputs": {"x": [[1, 2]], "steps": [1]}}
VERB_CASES = [
    # the derivative verbs' own tensors and fields, in §1's hostile forms
    invalid(
        "a NaN cotangent",
        SEQ_GRADIENTS,
        {**ONE, "output_gradients": [["NaN", 1, 2]]},
        loc=("body", "output_gradients", 0, 0),
    ),
    invalid(
        "a cotangent's byte count",
        SEQ_GRADIENTS,
        {**ONE, "output_gradients": {"shape": [1, 3], "dtype": "float32", "b64": "AAAA"}},
        loc=("body", "output_gradients", "b64"),
    ),
    invalid(
        "a ragged cotangent",
        SEQ_GRADIENTS,
        {**ONE, "output_gradients": [[1, 2, 3], [1]]},
        loc=("body", "output_gradients"),
    ),
    *(
        invalid(f"a {kind} class", SEQ_GRADIENTS, {**ONE, "class_index": value}, loc=CLASS)
        for kind, value in (("boolean", True), ("fractional", 1.5), ("string", "1"))
    ),
    raw(
        "a class beyond int64",
        SEQ_GRADIENTS,
        b'{"inputs": [[0.5, -1.0, 2.0, 0.25]], "class_index": 1180591620717411303424}',
        422,
        "validation",
        loc=CLASS,
    ),
    invalid("a string class in a list", SEQ_GRADIENTS, {**ONE, "class_index": ["1"]}, loc=CLASS),
    invalid("fractional labels", SEQ_GRADIENTS, {**ONE, "loss": {"labels": [1.5]}}, loc=("body", "loss", "labels")),
    invalid(
        "labels out of range",
        SEQ_GRADIENTS,
        {**ONE, "loss": {"labels": [3]}},
        loc=("body", "loss", "labels"),
        says="[0, 3)",
    ),
    invalid(
        "non-finite targets",
        SEQ_GRADIENTS,
        {**ONE, "loss": {"targets": [[1, 0, "Infinity"]]}},
        loc=("body", "loss", "targets", 0, 2),
    ),
    invalid("too many sources", SEQ_GRADIENTS, {**ONE, "sources": ["inputs"] * 2000}, loc=("body", "sources")),
    # an integer tensor has no gradient: named as the output, or as the Jacobian's input
    *(
        invalid(f"an integer {what}", f"{COUNTER_MODEL}:{verb}", {**COUNTER_ROW, **names}, loc=loc, says="int64")
        for what, verb, names, loc in (
            ("output's gradient", "gradients", {"output": "count"}, OUTPUT),
            ("input's Jacobian", "jacobian", {"output": "y", "input": "steps"}, INPUT),
            ("output's Jacobian", "jacobian", {"output": "count", "input": "x"}, OUTPUT),
        )
    ),
    invalid("a class per instance, miscounted", SEQ_JACOBIAN, {**ONE, "class_index": [0, 1]}, loc=CLASS),
    invalid("a negative class", SEQ_JACOBIAN, {**ONE, "class_index": -1}, loc=CLASS),
    invalid("several outputs, none named", "/v1/models/two:gradients", {"inputs": X2}, loc=OUTPUT),
    invalid("several inputs, none named", "/v1/models/two:jacobian", {"inputs": X2, "output": "risk"}, loc=INPUT),
]

CHOICES: dict[str, dict[str, dict[str, str]]] = {
    # what each verb needs beyond the inputs, per model, so that the inputs are what the request gets wrong
    "gradients": {"two": {"output": "risk"}, "counter": {"output": "y"}, "quad": {"output": "y"}},
    "jacobian": {
        "two": {"output": "risk", "input": "a"},
        "counter": {"output": "y", "input": "x"},
        "quad": {"output": "y"},
    },
}
MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?:(?P<verb>[a-z]+)$")


def _document(case: Case) -> Any:
    """The case's body as JSON, or None when it is not JSON (a raw case)."""
    try:  # the standard library's parser: it keeps integers beyond int64 as they are
        return json.loads(case.body or b"")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def on_verb(case: Case, verb: str) -> Case | None:
    """A `:predict` case sent to `verb` instead, with what `verb` needs besides the inputs."""
    match = MODEL_PATH.match(case.path)
    if match is None or match["verb"] != "predict":
        return None
    path = case.path.replace(":predict", f":{verb}")
    body, document = case.body, _document(case)
    if isinstance(document, dict) and case.status == 422:
        body = json.dumps({**CHOICES[verb].get(match["name"], {}), **document}).encode()
    return Case(
        f"{verb}: {case.name}", case.method, path, case.status, case.slug, body, case.content_type, case.loc, case.says
    )


def on_check(case: Case) -> Case | None:
    """A POSTed `:predict` or `:gradients` case sent as `/v1/gradient-check`'s `model` body (the version in the
    body, the locations under body.model); what only a path or raw bytes can express is left to the routes'
    own campaigns."""
    match = MODEL_PATH.match(case.path)
    document = _document(case)
    if match is None or match["verb"] not in ("predict", "gradients") or document is None:
        return None
    if case.method != "POST" or case.status not in (404, 422):
        return None
    version = match["version"]
    if version is not None and not (version.isdigit() and int(version) > 0):
        return None  # a path's version, not a body's
    model: Any = document
    if isinstance(document, dict):
        needs = CHOICES["gradients"].get(match["name"], {}) if match["verb"] == "predict" else {}
        model = {"name": match["name"], **needs, **document}
        if version is not None:
            model["version"] = int(version)
    loc = None if case.loc is None else ("body", "model", *case.loc[1:])
    body = json.dumps({"model": model}).encode()
    return Case(f"gradient-check: {case.name}", "POST", CHECK, case.status, case.slug, body, loc=loc, says=case.says)


DERIVED = [
    derived
    for derived in (
        *(on_verb(case, verb) for case in CASES for verb in ("gradients", "jacobian")),
        *(on_check(case) for case in (*CASES, *VERB_CASES)),
    )
    if derived is not None
]
ALL = [*CASES, *VERB_CASES, *DERIVED]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = model_repo.new_repository(tmp_path_factory, "hostile")
    model_repo.save_keras(model_repo.sequential(1), root, "seq", 1)
    model_repo.save_keras(model_repo.two_headed(), root, "two", 1)
    model_repo.save_quadratic(root)
    model_repo.save_counter(root)
    with model_repo.serving(root, max_elements=MAX_ELEMENTS, max_body_bytes=MAX_BODY) as client:
        yield client


def _locs(problem: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [tuple(item["loc"]) for item in problem.get("errors") or []]


@pytest.mark.parametrize("case", ALL, ids=[case.name for case in ALL])
def test_a_hostile_request_gets_its_problem(hostile: TestClient, case: Case) -> None:
    headers = {} if case.content_type is None else {"content-type": case.content_type}
    response = hostile.request(case.method, case.path, content=case.body, headers=headers)
    assert response.status_code == case.status, response.text[:2000]
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"https://tapeserve.dev/problems/{case.slug}"
    assert problem["status"] == case.status
    assert "Traceback" not in response.text and len(response.content) < 4096
    if case.path.startswith("/v1/models"):  # 405 and 413 too, answered before any route
        assert problem["error"] == problem["detail"]
    if case.loc is not None:
        assert any(loc[: len(case.loc)] == case.loc for loc in _locs(problem)), (problem, case.loc)
    if case.says is not None:
        assert case.says in problem["detail"], problem["detail"]
    # and the model still serves
    answer = hostile.post(SEQ, json={"instances": [GOOD_ROW]})
    assert answer.status_code == 200 and len(answer.json()["predictions"][0]) == 3


UNROUTED = [
    # (method, path, status) that no route answers: the router's own 405 and 404
    ("DELETE", "/v1/models/seq", 405),
    ("PUT", "/v1/models/seq/versions/1:predict", 405),
    ("GET", "/v1/models/seq/metadata/more", 404),
    ("GET", "/v1/models/seq:reload", 404),
]


@pytest.mark.parametrize(("method", "path", "status"), UNROUTED)
def test_problems_outside_every_route_carry_the_error_member_on_tf_servings_paths(
    hostile: TestClient, method: str, path: str, status: int
) -> None:
    """Router answers (no route matched the path, or not its method) on TF Serving's paths still carry the
    `error` member its clients read; the service's other paths do not."""
    response = hostile.request(method, path)
    problem = response.json()
    assert response.status_code == status and problem["error"] == problem["detail"], problem
    elsewhere = hostile.request(method, "/v1/networks/gradients" if status == 405 else "/v1/no-such-thing")
    assert elsewhere.status_code == status and "error" not in elsewhere.json()
    prefixed = TestClient(hostile.app, root_path="/tapeserve").request(method, "/tapeserve" + path)
    assert prefixed.status_code == status and prefixed.json()["error"] == prefixed.json()["detail"]


def test_the_campaign_covers_every_route() -> None:
    assert len({case.name for case in CASES}) == len(CASES) >= 50
    shapes = {
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
        "/v1/models/{name}",
        "/v1/models/{name}/versions/{version}",
        "/v1/models/{name}/metadata",
        "/v1/models/{name}/versions/{version}/metadata",
    }
    import re

    covered = set()
    for case in CASES:
        path = re.sub(r"/versions/[^/:]+", "/versions/{version}", case.path)
        covered.add(re.sub(r"^/v1/models/[^/:]+", "/v1/models/{name}", path))
    assert shapes <= covered, shapes - covered


def test_every_verb_meets_every_hostile_input() -> None:
    """Each POSTed :predict case comes back on :gradients and :jacobian; each JSON one (with a status the body
    decides) as a gradient check of the model too."""
    by_name = {case.name for case in ALL}
    for case in CASES:
        if case.method == "POST" and MODEL_PATH.match(case.path):
            assert {f"gradients: {case.name}", f"jacobian: {case.name}"} <= by_name, case.name
    checks = [case for case in DERIVED if case.path == CHECK]
    assert len(checks) >= 40 and {case.status for case in checks} == {404, 422}
    assert {
        "gradient-check: a boolean class",
        "gradient-check: too deep",
        "gradient-check: unknown signature",
    } <= by_name
