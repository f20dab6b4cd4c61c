"""What a tape run takes and gives: inputs, compute entries and results, and the checks on a request
that need no TensorFlow op. Locations are relative to `run_tape`'s arguments: ("inputs", name),
("watch", i), ("compute", i, ...), ("outputs", i), ("dtype",).
"""

from __future__ import annotations

import keyword
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from service.compute.errors import InvalidInput, LimitExceeded, TapeSemanticsError
from service.compute.program.checker import RESERVED_NAMES

ComputeKind = Literal["gradient", "jacobian", "batch_jacobian", "hessian", "jvp"]
COMPUTE_KINDS: tuple[str, ...] = ("gradient", "jacobian", "batch_jacobian", "hessian", "jvp")
INPUT_DTYPES = frozenset({"float32", "float64", "int32", "int64"})


@dataclass(frozen=True)
class TapeInput:
    value: np.ndarray[Any, Any]
    """The decoded array (float32/float64/int32/int64)."""
    variable: bool = False
    """A tf.Variable instead of a constant."""
    trainable: bool = True
    """tf.Variable(trainable=...): a non-trainable variable is not watched automatically."""


@dataclass(frozen=True)
class ComputeRequest:
    kind: ComputeKind
    target: str
    sources: tuple[str, ...]
    output_gradients: np.ndarray[Any, Any] | None = None
    unconnected: Literal["none", "zero"] = "none"
    tangents: tuple[np.ndarray[Any, Any], ...] | None = None
    """jvp only: one per source, each of the source's shape."""


@dataclass
class ComputeResult:
    kind: str
    target: str
    sources: tuple[str, ...]
    values: list[np.ndarray[Any, Any] | None]
    """gradient/jacobian: one per source (None when unconnected and unconnected="none", or when the
    target or source is not a float tensor); batch_jacobian: one; hessian: the diagonal block per
    source; jvp: one, target-shaped."""
    warnings: tuple[str, ...] = ()
    """TensorFlow's warnings for a non-float target or source, in its words (see `dtype_warnings`)."""


@dataclass
class TapeRun:
    values: dict[str, np.ndarray[Any, Any]]
    results: list[ComputeResult]
    warnings: tuple[str, ...] = ()
    """TensorFlow's warnings for watching a non-float tensor (the request's `watch` or the program's)."""


def check_inputs(inputs: Mapping[str, TapeInput], max_elements: int) -> None:
    for name, spec in inputs.items():
        loc = ("inputs", name)
        if (
            not name.isidentifier()
            or keyword.iskeyword(name)
            or unicodedata.normalize("NFKC", name) != name
            or name.startswith("__")
            or name in RESERVED_NAMES
        ):
            raise InvalidInput(
                f"input name {name!r} must be a Python identifier, not a keyword, not starting with '__' "
                f"and not one of {', '.join(sorted(RESERVED_NAMES))}",
                loc,
            )
        value = np.asarray(spec.value)
        if value.dtype.name not in INPUT_DTYPES:
            raise InvalidInput(f"input {name!r} has dtype {value.dtype.name}; use float32/float64/int32/int64", loc)
        if value.size > max_elements:
            raise LimitExceeded(f"input {name!r} has {value.size:,} elements, above the limit of {max_elements:,}", loc)


def check_watch(watch: Sequence[str], inputs: Mapping[str, TapeInput]) -> list[str]:
    for index, name in enumerate(watch):
        if name not in inputs:
            raise InvalidInput(
                f"watch: {name!r} is not an input (use <tape>.watch(...) in the program for tensors it creates)",
                ("watch", index),
            )
    return list(watch)


def check_compute(compute: Sequence[ComputeRequest], known: set[str]) -> None:
    """What can be told before running the program: names, kinds and per-kind arguments."""
    for index, request in enumerate(compute):
        where = ("compute", index)
        if request.kind not in COMPUTE_KINDS:
            raise TapeSemanticsError(f"unknown compute kind {request.kind!r}", index, (*where, "kind"))
        if request.unconnected not in ("none", "zero"):
            raise TapeSemanticsError("unconnected must be 'none' or 'zero'", index, (*where, "unconnected"))
        if request.target not in known:
            raise TapeSemanticsError(
                f"unknown target {request.target!r}: not an input and not assigned by the program",
                index,
                (*where, "target"),
            )
        if not request.sources:
            raise TapeSemanticsError("at least one source is needed", index, (*where, "sources"))
        for position, source in enumerate(request.sources):
            if source not in known:
                raise TapeSemanticsError(
                    f"unknown source {source!r}: not an input and not assigned by the program",
                    index,
                    (*where, "sources", position),
                )
        if request.kind == "batch_jacobian" and len(request.sources) != 1:
            raise TapeSemanticsError("batch_jacobian takes exactly one source", index, (*where, "sources"))
        if request.output_gradients is not None and request.kind != "gradient":
            raise TapeSemanticsError("output_gradients applies to gradient only", index, (*where, "output_gradients"))
        if request.kind == "jvp":
            if request.tangents is None or len(request.tangents) != len(request.sources):
                raise TapeSemanticsError("jvp needs one tangent per source", index, (*where, "tangents"))
        elif request.tangents is not None:
            raise TapeSemanticsError("tangents apply to jvp only", index, (*where, "tangents"))


def check_outputs(outputs: Sequence[str] | None, known: set[str]) -> None:
    for index, name in enumerate(outputs or ()):
        if name not in known:
            raise InvalidInput(f"output {name!r} is not an input and not assigned by the program", ("outputs", index))
