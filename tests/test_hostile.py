"""A hostile-input campaign: malformed and hostile requests across every endpoint.

Each case asserts its exact status and problem details (type, title, status, detail, and the JSON location
of the offending value where there is one), that no traceback leaks, and then that the service still
answers the seed request with the numbers of the closed form (a − y) ⊗ x_B.
"""

from __future__ import annotations

import base64
from typing import Any

import httpx2
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from schemas.networks import (
    MAX_JACOBIAN_ROWS,
    MAX_LAYERS,
    MAX_LAYERS_WITH_LOCAL_GRADIENTS,
    SEED_FEATURES,
    SEED_WEIGHTS,
    NetworkRequest,
)
from service import errors
from tests.hostile_case import JSON, Hostile

NETWORKS = "/v1/networks/gradients"
TAPE = "/v1/tape"
ACTIVATIONS = "/v1/activations"
PLOT = "/v1/activations/plot.png"
CHECK = "/v1/gradient-check"
PROBLEM_JSON = "application/problem+json"
PROBLEMS = "https://tapeserve.dev/problems/"

SEED: dict[str, Any] = {
    "features": SEED_FEATURES,
    "labels": 1,
    "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}],
}
SEED_TAPE: dict[str, Any] = {
    "inputs": {"x": {"value": [1.0, 2.0]}},
    "program": "a = tf.reduce_sum(x * x)",
    "watch": ["x"],
    "compute": [{"kind": "gradient", "target": "a", "sources": ["x"]}],
}
TITLES = {
    kind.slug: kind.title
    for kind in (
        errors.BadRequest,
        errors.NotFound,
        errors.MethodNotAllowed,
        errors.UnsupportedMediaType,
        errors.ValidationFailed,
        errors.LimitExceeded,
        errors.ProgramRejected,
        errors.TapeSemantics,
        errors.NonPersistentTape,
    )
}


def document(path: str, body: Any, status: int, slug: str, name: str, **kw: Any) -> Hostile:
    return Hostile(name, "POST", path, status, slug, body=orjson.dumps(body), **kw)


def text(path: str, body: bytes, status: int, slug: str, name: str, **kw: Any) -> Hostile:
    return Hostile(name, "POST", path, status, slug, body=body, **kw)


def seed_with(**changes: Any) -> dict[str, Any]:
    return {**SEED, **changes}


def layer_with(**changes: Any) -> dict[str, Any]:
    return seed_with(layers=[{"weights": SEED_WEIGHTS, "activation": "softmax", **changes}])


def seed_bytes(features: bytes) -> bytes:
    """The seed body with its features written as these raw bytes (tokens orjson would never write)."""
    return orjson.dumps(seed_with(features="FEATURES")).replace(b'"FEATURES"', features)


def deep(depth: int) -> Any:
    """[[[…1.0…]]], `depth` arrays deep."""
    value: Any = 1.0
    for _ in range(depth):
        value = [value]
    return value


def b64(array: np.ndarray) -> str:
    return base64.b64encode(array.astype("<f4").tobytes()).decode()


SEED_TEXT = orjson.dumps(SEED)
MALFORMED = "malformed-json"
STRICT = "strict JSON"

# ---------------------------------------------------------------------------------------- tokens JSON forbids
TOKENS = [
    text(NETWORKS, seed_bytes(b"[NaN, 120.0, 37.5]"), 400, MALFORMED, "token-NaN", says=STRICT),
    text(NETWORKS, seed_bytes(b"[Infinity, 120.0, 37.5]"), 400, MALFORMED, "token-Infinity", says=STRICT),
    text(NETWORKS, seed_bytes(b"[-Infinity, 120.0, 37.5]"), 400, MALFORMED, "token-minus-Infinity", says=STRICT),
    text(NETWORKS, seed_bytes(b"[1e400, 120.0, 37.5]"), 400, MALFORMED, "number-1e400", says="infinity"),
    text(NETWORKS, seed_bytes(b"[1" + b"0" * 400 + b", 1, 2]"), 400, MALFORMED, "integer-400-digits"),
    text(NETWORKS, seed_bytes(b"[76.0, 120.0, 37.5,]"), 400, MALFORMED, "trailing-comma-array", says="trailing"),
    text(NETWORKS, SEED_TEXT[:-1] + b",}", 400, MALFORMED, "trailing-comma-object", says="trailing"),
    text(NETWORKS, SEED_TEXT.replace(b'"', b"'"), 400, MALFORMED, "single-quotes"),
    text(NETWORKS, b"// the seed\n" + SEED_TEXT, 400, MALFORMED, "line-comment"),
    text(NETWORKS, b"/* the seed */" + SEED_TEXT, 400, MALFORMED, "block-comment"),
    text(NETWORKS, b"\xef\xbb\xbf" + SEED_TEXT, 400, MALFORMED, "byte-order-mark", says="BOM"),
    text(NETWORKS, SEED_TEXT.replace(b"softmax", b"soft\xffmax"), 400, MALFORMED, "invalid-utf8"),
    text(NETWORKS, SEED_TEXT.replace(b"softmax", b"\\ud800"), 400, MALFORMED, "lone-surrogate", says="surrogate"),
    text(NETWORKS, seed_bytes(b"[076, 120, 37.5]"), 400, MALFORMED, "leading-zero"),
    text(NETWORKS, seed_bytes(b"[+76, 120, 37.5]"), 400, MALFORMED, "plus-sign"),
    text(NETWORKS, seed_bytes(b"[0x4c, 120, 37.5]"), 400, MALFORMED, "hex-number"),
    text(NETWORKS, SEED_TEXT.replace(b'"labels"', b"labels"), 400, MALFORMED, "unquoted-key"),
    text(NETWORKS, SEED_TEXT[: len(SEED_TEXT) // 2], 400, MALFORMED, "truncated"),
    text(NETWORKS, SEED_TEXT + SEED_TEXT, 400, MALFORMED, "two-documents"),
    text(NETWORKS, b"\x00", 400, MALFORMED, "nul-byte"),
    # API.md §7: an empty body is not JSON either
    text(NETWORKS, b"", 400, MALFORMED, "empty-body", says="the body is empty"),
    text(TAPE, b" \r\n\t ", 400, MALFORMED, "whitespace-body", says="the body is empty"),
    text(TAPE, b'{"program": "a = 1", "inputs": {"x": {"value": NaN}}}', 400, MALFORMED, "tape-NaN"),
    text(ACTIVATIONS, b'{"z": [Infinity]}', 400, MALFORMED, "activations-Infinity"),
    text(ACTIVATIONS, b'{"alpha": 1e400}', 400, MALFORMED, "activations-alpha-1e400"),
    text(CHECK, b'{"network": ' + SEED_TEXT + b", 'epsilon': 0.1}", 400, MALFORMED, "check-single-quotes"),
]

# --------------------------------------------------------------------------------- bodies that are not objects
VALIDATION = "validation"
NOT_OBJECTS = [
    text(NETWORKS, b"[]", 422, VALIDATION, "top-level-array", loc=("body",)),
    text(ACTIVATIONS, b"[" + SEED_TEXT + b"]", 422, VALIDATION, "top-level-array-of-objects", loc=("body",)),
    text(TAPE, b"42", 422, VALIDATION, "top-level-number", loc=("body",)),
    text(CHECK, b'"network"', 422, VALIDATION, "top-level-string", loc=("body",)),
    text(NETWORKS, b"null", 422, VALIDATION, "top-level-null", loc=("body",)),
]

# ------------------------------------------------------------------------------------- content types and verbs
MEDIA = "unsupported-media-type"
CONTENT_TYPES = [
    text(NETWORKS, SEED_TEXT, 415, MEDIA, "text-plain", content_type="text/plain"),
    text(TAPE, orjson.dumps(SEED_TAPE), 415, MEDIA, "no-content-type", content_type=None),
    text(ACTIVATIONS, b"activations=relu", 415, MEDIA, "form", content_type="application/x-www-form-urlencoded"),
    text(CHECK, SEED_TEXT, 415, MEDIA, "multipart", content_type="multipart/form-data; boundary=x"),
    text(NETWORKS, SEED_TEXT, 415, MEDIA, "xml", content_type="application/xml"),
    text(NETWORKS, SEED_TEXT, 415, MEDIA, "json-lookalike", content_type="application/jsonx"),
]
NOT_ALLOWED = "method-not-allowed"
VERBS = [
    Hostile("GET-networks", "GET", NETWORKS, 405, NOT_ALLOWED, content_type=None),
    Hostile("PUT-tape", "PUT", TAPE, 405, NOT_ALLOWED, body=orjson.dumps(SEED_TAPE)),
    Hostile("PATCH-gradient-check", "PATCH", CHECK, 405, NOT_ALLOWED, body=b"{}"),
    Hostile("DELETE-activations", "DELETE", ACTIVATIONS, 405, NOT_ALLOWED, content_type=None),
    Hostile("POST-plot", "POST", PLOT, 405, NOT_ALLOWED, body=b"{}"),
    Hostile("POST-healthz", "POST", "/healthz", 405, NOT_ALLOWED, body=b"{}"),
    Hostile("POST-readyz", "POST", "/readyz", 405, NOT_ALLOWED, body=b"{}"),
    Hostile("POST-info", "POST", "/v1/info", 405, NOT_ALLOWED, body=b"{}"),
    Hostile("PUT-ops", "PUT", "/v1/ops", 405, NOT_ALLOWED, body=b"{}"),
    Hostile("POST-metrics", "POST", "/metrics", 405, NOT_ALLOWED, body=b"{}"),
    Hostile("POST-docs", "POST", "/docs", 405, NOT_ALLOWED, body=b"{}"),
    Hostile("DELETE-openapi", "DELETE", "/openapi.json", 405, NOT_ALLOWED, content_type=None),
    Hostile("PUT-redoc", "PUT", "/redoc", 405, NOT_ALLOWED, body=b"{}"),
]
NOT_FOUND = [
    Hostile("unknown-path", "GET", "/v1/networks/gradient", 404, "not-found", content_type=None),
    Hostile("asset-traversal", "GET", "/docs/assets/%2e%2e/%2e%2e/etc/passwd", 404, "not-found", content_type=None),
    Hostile("unknown-asset", "GET", "/docs/assets/payload.js", 404, "not-found", content_type=None),
]

# --------------------------------------------------------------------------------------------- tensors
FEATURES = ("body", "features")
LAYERS = ("body", "layers")
LIMIT = "limit-exceeded"
TENSORS = [
    document(
        NETWORKS,
        seed_with(features=[[76, 120, 37.5], [1, 2]]),
        422,
        VALIDATION,
        "ragged",
        loc=(*FEATURES, 1),
        says="ragged",
    ),
    document(
        NETWORKS,
        seed_with(features=[True, 120, 37.5]),
        422,
        VALIDATION,
        "boolean-in-data",
        loc=(*FEATURES, 0),
        says="boolean",
    ),
    document(
        NETWORKS,
        seed_with(features=["76", 120, 37.5]),
        422,
        VALIDATION,
        "string-in-data",
        loc=(*FEATURES, 0),
        says="string",
    ),
    document(
        NETWORKS,
        seed_with(features=[None, 120, 37.5]),
        422,
        VALIDATION,
        "null-in-data",
        loc=(*FEATURES, 0),
        says="null",
    ),
    document(
        NETWORKS,
        seed_with(features=["NaN", 120, 37.5]),
        422,
        VALIDATION,
        "NaN-string-in-data",
        loc=(*FEATURES, 0),
        says="non-finite",
    ),
    document(
        NETWORKS,
        seed_with(features="Infinity"),
        422,
        VALIDATION,
        "Infinity-string-tensor",
        loc=FEATURES,
        says="non-finite",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "data": [76, 120, "-Infinity"]}),
        422,
        VALIDATION,
        "minus-Infinity-string-in-flat-data",
        loc=(*FEATURES, "data", 2),
    ),
    document(
        NETWORKS,
        seed_with(features=[[[[[[[[[1.0]]]]]]]]]),
        422,
        VALIDATION,
        "rank-9-nested",
        loc=FEATURES,
        says="rank 8",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [1] * 9, "data": [1.0]}),
        422,
        VALIDATION,
        "rank-9-shape",
        loc=(*FEATURES, "shape"),
        says="rank 9",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [1_000_000, 1_000_000], "data": []}),
        422,
        LIMIT,
        "huge-declared-shape",
        loc=(*FEATURES, "shape"),
        says="TAPESERVE_MAX_ELEMENTS",
    ),
    document(
        TAPE,
        {"program": "a = x", "inputs": {"x": {"value": {"shape": [2**62, 2**62], "b64": ""}}}},
        422,
        LIMIT,
        "astronomical-declared-shape",
        loc=("body", "inputs", "x", "value", "shape"),
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [2**62, 3], "b64": ""}),
        422,
        LIMIT,
        "astronomical-batch",
        loc=LAYERS,
        says="4,611,686,018,427,387,904 samples",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [-3], "data": [76, 120, 37.5]}),
        422,
        VALIDATION,
        "negative-size",
        loc=(*FEATURES, "shape"),
        says="negative",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [0], "data": []}),
        422,
        VALIDATION,
        "zero-size",
        loc=FEATURES,
        says="at least one feature",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3.5], "data": [76, 120, 37.5]}),
        422,
        VALIDATION,
        "fractional-size",
        loc=(*FEATURES, "shape"),
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "data": [76, 120]}),
        422,
        VALIDATION,
        "data-shorter-than-shape",
        loc=(*FEATURES, "data"),
        says="3 expected",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "b64": "!!!!"}),
        422,
        VALIDATION,
        "bad-base64",
        loc=(*FEATURES, "b64"),
        says="base64",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "b64": b64(np.zeros(2))}),
        422,
        VALIDATION,
        "wrong-byte-count",
        loc=(*FEATURES, "b64"),
        says="12 bytes expected",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "b64": b64(np.array([76, np.nan, 37.5]))}),
        422,
        VALIDATION,
        "NaN-bytes",
        loc=(*FEATURES, "b64"),
        says="non-finite",
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "b64": 12}),
        422,
        VALIDATION,
        "b64-not-a-string",
        loc=(*FEATURES, "b64"),
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "data": [76, 120, 37.5], "dtyp": "float32"}),
        422,
        VALIDATION,
        "typo-in-tensor-field",
        loc=(*FEATURES, "dtyp"),
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "data": [76, 120, 37.5], "dtype": "float16"}),
        422,
        VALIDATION,
        "unknown-tensor-dtype",
        loc=(*FEATURES, "dtype"),
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3], "data": [1, 2, 3], "b64": b64(np.zeros(3))}),
        422,
        VALIDATION,
        "data-and-b64",
        loc=FEATURES,
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3, 1], "data": [[76], [120], [37.5]]}),
        422,
        VALIDATION,
        "nested-data-in-flat-form",
        loc=(*FEATURES, "data"),
    ),
    document(
        NETWORKS,
        seed_with(features={"shape": [3, 1, 1], "data": [76, 120, 37.5]}),
        422,
        VALIDATION,
        "rank-3-features",
        loc=FEATURES,
        says="rank 3",
    ),
    document(
        NETWORKS,
        seed_with(features=[3e38, 3e38, 1e39]),
        422,
        VALIDATION,
        "overflows-float32",
        loc=FEATURES,
        says="float32",
    ),
    document(
        TAPE,
        {"program": "a = x", "inputs": {"x": {"value": deep(100)}}},
        422,
        VALIDATION,
        "nested-100-deep",
        loc=("body", "inputs", "x", "value"),
        says="maximum rank",
    ),
]

# ------------------------------------------------------------------------------------ fields of /v1/networks
NETWORK_FIELDS = [
    document(
        NETWORKS,
        {**seed_with(), "feature": SEED_FEATURES},
        422,
        VALIDATION,
        "typo-top-level-field",
        loc=("body", "feature"),
    ),
    document(
        NETWORKS,
        {"features": SEED_FEATURES, "labels": 1, "layer": SEED["layers"]},
        422,
        VALIDATION,
        "typo-layers",
        loc=("body", "layer"),
    ),
    document(
        NETWORKS,
        seed_with(layers=[{"weight": SEED_WEIGHTS, "activation": "softmax"}]),
        422,
        VALIDATION,
        "typo-in-layer",
        loc=(*LAYERS, 0, "weight"),
    ),
    document(
        NETWORKS,
        layer_with(activation="softmaxx"),
        422,
        VALIDATION,
        "unknown-activation",
        loc=(*LAYERS, 0, "activation"),
    ),
    document(
        NETWORKS,
        layer_with(activation="s" * 1_000_000),
        422,
        VALIDATION,
        "megabyte-activation-name",
        loc=(*LAYERS, 0, "activation"),
    ),
    document(
        NETWORKS,
        layer_with(activation="relu", alpha=0.2),
        422,
        VALIDATION,
        "alpha-without-leaky-relu",
        loc=(*LAYERS, 0, "alpha"),
        says="leaky_relu only",
    ),
    document(
        NETWORKS,
        layer_with(weights=[[0.1, 0.2], [0.3, 0.4]]),
        422,
        VALIDATION,
        "weights-wrong-shape",
        loc=(*LAYERS, 0, "weights"),
    ),
    document(NETWORKS, seed_with(layers=[]), 422, VALIDATION, "no-layers", loc=LAYERS),
    document(
        NETWORKS,
        seed_with(layers=[{"weights": [[0.1] * 4] * 3, "activation": "tanh"}] * 65),
        422,
        VALIDATION,
        "65-layers",
        loc=LAYERS,
    ),
    document(
        NETWORKS, seed_with(labels=[0, 1]), 422, VALIDATION, "one-hot-as-labels", loc=("body", "labels"), says="targets"
    ),
    document(NETWORKS, seed_with(targets=[0.0, 1.0]), 422, VALIDATION, "labels-and-targets", loc=("body",)),
    document(
        NETWORKS,
        {"features": SEED_FEATURES, "layers": SEED["layers"]},
        422,
        VALIDATION,
        "neither-labels-nor-targets",
        loc=("body",),
    ),
    document(NETWORKS, seed_with(labels=2), 422, VALIDATION, "label-beyond-classes", loc=("body", "labels")),
    document(NETWORKS, seed_with(labels=-1), 422, VALIDATION, "negative-label", loc=("body", "labels")),
    text(
        NETWORKS,
        SEED_TEXT.replace(b'"labels":1', b'"labels":' + b"9" * 30),
        422,
        VALIDATION,
        "30-digit-label",
        loc=("body", "labels"),
    ),
    document(NETWORKS, seed_with(labels=2**63 - 1), 422, VALIDATION, "int64-max-label", loc=("body", "labels")),
]
DEEP_TANH = [{"weights": [[0.1] * 4] * 3, "activation": "tanh"}]
BOUNDS = [
    document(
        NETWORKS,
        seed_with(layers=DEEP_TANH * 9, include=["jacobians"]),
        422,
        LIMIT,
        "jacobians-of-9-layers",
        loc=("body", "include"),
        says="at most 8 layers",
    ),
    document(
        NETWORKS,
        seed_with(layers=DEEP_TANH * 9, include=["local_gradients"]),
        422,
        LIMIT,
        "local-gradients-of-9-layers",
        loc=("body", "include"),
        says="at most 8 layers",
    ),
    document(
        NETWORKS,
        seed_with(features=[SEED_FEATURES] * 513, labels=[1] * 513, include=["jacobians"]),
        422,
        LIMIT,
        "jacobians-of-513-samples-by-2-units",
        loc=("body", "include"),
        says="1,026 outputs",
    ),
    document(
        NETWORKS,
        {
            "features": [*SEED_FEATURES, 1.0],
            "labels": 1,
            "layers": [{"weights": [[0.0] * 5] * 1024, "activation": "softmax"}],
            "include": ["jacobians"],
        },
        422,
        LIMIT,
        "jacobian-of-5M-elements",
        loc=("body", "include"),
        says="5,242,880 elements",
    ),
    document(
        NETWORKS,
        seed_with(
            features={"shape": [4_194_304, 1], "data": []},
            layers=[{"weights": [[0.1, 0.1]] * 2, "activation": "softmax"}],
        ),
        422,
        LIMIT,
        "layer-z-of-8M-elements",
        loc=LAYERS,
        says="8,388,608 elements",
    ),
    document(
        NETWORKS,
        seed_with(
            features={"shape": [1_048_576, 1], "data": []},
            layers=[
                {"weights": [[0.1, 0.1]] * 4, "activation": "tanh"},
                *[{"weights": [[0.1] * 5] * 4, "activation": "tanh"}] * 4,
            ],
        ),
        422,
        LIMIT,
        "layers-z-of-21M-elements-together",
        loc=LAYERS,
        says="together",
    ),
]
WRONG_TYPES = [
    ("features", "abc", FEATURES),
    ("features", {"shape": "3", "data": [1, 2, 3]}, (*FEATURES, "shape")),
    ("labels", "1", ("body", "labels")),
    ("labels", True, ("body", "labels")),
    ("labels", 1.0, ("body", "labels")),
    ("labels", {"class": 1}, ("body", "labels")),
    ("targets", "one-hot", ("body", "targets")),
    ("layers", {"weights": SEED_WEIGHTS}, LAYERS),
    ("layers", "softmax", LAYERS),
    ("layers", [SEED_WEIGHTS], (*LAYERS, 0)),
    ("bias", True, ("body", "bias")),
    ("loss", None, ("body", "loss")),
    ("loss", "hinge", ("body", "loss")),
    ("reduction", ["sum"], ("body", "reduction")),
    ("dtype", 32, ("body", "dtype")),
    ("dtype", "float16", ("body", "dtype")),
    ("include", "jacobians", ("body", "include")),
    ("include", ["everything"], ("body", "include", 0)),
    ("response_encoding", True, ("body", "response_encoding")),
]


def typed(field: str, value: Any) -> dict[str, Any]:
    """The seed with one field of the wrong type (targets replaces labels, as exactly one of them is sent)."""
    if field == "targets":
        return {"features": SEED_FEATURES, "layers": SEED["layers"], "targets": value}
    return seed_with(**{field: value})


NETWORK_TYPES = [
    document(NETWORKS, typed(field, value), 422, VALIDATION, f"{field}-as-{type(value).__name__}-{i}", loc=loc)
    for i, (field, value, loc) in enumerate(WRONG_TYPES)
]

# ------------------------------------------------------------------------------------------- /v1/tape
PROGRAM = "program"


def program(source: str, slug: str, name: str, **kw: Any) -> Hostile:
    return document(TAPE, {"program": source, "inputs": {"x": {"value": [1.0, 2.0]}}}, 422, slug, name, **kw)


TAPES = [
    program("import os", PROGRAM, "import", says="import", extra={"line": 1, "column": 1}),
    program("a = __import__('os')", PROGRAM, "dunder-import", extra={"line": 1}),
    program("a = x.__class__.__bases__", PROGRAM, "dunder-attribute", says="dunder"),
    program("f = lambda q: q", PROGRAM, "lambda", says="lambda"),
    program("a = [q for q in x]", PROGRAM, "comprehension", says="comprehension"),
    program("a = eval('1')", PROGRAM, "eval", says="eval"),
    program("a = tf.io.read_file('/etc/passwd')", PROGRAM, "read-file"),
    program("a = x.numpy().tofile('/tmp/x')", PROGRAM, "method-escape"),
    program("a = 'tf.io.gfile'", PROGRAM, "string-as-code", says="strings"),
    program("a = 9**9**9", PROGRAM, "integer-bomb", says="int64"),
    program("a = (1 +", PROGRAM, "syntax-error", says="syntax", extra={"line": 1}),
    program("x = 1\n" * 501, LIMIT, "501-statements", loc=("body", "program"), says="500"),
    program("#" * 20_001, LIMIT, "20001-characters", loc=("body", "program"), says="20,000"),
    program("a = " + "[" * 60 + "1" + "]" * 60, LIMIT, "nesting-60", says="50 levels"),
    program("a = " + "-" * 19_000 + "1", PROGRAM, "parser-recursion", loc=("body", "program")),
    program("a = tf.ones([100000, 100000])", LIMIT, "huge-intermediate", says="elements"),
    program("a = tf.ones([2048, 2048])\nb = a @ a", LIMIT, "huge-matmul", says="multiply-adds"),
    document(TAPE, {"program": 42}, 422, VALIDATION, "program-not-a-string", loc=("body", "program")),
    document(
        TAPE, {"programme": "a = 1", "program": "a = 1"}, 422, VALIDATION, "typo-programme", loc=("body", "programme")
    ),
    document(
        TAPE,
        {"program": "a = x", "inputs": {"__class__": {"value": 1.0}}},
        422,
        VALIDATION,
        "dunder-input-name",
        loc=("body", "inputs", "__class__"),
    ),
    document(
        TAPE,
        {"program": "a = x", "inputs": {"x": {"value": 3.5, "dtype": "int32"}}},
        422,
        VALIDATION,
        "fraction-as-int32",
        loc=("body", "inputs", "x", "value"),
        says="whole numbers",
    ),
    document(
        TAPE,
        {"program": "a = x", "inputs": {"x": {"value": 2**40, "dtype": "int32"}}},
        422,
        VALIDATION,
        "int32-out-of-range",
        loc=("body", "inputs", "x", "value"),
        says="int32 range",
    ),
    document(
        TAPE,
        {"program": "a = x", "inputs": {"x": {"value": 1e39}}},
        422,
        VALIDATION,
        "input-overflows-float32",
        loc=("body", "inputs", "x", "value"),
        says="float32",
    ),
    document(
        TAPE,
        {**SEED_TAPE, "compute": [{"kind": "gradients", "target": "a", "sources": ["x"]}]},
        422,
        VALIDATION,
        "unknown-compute-kind",
        loc=("body", "compute", 0, "kind"),
    ),
    document(
        TAPE,
        {**SEED_TAPE, "compute": [{"kind": "gradient", "target": "a", "sources": ["x"] * 65}]},
        422,
        VALIDATION,
        "65-sources",
        loc=("body", "compute", 0, "sources"),
    ),
    document(
        TAPE,
        {**SEED_TAPE, "compute": SEED_TAPE["compute"] * 2},
        422,
        "non-persistent-tape",
        "non-persistent-twice",
        loc=("body", "compute", 1),
        says="non-persistent",
        extra={"compute_index": 1},
    ),
    document(
        TAPE,
        {**SEED_TAPE, "compute": [{**SEED_TAPE["compute"][0], "output_gradients": 1e300}]},
        422,
        "tape-semantics",
        "output-gradients-overflow-float32",
        loc=("body", "compute", 0, "output_gradients"),
        says="float32",
        extra={"compute_index": 0},
    ),
    document(
        TAPE,
        {**SEED_TAPE, "compute": [{"kind": "jvp", "target": "a", "sources": ["x"], "tangents": [[1e300, 1.0]]}]},
        422,
        "tape-semantics",
        "tangent-overflows-float32",
        loc=("body", "compute", 0, "tangents", 0),
    ),
    document(TAPE, {**SEED_TAPE, "outputs": ["secret"]}, 422, VALIDATION, "unknown-output", loc=("body", "outputs", 0)),
]

# ------------------------------------------------------------------------------------------- activations
GRID = ("body", "grid")
ACTIVATION_CASES = [
    document(ACTIVATIONS, {"grid": {"num": 10**9}}, 422, VALIDATION, "grid-billion-points", loc=(*GRID, "num")),
    document(ACTIVATIONS, {"grid": {"num": 0}}, 422, VALIDATION, "grid-zero-points", loc=(*GRID, "num")),
    document(ACTIVATIONS, {"grid": {"num": -5}}, 422, VALIDATION, "grid-negative-points", loc=(*GRID, "num")),
    document(ACTIVATIONS, {"grid": {"num": True}}, 422, VALIDATION, "grid-boolean-points", loc=(*GRID, "num")),
    document(ACTIVATIONS, {"grid": {"num": 12.5}}, 422, VALIDATION, "grid-fractional-points", loc=(*GRID, "num")),
    document(
        ACTIVATIONS,
        {"grid": {"start": 20}},
        422,
        VALIDATION,
        "grid-start-beyond-default-stop",
        loc=(*GRID, "stop"),
        says="greater than start",
    ),
    document(ACTIVATIONS, {"grid": {"start": 1, "stop": 1}}, 422, VALIDATION, "grid-empty-range", loc=(*GRID, "stop")),
    document(
        ACTIVATIONS, {"grid": {"start": "-Infinity"}}, 422, VALIDATION, "grid-infinite-start", loc=(*GRID, "start")
    ),
    document(
        ACTIVATIONS,
        {"grid": {"start": -1e308, "stop": 1e308}},
        422,
        VALIDATION,
        "grid-overflowing-range",
        loc=(*GRID, "stop"),
        says="overflows",
    ),
    document(ACTIVATIONS, {"grid": {"num": 5, "step": 1}}, 422, VALIDATION, "grid-unknown-field", loc=(*GRID, "step")),
    document(ACTIVATIONS, {"z": [1.0], "grid": {"num": 5}}, 422, VALIDATION, "z-and-grid", loc=("body",)),
    document(
        ACTIVATIONS,
        {"activations": ["relu6"]},
        422,
        VALIDATION,
        "unknown-activation-name",
        loc=("body", "activations", 0),
    ),
    document(
        ACTIVATIONS, {"activations": "relu"}, 422, VALIDATION, "activations-as-string", loc=("body", "activations")
    ),
    document(
        ACTIVATIONS,
        {"activations": ["relu"] * 13},
        422,
        VALIDATION,
        "activations-repeated",
        loc=("body", "activations"),
    ),
    document(ACTIVATIONS, {"z": [0.0, "NaN"]}, 422, VALIDATION, "z-NaN-string", loc=("body", "z", 1)),
    document(
        ACTIVATIONS, {"z": {"shape": [200_000], "b64": ""}}, 422, VALIDATION, "z-wrong-bytes", loc=("body", "z", "b64")
    ),
    document(ACTIVATIONS, {"alpha": "0.1x"}, 422, VALIDATION, "alpha-not-a-number", loc=("body", "alpha")),
]
QUERY = "query"
PLOTS = [
    Hostile(f"plot-{name}", "GET", f"{PLOT}?{query}", 422, VALIDATION, content_type=None, loc=(QUERY, key))
    for name, query, key in [
        ("billion-points", "num=1000000000", "num"),
        ("points-not-a-number", "num=abc", "num"),
        ("start-1e300", "start=1e300", "start"),
        ("start-beyond-default-stop", "start=20", "stop"),
        ("alpha-1e300", "alpha=1e300", "alpha"),
        ("start-NaN", "start=nan", "start"),
        ("activations-repeated", "activations=relu,relu", "activations"),
        ("activations-unknown", "activations=relu,softmaxx", "activations"),
        ("activations-very-long", "activations=" + "relu," * 100, "activations"),
        ("theme-unknown", "theme=sepia", "theme"),
        ("unknown-parameter", "colour=red", "colour"),
    ]
]

# ----------------------------------------------------------------------------------------- gradient check
CHECKS = [
    document(CHECK, {"network": SEED, "tape": SEED_TAPE}, 422, VALIDATION, "network-and-tape", loc=("body",)),
    document(CHECK, {"epsilon": 0.1}, 422, VALIDATION, "neither-network-nor-tape", loc=("body",)),
    document(CHECK, {"network": SEED, "epsilon": 0}, 422, VALIDATION, "epsilon-zero", loc=("body", "epsilon")),
    document(CHECK, {"network": SEED, "epsilon": 2}, 422, VALIDATION, "epsilon-two", loc=("body", "epsilon")),
    document(CHECK, {"network": SEED, "epsilon": "NaN"}, 422, VALIDATION, "epsilon-NaN", loc=("body", "epsilon")),
    document(CHECK, {"network": SEED, "rtol": -1}, 422, VALIDATION, "negative-rtol", loc=("body", "rtol")),
    document(CHECK, {"network": SEED, "dtype": "int32"}, 422, VALIDATION, "integer-dtype", loc=("body", "dtype")),
    document(
        CHECK,
        {"tape": {**SEED_TAPE, "compute": SEED_TAPE["compute"] * 2}},
        422,
        VALIDATION,
        "tape-two-entries",
        loc=("body", "tape", "compute"),
    ),
    document(
        CHECK, {"network": SEED, "sources": ["W9"]}, 422, VALIDATION, "unknown-source", loc=("body", "sources", 0)
    ),
    document(
        CHECK,
        {"network": SEED, "claimed": {"W1": [1.0, 2.0]}},
        422,
        VALIDATION,
        "claim-wrong-shape",
        loc=("body", "claimed", "W1"),
    ),
    document(
        CHECK,
        {"network": seed_with(features=[[76, 120, 37.5], [1]])},
        422,
        VALIDATION,
        "network-ragged-features",
        loc=("body", "network", "features", 1),
    ),
    document(
        CHECK, {"network": {**SEED, "colour": 1}}, 422, VALIDATION, "network-typo", loc=("body", "network", "colour")
    ),
]

CASES = [
    *TOKENS,
    *NOT_OBJECTS,
    *CONTENT_TYPES,
    *VERBS,
    *NOT_FOUND,
    *TENSORS,
    *NETWORK_FIELDS,
    *BOUNDS,
    *NETWORK_TYPES,
    *TAPES,
    *ACTIVATION_CASES,
    *PLOTS,
    *CHECKS,
]


# ---------------------------------------------------------------------------------------------- checks
def seed_closed_form() -> tuple[float, np.ndarray]:
    """The seed's softmax layer by hand: L = −log a₁ and dL/dW = (a − y) ⊗ x_B."""
    x_b = np.array([*SEED_FEATURES, 1.0])
    z = np.asarray(SEED_WEIGHTS) @ x_b
    a = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    y = np.array([0.0, 1.0])
    return float(-np.log(a[1])), np.outer(a - y, x_b)


def assert_seed_answered(client: TestClient) -> None:
    response = client.post(NETWORKS, json=SEED)
    assert response.status_code == 200, response.text
    loss, gradient = seed_closed_form()
    answer = response.json()
    assert answer["loss"]["values"] == pytest.approx(loss, rel=1e-5)
    np.testing.assert_allclose(answer["gradients"][0]["weights"]["values"], gradient, rtol=1e-4, atol=1e-5)


def send(client: TestClient, case: Hostile) -> httpx2.Response:
    headers = {"content-type": case.content_type} if case.content_type is not None else {}
    return client.request(case.method, case.path, content=case.body, headers=headers)


def assert_problem(response: httpx2.Response, case: Hostile) -> dict[str, Any]:
    assert response.status_code == case.status, response.text[:2000]
    assert response.headers["content-type"] == PROBLEM_JSON
    assert b"Traceback" not in response.content and b'File "' not in response.content
    problem: dict[str, Any] = response.json()
    assert problem["type"] == PROBLEMS + case.slug
    assert problem["title"] == TITLES[case.slug]
    assert problem["status"] == case.status
    assert isinstance(problem["detail"], str) and problem["detail"]
    assert "request_id" not in problem  # only a 500 repeats it
    if case.says is not None:
        assert case.says in problem["detail"], problem["detail"]
    if case.loc is not None:
        found = [tuple(item["loc"]) for item in problem.get("errors", [])]
        assert any(loc[: len(case.loc)] == case.loc for loc in found), found
        assert all(isinstance(item["msg"], str) and item["msg"] for item in problem["errors"])
    for key, value in case.extra.items():
        assert problem[key] == value, problem
    return problem


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_gets_its_exact_problem(client: TestClient, case: Hostile) -> None:
    response = send(client, case)
    assert_problem(response, case)
    if case.status == 405:
        assert response.headers["allow"]
    # the answer names what was wrong; it does not echo a megabyte back
    assert len(response.content) < 4096
    assert_seed_answered(client)


def test_the_campaign_is_large_and_names_no_case_twice() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 50
    covered = {case.path.split("?")[0] for case in CASES}
    every_endpoint = {
        NETWORKS,
        TAPE,
        ACTIVATIONS,
        PLOT,
        CHECK,
        "/healthz",
        "/readyz",
        "/v1/info",
        "/v1/ops",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
    }
    assert every_endpoint <= covered


# ------------------------------------------------------------------------- hostile but harmless requests
HARMLESS = [
    ("GET", "/healthz?%ff%fe=%00", {}, JSON),
    ("GET", "/readyz?" + "x=1&" * 1000, {}, JSON),
    ("GET", "/v1/info", {"authorization": "Bearer " + "k" * 10_000}, JSON),
    ("GET", "/v1/ops", {"accept": "text/html;q=0.1, */*;q=abc"}, JSON),
    ("GET", "/v1/activations", {"cookie": "session=" + "c" * 4096}, JSON),
    ("GET", "/metrics", {"accept": "application/openmetrics-text; version=99"}, "application/openmetrics-text"),
    ("GET", "/docs?url=https://evil.example/openapi.json", {}, "text/html"),
    ("GET", "/redoc", {"x-forwarded-host": "evil.example"}, "text/html"),
    ("GET", "/openapi.json", {"x-request-id": "../../etc/passwd;x=<script>"}, JSON),
]


@pytest.mark.parametrize(("method", "path", "headers", "media"), HARMLESS, ids=[h[1][:24] for h in HARMLESS])
def test_hostile_but_harmless_requests_are_served(
    client: TestClient, method: str, path: str, headers: dict[str, str], media: str
) -> None:
    response = client.request(method, path, headers=headers)
    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"].startswith(media)
    assert "evil.example" not in response.text
    # a request id that is not a plain token is replaced, never echoed
    assert response.headers["x-request-id"].isalnum()
    assert_seed_answered(client)


def test_duplicated_keys_take_the_last_value_as_json_parsers_do(client: TestClient) -> None:
    body = orjson.dumps(seed_with(labels=0))[:-1] + b',"labels":1}'
    response = client.post(NETWORKS, content=body, headers={"content-type": JSON})
    assert response.status_code == 200
    loss, _ = seed_closed_form()
    assert response.json()["loss"]["values"] == pytest.approx(loss, rel=1e-5)


def test_integers_beyond_int32_become_int64_as_tf_constant_makes_them(client: TestClient) -> None:
    body = {"program": "y = x + 1\nk = n + 1", "inputs": {"x": {"value": [2**40, -(2**40)]}, "n": {"value": [7]}}}
    response = client.post(TAPE, json=body)
    assert response.status_code == 200, response.text
    values = response.json()["values"]
    assert values["y"]["dtype"] == "int64"
    assert values["y"]["values"] == [2**40 + 1, -(2**40) + 1]  # not wrapped around 2³²
    assert values["k"] == {"shape": [1], "dtype": "int32", "values": [8]}


def test_gradient_check_reads_large_integers_as_int64_too(client: TestClient) -> None:
    # L = Σ w² · n / 2⁴⁰ with n = 2⁴⁰: dL/dw = 2w; an n wrapped to int32 (0) would make it 0
    program = "L = tf.reduce_sum(w * w) * tf.cast(n, tf.float64) / 1099511627776.0"
    tape = {
        "inputs": {"w": {"value": [1.0, -2.0]}, "n": {"value": 2**40}},
        "program": program,
        "watch": ["w"],
        "compute": [{"kind": "gradient", "target": "L", "sources": ["w"]}],
    }
    check = client.post(CHECK, json={"tape": tape})
    assert check.status_code == 200, check.text
    assert check.json()["passed"]
    np.testing.assert_allclose(check.json()["checks"][0]["autodiff"]["values"], [2.0, -4.0])


def network_of(layers: int, samples: int, units: int, include: list[str]) -> dict[str, Any]:
    """`layers` dense layers of `units` units on `samples` samples of the seed's three features."""
    stack = [{"weights": [[0.1] * 4] * units, "activation": "tanh"}]
    stack += [{"weights": [[0.1] * (units + 1)] * units, "activation": "tanh"}] * (layers - 1)
    return {"features": [SEED_FEATURES] * samples, "labels": [0] * samples, "layers": stack, "include": include}


@pytest.mark.parametrize(
    ("layers", "samples", "units", "include", "accepted"),
    [
        (MAX_LAYERS, 1, 4, ["intermediates", "input_gradients"], True),
        (MAX_LAYERS + 1, 1, 4, [], False),
        (MAX_LAYERS_WITH_LOCAL_GRADIENTS, 1, 4, ["local_gradients", "jacobians"], True),
        (MAX_LAYERS_WITH_LOCAL_GRADIENTS + 1, 1, 4, ["local_gradients"], False),
        (MAX_LAYERS_WITH_LOCAL_GRADIENTS + 1, 1, 4, ["jacobians"], False),
        (MAX_LAYERS_WITH_LOCAL_GRADIENTS, MAX_JACOBIAN_ROWS // 4, 4, ["jacobians"], True),
        (1, MAX_JACOBIAN_ROWS // 4 + 1, 4, ["jacobians"], False),
        (MAX_LAYERS_WITH_LOCAL_GRADIENTS + 1, MAX_JACOBIAN_ROWS, 4, ["intermediates"], True),
    ],
)
def test_network_bounds_sit_where_the_schema_says(
    layers: int, samples: int, units: int, include: list[str], accepted: bool
) -> None:
    body = network_of(layers, samples, units, include)
    if accepted:
        NetworkRequest.model_validate(body)
    else:
        with pytest.raises(ValueError, match=r"at most|above the limit"):
            NetworkRequest.model_validate(body)
