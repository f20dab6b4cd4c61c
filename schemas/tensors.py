"""Tensor fields (API.md §1). Requests accept four JSON forms; the codec turns them into numpy arrays.

The pydantic type of a request tensor is deliberately `Any` with a documented JSON schema: checking a
million-element nested list element by element in pydantic and then again in numpy would double the cost
of a large request, and the codec's checks are stricter (rectangularity, finiteness, size limits) and
name the exact location of a bad value.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from service.vocabulary import DTYPES, DTypeName, EncodingName

DType = DTypeName
ResponseEncoding = EncodingName

TENSOR_JSON_SCHEMA: dict[str, Any] = {
    "title": "Tensor",
    "description": (
        "A number (rank 0), rectangular nested arrays, `{shape, data, dtype?}` (row-major), or "
        f"`{{shape, dtype?, b64}}` (little-endian raw bytes, row-major). dtype: {', '.join(DTYPES)}. "
        "NaN and Infinity are rejected."
    ),
    "anyOf": [
        {"type": "number", "title": "Scalar"},
        {
            "type": "array",
            "title": "Nested arrays",
            "items": {"anyOf": [{"type": "number"}, {"type": "array", "items": {}}]},
        },
        {
            "type": "object",
            "title": "Flat with shape",
            "required": ["shape", "data"],
            "additionalProperties": False,
            "properties": {
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 8},
                "data": {"type": "array", "items": {"type": "number"}},
                "dtype": {"enum": list(DTYPES)},
            },
        },
        {
            "type": "object",
            "title": "Base64",
            "required": ["shape", "b64"],
            "additionalProperties": False,
            "properties": {
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 8},
                "b64": {"type": "string", "contentEncoding": "base64"},
                "dtype": {"enum": list(DTYPES)},
            },
        },
    ],
}

TensorIn = Annotated[Any, WithJsonSchema(TENSOR_JSON_SCHEMA)]
"""A request tensor in any of the four forms; decoded and checked by `service.codec.decode`."""

MAX_RANK = 8
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


class TensorOut(BaseModel):
    """A response tensor: `values` (nested, non-finite as "NaN"/"Infinity"/"-Infinity") or `b64`."""

    model_config = ConfigDict(extra="forbid")

    shape: list[int] = Field(description="Dimensions; [] for a scalar.")
    dtype: DType = Field(description="Element type.")
    values: Any = Field(
        default=None,
        description="A bare number for rank 0, nested arrays otherwise (with response_encoding nested).",
        json_schema_extra={"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "array"}]},
    )
    b64: str | None = Field(
        default=None, description="Little-endian raw bytes, row-major (with response_encoding b64)."
    )
