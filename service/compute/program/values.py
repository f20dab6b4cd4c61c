"""Values of the tape-program language and the shape arithmetic that bounds them before TensorFlow runs.

A program value is one of: a `tf.Tensor`, a `tf.Variable`, a Python number (`int`, `float`, `bool`),
a `tf.DType`, `None`, or a `PyList` (a list or tuple literal). Python numbers stay Python numbers
until an operation meets them, so TensorFlow converts them exactly as it would in user code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.program.limits import MAX_DIMS, MAX_LIST_LEAVES, MAX_LIST_NESTING

Shape = tuple[int, ...]


class ValueProblem(Exception):
    """An argument rejected before TensorFlow runs; the interpreter adds the line and column."""


class SizeProblem(ValueProblem):
    """An operation whose result would exceed an element limit."""


@dataclass(frozen=True, eq=False)
class PyList:
    """A list or tuple literal with its element count and shape worked out once, when it is built.

    Lists can hold other lists by name (`b = [a, a]`), so the structure is a DAG: the cached
    `count` and `shape` keep every size check linear in the program, never in the DAG's unfolding.
    """

    items: tuple[Any, ...]
    is_tuple: bool
    shape: Shape | None
    """The tensor shape TensorFlow would give it; None when ragged or holding non-numbers."""
    count: int
    """Number of numeric leaves, tensors counted by their elements."""
    leaves: int
    """Number of leaf objects (numbers, tensors, ...) when unfolded."""
    depth: int
    has_float: bool
    """Some leaf is a Python float (decides the default float dtype on conversion)."""
    has_tensor: bool


def is_tensor(value: Any) -> bool:
    return isinstance(value, tf.Tensor | tf.Variable)


def tensor_shape(value: Any) -> Shape:
    return tuple(int(d) for d in value.shape)


def product(dims: Iterable[int]) -> int:
    """The element count of a shape; a zero dimension wins over any size of the others."""
    dims = list(dims)
    if any(d <= 0 for d in dims):
        return 0
    return math.prod(dims)


def element_count(value: Any) -> int:
    if is_tensor(value):
        return product(tensor_shape(value))
    if isinstance(value, PyList):
        return value.count
    return 1


def make_list(items: Sequence[Any], *, is_tuple: bool, max_elements: int) -> PyList:
    count = 0
    leaves = 0
    depth = 1
    has_float = False
    has_tensor = False
    child_shapes: list[Shape | None] = []
    for item in items:
        if is_tensor(item):
            count += element_count(item)
            has_tensor = True
            child_shapes.append(tensor_shape(item))
        elif isinstance(item, PyList):
            count += item.count
            leaves += item.leaves - 1
            depth = max(depth, item.depth + 1)
            has_float = has_float or item.has_float
            has_tensor = has_tensor or item.has_tensor
            child_shapes.append(item.shape)
        elif isinstance(item, bool | int | float):
            count += 1
            has_float = has_float or (isinstance(item, float) and not isinstance(item, bool))
            child_shapes.append(())
        else:
            count += 1
            child_shapes.append(None)
        leaves += 1
    if depth > MAX_LIST_NESTING:
        raise ValueProblem(f"lists nest at most {MAX_LIST_NESTING} deep")
    if count > max_elements:
        raise SizeProblem(f"this list would hold {count:,} elements, above the limit of {max_elements:,}")
    if leaves > MAX_LIST_LEAVES:
        raise SizeProblem(
            f"this list would hold {leaves:,} numbers or tensors, above {MAX_LIST_LEAVES:,}; "
            "build large tensors with tf.fill, tf.tile or tf.concat"
        )
    shape: Shape | None = None
    first = child_shapes[0] if child_shapes else ()
    if first is not None and all(s == first for s in child_shapes):
        shape = (len(items), *first)
    return PyList(tuple(items), is_tuple, shape, count, leaves, depth, has_float, has_tensor)


def to_tensorflow(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """The value as TensorFlow takes it: PyLists become Python lists/tuples (shared ones once)."""
    if not isinstance(value, PyList):
        return value
    memo = {} if memo is None else memo
    key = id(value)
    if key not in memo:
        converted = [to_tensorflow(item, memo) for item in value.items]
        memo[key] = tuple(converted) if value.is_tuple else converted
    return memo[key]


def describe(value: Any) -> str:
    if isinstance(value, tf.Variable):
        return f"a {value.dtype.name} variable"
    if is_tensor(value):
        return f"a {value.dtype.name} tensor"
    if isinstance(value, PyList):
        return "a tuple" if value.is_tuple else "a list"
    if isinstance(value, bool):
        return "a Python bool"
    if isinstance(value, int | float):
        return "a Python number"
    if isinstance(value, tf.DType):
        return "a dtype"
    return "None"


def shape_of(value: Any, what: str) -> Shape:
    """The shape TensorFlow would give `value` when it converts it to a tensor."""
    if is_tensor(value):
        return tensor_shape(value)
    if isinstance(value, bool | int | float):
        return ()
    if isinstance(value, PyList):
        if value.shape is None:
            raise ValueProblem(f"{what}: a list used as a tensor must be rectangular and hold only numbers")
        return value.shape
    raise ValueProblem(f"{what} must be a tensor, not {describe(value)}")


def broadcast_shape(shapes: Sequence[Shape]) -> Shape | None:
    """numpy/TensorFlow broadcasting of `shapes`; None when they are incompatible."""
    rank = max((len(s) for s in shapes), default=0)
    result: list[int] = []
    for axis in range(rank):
        dims = {s[len(s) - rank + axis] for s in shapes if len(s) - rank + axis >= 0}
        dims.discard(1)
        if len(dims) > 1:
            return None
        result.append(dims.pop() if dims else 1)
    return tuple(result)


def static_bool(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueProblem(f"{what} must be True or False")


def static_int(value: Any, what: str) -> int:
    """An integer known before the op runs: a Python int or an integer scalar tensor."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if is_tensor(value) and value.dtype.is_integer and tensor_shape(value) == ():
        return int(value.numpy())
    raise ValueProblem(f"{what} must be an integer, not {describe(value)}")


def static_number(value: Any, what: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif is_tensor(value) and (value.dtype.is_integer or value.dtype.is_floating) and tensor_shape(value) == ():
        number = float(value.numpy())
    else:
        raise ValueProblem(f"{what} must be a number, not {describe(value)}")
    if not math.isfinite(number):
        raise ValueProblem(f"{what} must be finite")
    return number


def static_int_vector(value: Any, what: str) -> list[int]:
    """A shape-like argument (`[2, 3]`, `5`, an integer tensor of rank 0 or 1) as Python ints."""
    if isinstance(value, PyList):
        if len(value.items) > MAX_DIMS:
            raise ValueProblem(f"{what} has more than {MAX_DIMS} dimensions")
        return [static_int(item, what) for item in value.items]
    if is_tensor(value) and value.dtype.is_integer and len(tensor_shape(value)) == 1:
        if tensor_shape(value)[0] > MAX_DIMS:
            raise ValueProblem(f"{what} has more than {MAX_DIMS} dimensions")
        return [int(d) for d in value.numpy()]
    return [static_int(value, what)]


def static_int_array(value: Any, what: str) -> np.ndarray[Any, Any]:
    """Integer indices known before the op runs (an integer tensor, a Python int or a list of them)."""
    if is_tensor(value) and value.dtype.is_integer:
        return np.asarray(value.numpy())
    if isinstance(value, int) and not isinstance(value, bool):
        return np.asarray(value)
    if isinstance(value, PyList) and value.shape is not None:
        array = np.asarray(tf.constant(to_tensorflow(value)).numpy())
        if array.dtype.kind in "iu":
            return array
    raise ValueProblem(f"{what} must be an integer tensor, not {describe(value)}")
