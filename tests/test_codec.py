"""The codec against hand-made arrays: every request form in, strict JSON out, every rejection located."""

from __future__ import annotations

import base64
import gc
import math
from typing import Any

import numpy as np
import orjson
import pytest

from service import codec
from service.adapters.networks import ARRAYS as NETWORK_ARRAYS
from service.errors import LimitExceeded, ValidationFailed

LIMIT = 1000


def decode(value: Any, dtype: str | None = None, limit: int = LIMIT) -> np.ndarray:
    return codec.decode(value, ("body", "x"), max_elements=limit, dtype=dtype)


def rejection(value: Any, dtype: str | None = None, limit: int = LIMIT) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        decode(value, dtype, limit)
    return caught.value


def test_number_is_rank_zero() -> None:
    array = decode(2.5, "float32")
    assert array.shape == () and array.dtype == np.float32 and float(array) == 2.5


def test_nested_arrays_keep_shape_and_cast() -> None:
    array = decode([[1, 2], [3, 4]], "float64")
    np.testing.assert_array_equal(array, np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert array.dtype == np.float64


def test_whole_numbers_without_dtype_are_integers() -> None:
    assert decode([0, 1]).dtype == np.int64
    assert decode([0.5, 1]).dtype == np.float64


def test_flat_with_shape_is_row_major() -> None:
    array = decode({"shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}, "float32")
    np.testing.assert_array_equal(array, np.arange(1, 7, dtype=np.float32).reshape(2, 3))


def test_flat_declared_dtype_is_kept_without_field_dtype() -> None:
    assert decode({"shape": [2], "data": [1, 2], "dtype": "int32"}).dtype == np.int32


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_base64_round_trip(dtype: str) -> None:
    original = (np.arange(12).reshape(3, 4) - 5).astype(dtype)
    payload = {
        "shape": [3, 4],
        "dtype": dtype,
        "b64": base64.b64encode(original.astype(original.dtype.newbyteorder("<")).tobytes()).decode(),
    }
    decoded = decode(payload)
    np.testing.assert_array_equal(decoded, original)
    assert decoded.dtype == original.dtype
    encoded = codec.encode(original, "b64")
    assert encoded["shape"] == [3, 4] and encoded["dtype"] == dtype
    np.testing.assert_array_equal(decode({k: encoded[k] for k in ("shape", "dtype", "b64")}), original)


def test_base64_defaults_to_the_field_dtype() -> None:
    raw = np.array([1.5, -2.0], dtype="<f4").tobytes()
    np.testing.assert_array_equal(decode({"shape": [2], "b64": base64.b64encode(raw).decode()}, "float32"), [1.5, -2.0])


@pytest.mark.parametrize(
    ("value", "loc", "words"),
    [
        ([[1, 2], [3]], ["body", "x", 1], "ragged"),
        ([[1, 2], 3], ["body", "x", 1], "ragged"),
        ([1, True], ["body", "x", 1], "boolean"),
        ([[1.5, 2], [False, 1]], ["body", "x", 1, 0], "boolean"),
        ([1, "2"], ["body", "x", 1], "string"),
        ([1, None], ["body", "x", 1], "null"),
        ([1, "NaN"], ["body", "x", 1], "non-finite"),
        ([1, "Infinity"], ["body", "x", 1], "non-finite"),
        ([1, {"a": 1}], ["body", "x", 1], "object"),
        ([1, 2**70], ["body", "x", 1], "64-bit"),
        (True, ["body", "x"], "boolean"),
        ("1.0", ["body", "x"], "string"),
        (None, ["body", "x"], "null"),
    ],
)
def test_bad_nested_values_are_located(value: Any, loc: list[Any], words: str) -> None:
    error = rejection(value, "float32")
    assert error.status == 422
    assert error.errors is not None and error.errors[0]["loc"] == loc
    assert words in error.errors[0]["msg"]


def test_rank_above_eight_is_rejected_before_numpy() -> None:
    deep: Any = [1.0]
    for _ in range(9):
        deep = [deep]
    assert "rank" in rejection(deep).detail


def test_element_limit_counts_declared_shapes() -> None:
    error = rejection({"shape": [100000, 100000], "b64": ""}, "float32")
    assert isinstance(error, LimitExceeded)
    assert "10,000,000,000" in error.detail and "1,000" in error.detail


def test_element_limit_on_nested_arrays() -> None:
    assert isinstance(rejection([[0.0] * 40] * 40), LimitExceeded)


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"shape": [2, 2], "data": [1, 2, 3]}, "data", "3 values"),
        ({"shape": [2], "data": [[1], [2]]}, "data", "flat"),
        ({"shape": [2], "b64": "!!!"}, "b64", "base64"),
        ({"shape": [2], "b64": "AAAAAAAAAAA=="}, "b64", "base64"),  # padding beyond the last quantum
        ({"shape": [2], "b64": "AAAA AAAAAA="}, "b64", "base64"),  # whitespace is not in the alphabet
        ({"shape": [2], "b64": "AAAAAAAAAAA"}, "b64", "base64"),  # a quantum short of its padding
        ({"shape": [2], "b64": base64.b64encode(b"\0" * 7).decode()}, "b64", "7 bytes"),
        ({"shape": [2], "data": [1, 2], "dtype": "complex64"}, "dtype", "dtype"),
        ({"shape": [-1], "data": []}, "shape", "negative"),
        ({"shape": [2.5], "data": [1, 2]}, "shape", "integers"),
        ({"shape": [1], "data": [1], "extra": 1}, "extra", "unknown"),
    ],
)
def test_bad_tensor_objects_name_the_field(value: Any, field: str, words: str) -> None:
    error = rejection(value, "float32")
    assert error.errors is not None and error.errors[0]["loc"][:3] == ["body", "x", field]
    assert words in error.errors[0]["msg"]


def test_missing_data_and_b64() -> None:
    assert "exactly one of data or b64" in rejection({"shape": [1]}).detail


def test_non_finite_base64_is_rejected() -> None:
    raw = np.array([1.0, math.nan], dtype="<f8").tobytes()
    assert "non-finite" in rejection({"shape": [2], "dtype": "float64", "b64": base64.b64encode(raw).decode()}).detail


def test_int_field_refuses_fractions_and_overflow() -> None:
    assert "whole numbers" in rejection([0.5], "int32").detail
    assert "range" in rejection([2**40], "int32").detail


def test_float32_overflow_is_rejected() -> None:
    assert "float32" in rejection([1e300], "float32").detail


def test_strict_json_parsing() -> None:
    for text in (b"NaN", b"[Infinity]", b"[-Infinity]", b"[1e400]", b"{'a': 1}"):
        with pytest.raises(orjson.JSONDecodeError):
            codec.parse(text)


def test_encode_writes_non_finite_as_strings() -> None:
    array = np.array([1.0, math.inf, -math.inf, math.nan], dtype=np.float32)
    rendered = orjson.loads(codec.render(codec.encode(array)))
    assert rendered == {"shape": [4], "dtype": "float32", "values": [1.0, "Infinity", "-Infinity", "NaN"]}


def test_encode_scalar_is_a_bare_number() -> None:
    rendered = orjson.loads(codec.render(codec.encode(np.float32(0.25))))
    assert rendered == {"shape": [], "dtype": "float32", "values": 0.25}


def test_float32_values_render_in_shortest_form() -> None:
    rendered = codec.render(codec.encode(np.array([0.31, 0.69], dtype=np.float32)))
    assert b"[0.31,0.69]" in rendered


def test_boolean_scan_is_skipped_only_for_bodies_without_boolean_literals() -> None:
    # a body with a `true` literal keeps the scan on, so a boolean among numbers is still located
    parsed = codec.parse(b'{"x": [1.0, true], "flag": true}')
    error = rejection(parsed["x"], "float32")
    assert error.errors is not None and error.errors[0]["loc"] == ["body", "x", 1]
    try:
        parsed = codec.parse(b'{"x": [1.0, 2.5]}')
        assert codec.may_hold_booleans() is False
        np.testing.assert_array_equal(decode(parsed["x"], "float32"), [1.0, 2.5])
    finally:
        codec.body_may_hold_booleans.set(True)  # parse() sets it for the whole context, as a request's task would


def test_the_body_is_searched_for_boolean_literals_only_when_a_nested_tensor_asks() -> None:
    body = b'{"x": {"shape": [2], "dtype": "float32", "b64": "AACAPwAAAEA="}, "flag": true}'
    try:
        parsed = codec.parse(body)
        assert codec.body_may_hold_booleans.get() is body  # not searched yet
        np.testing.assert_array_equal(decode(parsed["x"], "float32"), [1.0, 2.0])
        assert codec.body_may_hold_booleans.get() is body  # a b64 tensor does not ask
        assert codec.may_hold_booleans() is True
        assert codec.body_may_hold_booleans.get() is True  # the answer is kept for the rest of the request
    finally:
        codec.body_may_hold_booleans.set(True)


def test_a_large_body_parses_with_the_collector_paused_and_restored() -> None:
    body = orjson.dumps({"features": [[float(i), 1.5, -2.0] for i in range(20_000)]})
    assert len(body) > 64 * 1024
    assert gc.isenabled()
    assert codec.parse(body)["features"][19_999] == [19_999.0, 1.5, -2.0]
    assert gc.isenabled()
    gc.disable()
    try:
        codec.parse(body)
        assert not gc.isenabled()  # a collector the caller paused stays paused
    finally:
        gc.enable()


# ------------------------------------------------------------------ large bodies read straight into numpy

ARRAYS = NETWORK_ARRAYS
ROWS = 4_000  # enough rows for a body past the 64 KiB from which `parse` reads arrays directly


def large(**fields: Any) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    document: dict[str, Any] = {
        "features": (rng.normal(size=(ROWS, 3)) * [8.0, 15.0, 0.5] + [76.0, 120.0, 37.5]).tolist(),
        "labels": rng.integers(0, 2, size=ROWS).tolist(),
        "layers": [{"weights": [[0.01, -0.02, 0.03, 0.01], [-0.01, 0.02, -0.015, 0.02]], "activation": "softmax"}],
    }
    document.update(fields)
    return document


def parse_both(body: bytes) -> tuple[Any, Any]:
    try:
        return codec.parse(body, ARRAYS), codec.parse(body)
    finally:
        codec.body_may_hold_booleans.set(True)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"features": [[76, 120, 37], [80, 130, 38]] * ROWS},  # whole numbers: int64, as numpy reads them
        {"features": [[76, 120.5, 37], [80, 130, 38.25]] * ROWS},  # a mix: float64
        {"features": list(range(30_000))},  # rank 1
        {"labels": None, "targets": np.eye(2)[np.arange(ROWS) % 2].tolist()},
        {"features": [[1.5, -2.0, 9007199254740991.0]] * ROWS},  # the largest whole float64 still exact
        {"note": "no brackets here", "loss": "cross_entropy", "include": ["input_gradients"]},
    ],
)
def test_large_arrays_come_as_the_arrays_decode_would_make(fields: dict[str, Any]) -> None:
    body = orjson.dumps(large(**fields))
    assert len(body) > 64 * 1024
    direct, plain = parse_both(body)
    assert direct.keys() == plain.keys()
    for key, value in plain.items():
        if key in ARRAYS and isinstance(value, list):
            assert isinstance(direct[key], np.ndarray)
            expected = decode(value, limit=10**6)
            got = decode(direct[key], limit=10**6)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)
        else:
            assert direct[key] == value


def test_small_bodies_and_other_fields_stay_json() -> None:
    small = codec.parse(orjson.dumps({"features": [[1.0, 2.0, 3.0]], "labels": [1]}), ARRAYS)
    assert small == {"features": [[1.0, 2.0, 3.0]], "labels": [1]}
    direct, _ = parse_both(orjson.dumps(large(weights=[[1.0, 2.0]] * ROWS)))
    assert isinstance(direct["weights"], list)  # not named in `arrays`


def _tampered(replace: bytes, by: bytes, **fields: Any) -> bytes:
    body = orjson.dumps(large(**fields))
    assert replace in body
    return body.replace(replace, by, 1)


FEATURES = [[76.5, 120.5, 37.5]] * ROWS


@pytest.mark.parametrize(
    "body",
    [
        # ragged rows whose lengths make up the total: 2 + 4 = 3 + 3
        _tampered(b"[76.5,120.5,37.5],[76.5,120.5,37.5]", b"[76.5,120.5],[76.5,120.5,37.5,1.0]", features=FEATURES),
        _tampered(b"[76.5,120.5,37.5]", b"[76.5,[120.5],37.5]", features=FEATURES),  # one level deeper
        # one level deeper, with an escaped "[" in a string to make up the count of brackets
        _tampered(b"[76.5,120.5,37.5]", b"[76.5,[120.5],37.5]", features=FEATURES, note="\\u005b").replace(
            b'"\\\\u005b"', b'"\\u005b"'
        ),
        _tampered(b"[76.5,120.5,37.5]", b"76.5", features=FEATURES),  # a number among the rows
        _tampered(b"[76.5,120.5,37.5]", b"[76.5,true,37.5]", features=FEATURES),
        _tampered(b"[76.5,120.5,37.5]", b"[76.5,null,37.5]", features=FEATURES),
        _tampered(b"[76.5,120.5,37.5]", b'[76.5,"1",37.5]', features=FEATURES),
        _tampered(b"[76.5,120.5,37.5]", b'[76.5,{"a":1},37.5]', features=FEATURES),
        _tampered(b"[76.5,120.5,37.5]", b"[76.5,9007199254740993,37.5]", features=FEATURES),  # rounds on the way
        _tampered(b"[76.5,120.5,37.5]", b"[76.5,18446744073709551615,37.5]", features=FEATURES),  # past int64
        _tampered(b'"labels":[', b'"labels":[0.0,', labels=[1] * (ROWS - 1)),  # a float among class indices
        _tampered(b'"labels":[', b'"features":[[1.0]],"labels":[', features=FEATURES),  # a repeated key
        orjson.dumps(large(loss="[x")),  # a bracket in a string
        orjson.dumps(large(**{"a[b": 1})),  # a bracket in a key
        orjson.dumps([large()]),  # not an object at the top
        orjson.dumps(large(features={"shape": [ROWS, 3], "data": [76.5, 120.5, 37.5] * ROWS})),  # a tensor object
    ],
)
def test_anything_the_direct_read_might_get_wrong_takes_the_plain_parse(body: bytes) -> None:
    assert len(body) > 64 * 1024
    direct, plain = parse_both(body)
    assert direct == plain  # nested lists (or the plain parse's values) throughout, not arrays


def test_deep_nesting_beside_large_arrays_is_counted_without_recursion() -> None:
    body = orjson.dumps(large(layers=None)).replace(b'"layers":null', b'"layers":' + b"[" * 1000 + b"]" * 1000)
    direct = codec.parse(body, ARRAYS)
    assert isinstance(direct["features"], np.ndarray)
    levels, node = 1, direct["layers"]
    while node:
        levels, node = levels + 1, node[0]
    assert levels == 1000


def test_json_the_direct_read_refuses_gets_the_plain_parse_error() -> None:
    body = _tampered(b"76.5", b"1e400", features=FEATURES)
    with pytest.raises(orjson.JSONDecodeError):
        codec.parse(body, ARRAYS)


def test_boolean_flag_comes_from_the_fields_that_stay_json() -> None:
    try:
        codec.parse(orjson.dumps(large(flag=True)), ARRAYS)
        assert codec.may_hold_booleans() is True
        codec.parse(orjson.dumps(large()), ARRAYS)
        assert codec.may_hold_booleans() is False
    finally:
        codec.body_may_hold_booleans.set(True)


def test_the_parser_is_reused_and_replaced_if_a_document_outlives_a_parse() -> None:
    body = orjson.dumps(large())
    codec.parse(body, ARRAYS)
    kept = codec._simdjson_parse(body)  # a document someone holds on to
    direct = codec.parse(body, ARRAYS)
    assert isinstance(direct["features"], np.ndarray) and len(kept["features"]) == ROWS


def test_a_body_past_the_kept_size_gets_a_parser_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    body = orjson.dumps(large())
    codec.parse(body, ARRAYS)
    kept = codec._parsers.parser
    monkeypatch.setattr(codec, "_KEPT_PARSER_BYTES", len(body) - 1)
    direct, plain = parse_both(body)
    np.testing.assert_array_equal(direct["features"], plain["features"])
    assert codec._parsers.parser is kept  # the huge body's buffers went with its own parser


def test_a_list_field_past_its_most_rows_takes_the_plain_parse() -> None:
    body = orjson.dumps(large())
    for most, direct in ((ROWS, True), (ROWS - 1, False)):
        arrays = {**ARRAYS, "features": codec.ArrayField("if", tensor=False, max_rows=most)}
        parsed = codec.parse(body, arrays)
        assert isinstance(parsed["features"], np.ndarray) is direct
        np.testing.assert_array_equal(np.asarray(parsed["features"]), np.asarray(large()["features"]))


def test_a_large_body_carrying_base64_is_read_by_the_plain_parse_alone() -> None:
    direct, plain = parse_both(orjson.dumps(large(note="b64")))
    assert isinstance(direct["features"], list) and direct == plain


def test_a_large_body_is_read_directly_exactly_when_it_does_not_hold_the_base64_key() -> None:
    # strings of quotes, backslashes and the key's letters, as values and as keys; the last ones hold so many
    # quotes that the body is searched byte by byte, the others through its few quotes
    rng = np.random.default_rng(11)
    texts = ["".join(rng.choice(list('b64"\\ x'), size=rng.integers(0, 9))) for _ in range(150)]
    texts += ['"' * 20_000, '"' * 20_000 + "b64", "b64" + '"' * 20_000]
    for text in texts:
        for document in (large(note=text), {text: 1, **large()}):
            body = orjson.dumps(document)
            direct, plain = parse_both(body)
            assert isinstance(direct["features"], np.ndarray) is (b'"b64"' not in body), body[-80:]
            lists = {key: np.asarray(value).tolist() if key in ARRAYS else value for key, value in direct.items()}
            assert lists == plain


def test_the_base64_key_is_found_where_it_crosses_the_end_of_the_bodys_head() -> None:
    for start in range(4088, 4097):  # the key's first byte; the head is the first 4096 bytes
        body = orjson.dumps({"pad": "x" * (start - len('{"pad":"",')), "b64": 1, **large()})
        assert body.index(b'"b64"') == start
        direct, plain = parse_both(body)
        assert isinstance(direct["features"], list) and direct == plain
