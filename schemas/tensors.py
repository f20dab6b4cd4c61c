"""Tensor fields (API.md §1). Requests accept four JSON forms; the codec turns them into numpy arrays.

The pydantic type of a request tensor is deliberately `Any` with a documented JSON schema: checking a
million-element nested list element by element in pydantic and then again in numpy would double the cost
of a large request, and the codec's checks are stricter (rectangularity, finiteness, size limits) and
name the exact location of a bad value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, RootModel, WithJsonSchema

from service.vocabulary import DTypeName, EncodingName

DType = DTypeName
ResponseEncoding = EncodingName

MAX_RANK = 8
Shape = Annotated[
    list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_RANK, description="Dimensions; [] for a scalar.")
]
_TENSOR_DTYPE = "Element type. Default: the dtype the field's description gives (usually the request's)."


# The models below only document the request forms in OpenAPI, each as a component of its own (code
# generators name one class per component); requests are checked by `service.codec.decode`.
class TensorFlat(BaseModel):
    """Row-major `data` with an explicit `shape`."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}]}
    )

    shape: Shape
    data: list[float] = Field(description="The elements, row-major.")
    dtype: DType | None = Field(default=None, description=_TENSOR_DTYPE)


class TensorB64(BaseModel):
    """Little-endian raw bytes, row-major, base64-encoded: exact and compact for large tensors."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"shape": [2], "dtype": "float32", "b64": "AACAPwAAAEA="}]}
    )

    shape: Shape
    b64: str = Field(description="The raw bytes, base64.", json_schema_extra={"contentEncoding": "base64"})
    dtype: DType | None = Field(default=None, description=_TENSOR_DTYPE)


Scalar = Annotated[float, WithJsonSchema({"type": "number", "title": "Scalar"})]
NestedArrays = Annotated[
    list[Any],
    WithJsonSchema(
        {
            "type": "array",
            "title": "NestedArrays",
            "description": "Rectangular nested arrays of numbers, one level per dimension.",
            "items": {
                "anyOf": [{"type": "number", "title": "Element"}, {"type": "array", "title": "Row", "items": {}}]
            },
        }
    ),
]


class Tensor(RootModel[Scalar | NestedArrays | TensorFlat | TensorB64]):
    """A number (rank 0), rectangular nested arrays, `{shape, data, dtype?}` (row-major), or `{shape, dtype?, b64}`
    (little-endian raw bytes, row-major). dtype: float32, float64, int32, int64. NaN and Infinity are rejected."""


def _as_sent(value: Any) -> Any:
    return value


TensorIn = Annotated[Any, PlainValidator(_as_sent, json_schema_input_type=Tensor)]
LIMIT_ERROR = "limit_exceeded"
"""Type of a validation error that is a size limit, not a malformed value (answered as limit-exceeded)."""


def declared_shape(value: Any) -> tuple[int, ...] | None:
    """The shape a request tensor declares, read without decoding its data (the first element at each depth
    of nested arrays, or the object's `shape`); None when it declares none the codec would accept."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return ()
    if isinstance(value, list):
        shape: list[int] = []
        node: Any = value
        while isinstance(node, list):
            shape.append(len(node))
            if len(shape) > MAX_RANK:
                return None
            if not node:
                break
            node = node[0]
        return tuple(shape)
    if isinstance(value, dict):
        raw = value.get("shape")
        if (
            isinstance(raw, list)
            and len(raw) <= MAX_RANK
            and all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in raw)
        ):
            return tuple(raw)
    return None


_NON_FINITE = {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"], "title": "NonFinite"}
TENSOR_VALUES_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "title": "Scalar"},
        _NON_FINITE,
        {
            "type": "array",
            "title": "NestedValues",
            "description": "Nested arrays, one level per dimension; non-finite elements as strings.",
            "items": {
                "anyOf": [
                    {"type": "number", "title": "Element"},
                    {**_NON_FINITE, "title": "NonFiniteElement"},
                    {"type": "array", "title": "Row", "items": {}},
                ]
            },
        },
    ]
}
"""`TensorOut.values`: every member titled and every array with `items`, as code generators need."""


class TensorOut(BaseModel):
    """A response tensor: `values` (nested, non-finite as "NaN"/"Infinity"/"-Infinity") or `b64`."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(description="Dimensions; [] for a scalar.")
    dtype: DType = Field(description="Element type.")
    values: Annotated[Any, WithJsonSchema(TENSOR_VALUES_SCHEMA)] = Field(
        default=None,
        description="A bare number for rank 0, nested arrays otherwise (with response_encoding nested).",
    )
    b64: str | None = Field(
        default=None, description="Little-endian raw bytes, row-major (with response_encoding b64)."
    )
