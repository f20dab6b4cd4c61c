"""JSON tensors <-> numpy arrays (API.md §1). Strict on the way in, strict JSON on the way out.

In: a number, rectangular nested arrays, `{"shape", "data", "dtype"?}` or `{"shape", "dtype"?, "b64"}`.
Every rejection is a `ValidationFailed` carrying the JSON location of the offending value, down to
the index inside nested data. Out: `{"shape", "dtype", "values"}` (non-finite values as the strings
"NaN", "Infinity", "-Infinity") or `{"shape", "dtype", "b64"}`.
"""

from __future__ import annotations

import binascii
import contextvars
import gc
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64
import simdjson

from schemas.tensors import MAX_RANK, declared_shape
from service import vocabulary
from service.errors import LimitExceeded, Loc, ValidationFailed

DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name) for name in vocabulary.DTYPES}
FLOAT_DTYPES = vocabulary.FLOAT_DTYPES
_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}  # dtype.name is slow to compute per call
_FLOAT32 = DTYPES["float32"]
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SMALL = 64
"""Tensors up to this many elements are checked in plain Python, which is faster than numpy's calls there."""
_INT32 = np.iinfo(np.int32)
Encoding = vocabulary.EncodingName
_OBJECT_KEYS = frozenset({"shape", "data", "dtype", "b64"})
body_may_hold_booleans: contextvars.ContextVar[bool | bytes] = contextvars.ContextVar(
    "body_may_hold_booleans", default=True
)
"""Whether this request's body may hold a `true`/`false` literal (True when unknown), or the body itself, to
be searched for them when `may_hold_booleans` first asks; read through that function."""
_GC_PAUSE_BYTES = 64 * 1024
"""Bodies from this size on are parsed with the cyclic garbage collector paused (see `parse`)."""
_DIRECT_BYTES = 64 * 1024
"""Bodies from this size on may have their large numeric arrays read straight into numpy (see `parse`)."""
_EXACT_INTEGERS = float(2**53)
_OPEN_BRACKET = ord("[")
_BASE64_KEY = b'"b64"'
_QUOTE = ord('"')
_HEAD_BYTES = 4096
_FEW_QUOTES = 1 / 64
"""A body with at most this share of `"` bytes is searched for `_BASE64_KEY` through its quotes (see
`_holds_base64_key`)."""
_parsers = threading.local()
_KEPT_PARSER_BYTES = 8 * 1024 * 1024
_NON_FINITE_WORDS = {"nan", "infinity", "-infinity", "inf", "-inf", "+inf", "+infinity"}


def _reject(loc: Loc, msg: str) -> ValidationFailed:
    return ValidationFailed.at(tuple(loc), msg)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, str):
        if value.strip().lower() in _NON_FINITE_WORDS:
            return f"the string {value!r} (non-finite numbers are not accepted)"
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _check_size(shape: Sequence[int], loc: Loc, max_elements: int) -> None:
    if len(shape) > MAX_RANK:
        raise _reject(loc, f"rank {len(shape)} is above the maximum rank {MAX_RANK}")
    count = math.prod(shape)
    if count > max_elements:
        raise LimitExceeded.at(
            tuple(loc),
            f"{count:,} elements (shape {list(shape)}) exceed the limit of {max_elements:,} (TAPESERVE_MAX_ELEMENTS)",
        )


def _leading_shape(value: list[Any], loc: Loc, max_elements: int) -> list[int]:
    """Shape read off the first element at each depth; bounds rank and size before numpy allocates."""
    declared = declared_shape(value)
    if declared is None:
        raise _reject(loc, f"nesting deeper than the maximum rank {MAX_RANK}")
    _check_size(declared, loc, max_elements)
    return list(declared)


def _find_defect(value: Any, shape: Sequence[int], loc: list[str | int]) -> ValidationFailed | None:
    """The first element that keeps `value` from being a rectangular numeric array of `shape`."""
    if not shape:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _reject(loc, f"expected a number, got {_describe(value)}")
        if isinstance(value, int) and abs(value) > 2**63 - 1:
            return _reject(loc, "integer is out of the 64-bit range")
        return None
    if not isinstance(value, list):
        return _reject(loc, f"ragged array: expected an array of {shape[0]} elements, got {_describe(value)}")
    if len(value) != shape[0]:
        return _reject(loc, f"ragged array: expected {shape[0]} elements like its first sibling, got {len(value)}")
    for index, item in enumerate(value):
        defect = _find_defect(item, shape[1:], [*loc, index])
        if defect is not None:
            return defect
    return None


def may_hold_booleans() -> bool:
    """False once the raw request body is known to hold no `true`/`false` literal, so no tensor can hold a
    boolean and the element-by-element boolean scan (numpy silently reads True as 1.0) can be skipped. The
    body is searched the first time this asks, not when it is parsed, as a body of base64 tensors has no
    nested tensor to ask for and would otherwise be searched through all its megabytes for nothing."""
    known = body_may_hold_booleans.get()
    if isinstance(known, bool):
        return known
    found = b"true" in known or b"false" in known
    body_may_hold_booleans.set(found)
    return found


def _has_bool(value: list[Any], depth: int) -> bool:
    if depth == 1:
        return any(type(item) is bool for item in value)
    return any(_has_bool(item, depth - 1) for item in value)


def _from_nested(value: list[Any], loc: Loc, max_elements: int) -> np.ndarray:
    shape = _leading_shape(value, loc, max_elements)
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        array = None
    suspect = array is None or array.dtype.kind not in "iuf" or array.shape != tuple(shape)
    if array is None or suspect or (may_hold_booleans() and _has_bool(value, len(shape))):
        defect = _find_defect(value, shape, list(loc))
        raise defect if defect is not None else _reject(loc, "not a rectangular array of numbers")
    if array.dtype.kind == "u":
        array = array.astype(np.float64)
    return array


def _from_decoded(array: np.ndarray, loc: Loc, max_elements: int) -> np.ndarray:
    """An array `parse` read straight from the body: numeric and rectangular already, as `_from_nested`
    would have made it; only the size limit is left to check."""
    _check_size(array.shape, loc, max_elements)
    return array


def _parse_shape(raw: Any, loc: Loc, max_elements: int) -> tuple[int, ...]:
    if not isinstance(raw, list) or any(isinstance(d, bool) or not isinstance(d, int) for d in raw):
        raise _reject([*loc, "shape"], "shape must be an array of non-negative integers")
    if any(d < 0 for d in raw):
        raise _reject([*loc, "shape"], "shape must not contain negative sizes")
    _check_size(raw, [*loc, "shape"], max_elements)
    return tuple(raw)


def _parse_dtype(raw: Any, loc: Loc) -> np.dtype[Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or raw not in DTYPES:
        raise _reject([*loc, "dtype"], f"dtype must be one of {', '.join(DTYPES)}, got {raw!r}")
    return DTYPES[raw]


def _from_object(value: dict[str, Any], loc: Loc, max_elements: int, default: np.dtype[Any]) -> np.ndarray:
    unknown = sorted(set(value) - _OBJECT_KEYS)
    if unknown:
        raise _reject([*loc, unknown[0]], f"unknown tensor field {unknown[0]!r} (expected shape, data|b64, dtype)")
    if "shape" not in value:
        raise _reject([*loc, "shape"], "a tensor object needs a shape")
    shape = _parse_shape(value["shape"], loc, max_elements)
    declared = _parse_dtype(value.get("dtype"), loc)
    count = math.prod(shape)
    if ("data" in value) == ("b64" in value):
        raise _reject(loc, "a tensor object needs exactly one of data or b64")
    if "b64" in value:
        dtype = declared or default
        raw = value["b64"]
        if not isinstance(raw, str):
            raise _reject([*loc, "b64"], "b64 must be a base64 string")
        try:
            # SIMD, validating the alphabet and padding (README, Performance: against binascii)
            buffer = pybase64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise _reject([*loc, "b64"], "not valid base64") from None
        if len(buffer) != count * dtype.itemsize:
            raise _reject(
                [*loc, "b64"],
                f"{len(buffer)} bytes do not match shape {list(shape)} of {dtype.name} "
                f"({count * dtype.itemsize} bytes expected)",
            )
        array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise _reject([*loc, "b64"], f"non-finite value at index {list(index)}; inputs must be finite")
        return array
    data = value["data"]
    if not isinstance(data, list):
        raise _reject([*loc, "data"], f"data must be a flat array of numbers, got {_describe(data)}")
    if len(data) != count:
        raise _reject([*loc, "data"], f"{len(data)} values do not match shape {list(shape)} ({count} expected)")
    flat = _from_nested(data, [*loc, "data"], max_elements) if data else np.zeros(0)
    if flat.ndim != 1:
        raise _reject([*loc, "data"], "data must be flat (row-major); put the dimensions in shape")
    array = flat.reshape(shape)
    return _cast(array, declared, loc) if declared is not None else array


def _largest_magnitude(array: np.ndarray) -> float:
    if array.size <= _SMALL:  # a seed-sized tensor: Python's max beats numpy's two calls and a temporary
        return float(max(map(abs, array.ravel().tolist())))
    return float(np.abs(array).max())


def _cast(array: np.ndarray, dtype: np.dtype[Any], loc: Loc) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if dtype.kind == "i":
        if array.dtype.kind == "f" and not np.array_equal(array, np.trunc(array)):
            raise _reject(loc, f"{dtype.name} values must be whole numbers")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise _reject(loc, f"values out of the {dtype.name} range")
    elif dtype == _FLOAT32 and array.size and _largest_magnitude(array) > _FLOAT32_MAX:
        raise _reject(loc, "values overflow float32; send dtype float64")
    return array.astype(dtype)


def cast(array: np.ndarray, dtype: str, loc: Loc) -> np.ndarray:
    """`array` as `dtype`, a 422 at `loc` when its values do not fit (never a silent wrap or overflow)."""
    return _cast(array, DTYPES[dtype], loc)


def constant_dtype(array: np.ndarray, float_dtype: str) -> str:
    """The dtype tf.constant gives these values when none is named: int32 for whole numbers (int64 when they
    do not fit, as TensorFlow has it), else `float_dtype`."""
    if array.dtype.kind != "i":
        return float_dtype
    fits = array.size == 0 or (array.min() >= _INT32.min and array.max() <= _INT32.max)
    return "int32" if fits else "int64"


def decode(value: Any, loc: Loc, *, max_elements: int, dtype: str | None = None) -> np.ndarray:
    """A request tensor as a numpy array.

    `dtype` is the dtype the field wants (the result is cast to it, range-checked). Without it the
    result keeps a dtype declared in the object forms, else float64 for numbers with a fraction or
    exponent and int64 for whole-number data.
    """
    wanted = DTYPES[dtype] if dtype is not None else None
    if isinstance(value, bool) or value is None or isinstance(value, str):
        raise _reject(loc, f"expected a tensor (number, nested arrays or tensor object), got {_describe(value)}")
    if isinstance(value, int | float):
        defect = _find_defect(value, (), list(loc))
        if defect is not None:
            raise defect
        array = np.asarray(value)
    elif isinstance(value, list):
        array = _from_nested(value, loc, max_elements)
    elif isinstance(value, np.ndarray):
        array = _from_decoded(value, loc, max_elements)
    elif isinstance(value, dict):
        array = _from_object(value, loc, max_elements, wanted or DTYPES["float64"])
    else:
        raise _reject(loc, f"expected a tensor, got {_describe(value)}")
    return _cast(array, wanted, loc) if wanted is not None else array


# ---------------------------------------------------------------------------------------------- out


def _nested_values(array: np.ndarray, finite: bool) -> Any:
    if array.dtype.kind == "f" and not finite and not np.isfinite(array).all():
        cells = array.astype(object)
        cells[np.isnan(array)] = "NaN"
        cells[np.isposinf(array)] = "Infinity"
        cells[np.isneginf(array)] = "-Infinity"
        return cells.tolist()
    if array.ndim == 0:
        return array[()]  # a numpy scalar, so float32 keeps its shortest form too
    # orjson writes numpy arrays natively (float32 in its shortest round-trip form)
    return np.ascontiguousarray(array)


def plain_values(array: np.ndarray | np.generic) -> Any:
    """A numpy array as bare JSON values (a number, or nested arrays; non-finite values as "NaN",
    "Infinity", "-Infinity"), as TF Serving's answers carry them; `render` writes it."""
    return _nested_values(np.asarray(array), finite=False)


def encode(array: np.ndarray | np.generic, encoding: Encoding = "nested", *, finite: bool = False) -> dict[str, Any]:
    """A numpy array as a response tensor; `finite` says the caller knows it holds no NaN or infinity."""
    array = np.asarray(array)
    head: dict[str, Any] = {"shape": list(array.shape), "dtype": _DTYPE_NAMES.get(array.dtype) or array.dtype.name}
    if encoding == "b64":
        little_endian = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        head["b64"] = pybase64.b64encode_as_string(little_endian.tobytes())
    else:
        head["values"] = _nested_values(array, finite)
    return head


def render(document: Any) -> bytes:
    """Serialise a response document (numpy arrays allowed inside) as strict JSON."""
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(frozen=True)
class ArrayField:
    """A top-level body field that `parse` may read straight into numpy: a rectangular array of numbers of
    one of `ranks` and numpy `kinds` ("i" int64 for whole numbers only, "if" float64 too). `tensor` says
    whether the model declares it a tensor (its stand-in is then a shape-only tensor object) or a list
    (an empty list stands in); see `set_aside`. `max_rows` is the most entries the model takes in such a
    list: an array with more is left to the plain parse, so that the model's own error answers it."""

    kinds: str
    ranks: tuple[int, ...] = (1, 2)
    tensor: bool = True
    max_rows: int | None = None

    def takes(self, array: np.ndarray) -> bool:
        fits = self.max_rows is None or array.shape[0] <= self.max_rows
        return fits and array.dtype.kind in self.kinds and array.ndim in self.ranks


def set_aside(document: Any, arrays: Mapping[str, ArrayField]) -> dict[str, np.ndarray]:
    """Take the arrays `parse` read straight into numpy out of `document`, leaving each field a JSON stand-in
    that validates as the array would have (a tensor object of its shape, read by
    `schemas.tensors.declared_shape`, or an empty list); returns the arrays by field name."""
    decoded: dict[str, np.ndarray] = {}
    if not isinstance(document, dict):
        return decoded
    for key, spec in arrays.items():
        value = document.get(key)
        if isinstance(value, np.ndarray):
            decoded[key] = value
            document[key] = {"shape": list(value.shape)} if spec.tensor else []
    return decoded


def parse(body: bytes, arrays: Mapping[str, ArrayField] | None = None) -> Any:
    """Strict JSON: NaN, Infinity and numbers that overflow to infinity are rejected.

    A field of `arrays`, when its value is a rectangular array of numbers that field takes, in a body of
    64 KiB or more, comes back as the numpy array `decode` would make of it instead of nested lists (see
    the README's Performance section for what that saves). Anything else in such a field, and every other
    field, is what the plain parse gives.

    Also notes, for this request's context, whether the body could hold a boolean at all.
    """
    # a body carrying base64 tensors is mostly one long string, which orjson alone reads faster
    if arrays and len(body) >= _DIRECT_BYTES and not _holds_base64_key(body):
        document = _parse_direct(body, arrays)
        if document is not None:
            return document
    body_may_hold_booleans.set(body)  # searched only when a nested tensor is decoded (a b64 body has none)
    if len(body) < _GC_PAUSE_BYTES:
        return orjson.loads(body)
    # a large body becomes hundreds of thousands of lists, and the cyclic collector would walk the growing
    # heap of them again and again while they are made: half the parse time. Parsed JSON holds no cycles,
    # so pausing the collector misses nothing.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return orjson.loads(body)
    finally:
        if enabled:
            gc.enable()


def _holds_base64_key(body: bytes) -> bool:
    """`_BASE64_KEY in body`. The byte search looks at the first `_HEAD_BYTES` (where a base64 tensor's key
    usually is); past them the answer comes from the positions of the body's quotes when they are few, as
    in a large body of numbers, where that is several times faster than the byte search. `"b64"` is in the
    body exactly where two consecutive quotes are four bytes apart with `b64` between them."""
    if body.find(_BASE64_KEY, 0, _HEAD_BYTES) >= 0:
        return True
    raw = np.frombuffer(body, dtype=np.uint8)
    is_quote = raw == _QUOTE
    if np.count_nonzero(is_quote) > len(body) * _FEW_QUOTES:  # so many positions would cost more than they save
        return _BASE64_KEY in body
    quotes = np.flatnonzero(is_quote)
    opening = quotes[:-1][np.diff(quotes) == len(_BASE64_KEY) - 1]
    key = [raw[opening + offset] == byte for offset, byte in enumerate(_BASE64_KEY[1:-1], start=1)]
    return bool(np.logical_and.reduce(key).any())


def _parse_direct(body: bytes, arrays: Mapping[str, ArrayField]) -> dict[str, Any] | None:
    """`parse` with the `arrays` fields read by simdjson straight into numpy; None wherever the result
    could differ from the plain parse's (the plain parse then runs, and gives its own answer or error).

    simdjson flattens any nesting into its buffer, so the shape is checked apart: every row as long as
    the first, and exactly one `[` in the body per array the document is known to hold. That count
    also rules out deeper nesting; it is exact because no string anywhere may contain a `[`.
    """
    try:
        root = _simdjson_parse(body)
    except (ValueError, RuntimeError):  # not JSON, or a number simdjson does not take: orjson says why
        return None
    if not isinstance(root, simdjson.Object):
        return None
    keys = list(root.keys())
    if len(set(keys)) != len(keys):  # repeated keys: the plain parse keeps the last, simdjson the first
        return None
    document: dict[str, Any] = {}
    brackets = 0
    booleans = False
    for key in keys:
        if "[" in key:
            return None
        value = root[key]
        if key in arrays and isinstance(value, simdjson.Object):
            return None  # a tensor object (base64 or flat data): orjson reads its one long string faster
        if key in arrays and isinstance(value, simdjson.Array):
            decoded = _direct_array(value)
            if decoded is None or not arrays[key].takes(decoded[0]):
                return None
            document[key], opened = decoded
            brackets += opened
        elif isinstance(value, simdjson.Array | simdjson.Object):
            mini: str | bytes = value.mini  # bytes, though the stubs say str
            text = mini.encode() if isinstance(mini, str) else mini
            plain = orjson.loads(text)
            opened = _count_lists(plain)
            if text.count(b"[") != opened:  # a "[" inside a string
                return None
            brackets += opened
            booleans = booleans or b"true" in text or b"false" in text
            document[key] = plain
        else:
            if isinstance(value, str) and "[" in value:
                return None
            booleans = booleans or isinstance(value, bool)
            document[key] = value
    # counted by numpy, which is faster than bytes.count on large bodies
    if np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == _OPEN_BRACKET) != brackets:
        return None
    body_may_hold_booleans.set(booleans)
    return document


def _simdjson_parse(body: bytes) -> Any:
    """`body` parsed by this thread's parser. Reusing one keeps its buffers (and their pages) from one large
    body to the next (README, Performance). Nothing `_parse_direct` returns refers to
    the parser, so it is free again once that returns; should something still hold on to the last
    document, a new parser takes over. Bodies past 8 MiB get a parser of their own, so that one huge
    body's buffers do not stay."""
    if len(body) > _KEPT_PARSER_BYTES:
        return simdjson.Parser().parse(body)
    parser: simdjson.Parser | None = getattr(_parsers, "parser", None)
    if parser is not None:
        try:
            return parser.parse(body)
        except RuntimeError as error:
            if "re-use" not in str(error):
                raise
    _parsers.parser = simdjson.Parser()
    return _parsers.parser.parse(body)


def _count_lists(value: Any) -> int:
    """The JSON arrays in a parsed value, however deep (orjson and simdjson take 1,024 levels, more than
    Python's recursion would)."""
    count = 0
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, list):
            count += 1
            pending.extend(node)
        elif isinstance(node, dict):
            pending.extend(node.values())
    return count


def _direct_array(value: simdjson.Array) -> tuple[np.ndarray, int] | None:
    """A rank-1 or rank-2 array of numbers as numpy, with the number of JSON arrays it is made of; None
    for anything else (other ranks, ragged rows, non-numbers, and floats from 2**53 on, where a whole
    number among them could round differently than numpy would round it)."""
    rows = len(value)
    if rows == 0:
        return None
    first = value[0]
    shape: tuple[int, ...]
    if isinstance(first, simdjson.Array):
        columns = len(first)
        if columns == 0 or isinstance(first[0], simdjson.Array | simdjson.Object):
            return None
        try:
            if set(map(len, value)) != {columns}:
                return None
        except TypeError:  # a number among the rows
            return None
        shape, opened = (rows, columns), rows + 1
    else:
        shape, opened = (rows,), 1
    try:
        flat = np.frombuffer(value.as_buffer(of_type="i"), dtype=np.int64)
    except TypeError:  # not all whole numbers: read as float64, as numpy reads a mix
        try:
            flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
        except TypeError:  # strings, booleans, null or objects
            return None
        # a whole number past 2**53 could round differently on numpy's way: the plain parse decides there
        if float(np.abs(flat).max()) >= _EXACT_INTEGERS:
            return None
    if flat.size != math.prod(shape):
        return None
    return flat.reshape(shape), opened
