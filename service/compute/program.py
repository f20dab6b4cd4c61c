"""`POST /v1/tape`: run a small TensorFlow-flavoured program on a GradientTape and differentiate it.

The program is Python *syntax* evaluated by walking its `ast` against a whitelist (see
`program_parse`); nothing is ever passed to eval/exec/compile, and no attribute is looked up by a
name the user wrote. Functions come from a fixed table (`program_ops`), each with a rule that sizes
its result before TensorFlow allocates it.

Language notes (what `GET /v1/ops` and the README document):
* `print(...)` is accepted as a statement and does nothing; its arguments are checked, not evaluated.
* `<tape>.watch(t)` as a statement watches a tensor the program created (the seed's `g.watch(z)`):
  `<tape>` is any name the program has not bound. The request's `watch` names inputs only.
* `.numpy()` gives the same values as a new constant, detached from the tape, as TensorFlow's numpy
  array would be; so the seed's `L.numpy()` line is harmless.
* `float` is the request's float dtype (float32 by default, as `dtype=float` means in TensorFlow).
  With `float_dtype="float64"`, float64 also replaces float32 wherever TensorFlow would pick float32
  by default: Python floats that meet no float tensor, and tf.ones / zeros / eye / one_hot.
* Calls by plain name always mean the function: a variable named `exp` does not hide `exp(...)`.
* `tf.nn.leaky_relu`'s alpha defaults to 0.2, TensorFlow's own default (the seed's LReLU uses 0.01).

Limits, all checked before TensorFlow allocates: every intermediate ≤ max_elements (creating,
tiling, one-hot, broadcasting, concatenating, gathering and matmul ops are sized from their
arguments); a matmul ≤ WORK_FACTOR × max_elements multiply-adds; all tensors of one run together
≤ TOTAL_FACTOR × max_elements (the tape keeps them alive), and all its element reads, writes and
multiply-adds ≤ TOTAL_WORK_FACTOR × max_elements; a jacobian / hessian block ≤ max_elements,
and its vectorised backward pass (target elements × the program's largest tensor) ≤ TOTAL_FACTOR ×
max_elements.

Tape semantics: gradient / jacobian / batch_jacobian use the main tape, so a non-persistent tape
answers exactly one of them. hessian and jvp re-run the program on tapes / accumulators of their
own and never consume the main tape. A hessian's values are the diagonal blocks d²T/dsᵢ², one per
source, each of shape sᵢ.shape + sᵢ.shape (ask with one source for a full Hessian). A jvp's single
value is Σᵢ Jᵢ·tᵢ (target-shaped), Jᵢ being the total derivative as `gradient` would take it.
"""

from __future__ import annotations

import ast
import contextlib
import keyword
import operator
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import tensorflow as tf

from service.compute.errors import (
    ComputeError,
    InvalidInput,
    LimitExceeded,
    NonPersistentTapeError,
    ProgramError,
    ProgramLimitExceeded,
    TapeSemanticsError,
)
from service.compute.program_ops import (
    DTYPES,
    OPS,
    OpSpec,
    broadcast_size,
    matmul_operator_args,
    matmul_size,
    matmul_work,
)
from service.compute.program_parse import (
    BINARY_OPERATORS,
    COMPARISONS,
    RESERVED_NAMES,
    ParsedProgram,
    parse_program,
)
from service.compute.program_values import (
    INT64_MAX,
    PyList,
    SizeProblem,
    ValueProblem,
    describe,
    element_count,
    is_tensor,
    make_list,
    tensor_shape,
    to_tensorflow,
)

__all__ = [
    "ComputeRequest",
    "ComputeResult",
    "OpInfo",
    "ParsedProgram",
    "TapeInput",
    "TapeRun",
    "list_ops",
    "parse_program",
    "run_tape",
]

ComputeKind = Literal["gradient", "jacobian", "batch_jacobian", "hessian", "jvp"]
COMPUTE_KINDS: tuple[str, ...] = ("gradient", "jacobian", "batch_jacobian", "hessian", "jvp")

WORK_FACTOR = 256
"""A matmul may do at most this many multiply-adds per element of the element limit (~1e9 by default)."""
TOTAL_FACTOR = 32
"""All tensors one run of a program creates total at most this many times the element limit: the
tape keeps intermediates alive, so a long chain of large ones is bounded as a whole."""
TOTAL_WORK_FACTOR = 1024
"""One run reads, writes and multiply-adds at most this many times the element limit (~4e9 by
default, a few seconds): TensorFlow ops cannot be interrupted once the worker runs them."""

_INPUT_DTYPES = frozenset({"float32", "float64", "int32", "int64"})
_OUTPUT_DTYPES = (tf.float32, tf.float64, tf.int32, tf.int64)
_NON_PERSISTENT = "A non-persistent GradientTape"


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
    """gradient/jacobian: one per source (None when unconnected and unconnected="none");
    batch_jacobian: one; hessian: the diagonal block per source; jvp: one, target-shaped."""


@dataclass
class TapeRun:
    values: dict[str, np.ndarray[Any, Any]]
    results: list[ComputeResult]


@dataclass(frozen=True)
class OpInfo:
    name: str
    tf_names: tuple[str, ...]
    signature: str
    summary: str


def list_ops() -> list[OpInfo]:
    """The program language's functions, for GET /v1/ops."""
    infos = []
    for op in OPS:
        summary = op.summary + (f" Also callable as {', '.join(op.aliases)}." if op.aliases else "")
        infos.append(OpInfo(op.name, op.tf_names, op.signature, summary))
    return infos


# --- the evaluator -------------------------------------------------------------------------------

_ARITHMETIC: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.MatMult: operator.matmul,
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
# Tensor.__eq__ answers False instead of raising on incompatible shapes; the ops do not
_TENSOR_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    **_COMPARE,
    ast.Eq: tf.math.equal,
    ast.NotEq: tf.math.not_equal,
}

AssignHook = Callable[[str, int, Any], None]


def tensorflow_message(error: BaseException) -> str:
    """TensorFlow's own message, first line only, without its internal function-node prefix."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text).strip()
    first = text.splitlines()[0].strip() if text else ""
    first = re.sub(r"\s*\[Op:[^\]]*\].*$", "", first)
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float)


def _is_float_tensor(value: Any) -> bool:
    return is_tensor(value) and value.dtype.is_floating


def _python_arithmetic(kind: type[ast.operator], left: Any, right: Any) -> Any:
    if kind is ast.MatMult:
        raise ValueProblem("@ needs tensors, not Python numbers")
    if (
        kind is ast.Pow
        and isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
        and right * abs(left).bit_length() > 64
    ):
        raise ValueProblem("integer power outside the int64 range")
    try:
        result = _ARITHMETIC[kind](left, right)
    except ZeroDivisionError:
        raise ValueProblem("division by zero") from None
    except OverflowError:
        raise ValueProblem("numeric overflow") from None
    if isinstance(result, complex):
        raise ValueProblem("the result is a complex number, which is not supported")
    if isinstance(result, int) and not isinstance(result, bool) and abs(result) > INT64_MAX:
        raise ValueProblem("integer result outside the int64 range")
    return result


class _Interpreter:
    """One run of a parsed program. `tapes` get `<tape>.watch(...)`; `on_assign` sees each binding."""

    def __init__(
        self,
        parsed: ParsedProgram,
        inputs: Mapping[str, Any],
        *,
        float_dtype: Any,
        max_elements: int,
        tapes: Sequence[Any],
        on_assign: AssignHook | None = None,
    ) -> None:
        self.parsed = parsed
        self.env: dict[str, Any] = dict(inputs)
        self.float_dtype = float_dtype
        self.max_elements = max_elements
        self.budget = TOTAL_FACTOR * max_elements
        self.tapes = tuple(tapes)
        self.on_assign = on_assign
        sizes = [element_count(v) for v in inputs.values()]
        self.peak = max(sizes, default=1)
        self.total = sum(sizes)
        self.work = 0

    def run(self) -> _Interpreter:
        for index, statement in enumerate(self.parsed.tree.body):
            self._statement(index, statement)
        return self

    # errors carry the line and column of the node that failed

    @contextlib.contextmanager
    def _at(self, node: ast.AST) -> Iterator[None]:
        try:
            yield
        except ComputeError:
            raise
        except SizeProblem as problem:
            raise ProgramLimitExceeded(str(problem), *self.parsed.position(node)) from None
        except ValueProblem as problem:
            raise ProgramError(str(problem), *self.parsed.position(node)) from None
        except Exception as error:  # TensorFlow's errors on user data: InvalidArgument, ValueError, ...
            raise ProgramError(tensorflow_message(error), *self.parsed.position(node)) from error

    # size accounting

    def _admit(self, predicted: int | None, arguments: Sequence[Any], work: int | None = None) -> None:
        count = predicted if predicted is not None else max((element_count(a) for a in arguments), default=1)
        if count > self.max_elements:
            raise SizeProblem(
                f"this operation would create {count:,} elements, above the limit of {self.max_elements:,}"
            )
        if work is not None and work > WORK_FACTOR * self.max_elements:
            raise SizeProblem(
                f"this product would take {work:,} multiply-adds, above the limit of "
                f"{WORK_FACTOR * self.max_elements:,}"
            )
        if self.total + count > self.budget:
            raise SizeProblem(
                f"the program's tensors would total more than {self.budget:,} elements "
                f"({TOTAL_FACTOR} times the element limit)"
            )
        operations = count + sum(element_count(a) for a in arguments) if work is None else work
        if self.work + operations > TOTAL_WORK_FACTOR * self.max_elements:
            raise SizeProblem(
                f"the program would take more than {TOTAL_WORK_FACTOR * self.max_elements:,} element "
                f"operations ({TOTAL_WORK_FACTOR} times the element limit)"
            )
        self.work += operations

    def _record(self, result: Any) -> Any:
        if isinstance(result, list | tuple):
            items = [self._record(item) for item in result]
            return make_list(items, is_tuple=isinstance(result, tuple), max_elements=self.max_elements)
        if is_tensor(result):
            count = element_count(result)
            self.total += count
            self.peak = max(self.peak, count)
        return result

    # statements

    def _statement(self, index: int, node: ast.stmt) -> None:
        if isinstance(node, ast.Assign):
            value = self._evaluate(node.value)
            for target in node.targets:
                self._bind(index, target, value)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            current = self._lookup(node.target)
            value = self._evaluate(node.value)
            with self._at(node):
                result = self._arithmetic(type(node.op), current, value)
            self._bind(index, node.target, result)
        elif isinstance(node, ast.Expr):
            call = self.parsed.calls.get(id(node.value))
            if call is not None and call.kind == "print":
                return
            if call is not None and call.kind == "watch" and isinstance(node.value, ast.Call):
                self._watch(node.value)
                return
            self._evaluate(node.value)

    def _bind(self, index: int, target: ast.expr, value: Any) -> None:
        if isinstance(target, ast.Name):
            self.env[target.id] = value
            if self.on_assign is not None:
                self.on_assign(target.id, index, value)
            return
        names = [e for e in target.elts if isinstance(e, ast.Name)] if isinstance(target, ast.Tuple | ast.List) else []
        with self._at(target):
            if isinstance(value, PyList):
                items = list(value.items)
            elif is_tensor(value) and tensor_shape(value) and tensor_shape(value)[0] == len(names):
                items = list(self._record(tf.unstack(value, num=len(names))).items)
            else:
                raise ValueProblem(f"cannot unpack {describe(value)} into {len(names)} names")
            if len(items) != len(names):
                raise ValueProblem(f"cannot unpack {len(items)} values into {len(names)} names")
        for name, item in zip(names, items, strict=True):
            self._bind(index, name, item)

    def _watch(self, call: ast.Call) -> None:
        tape_name = (
            call.func.value.id if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) else ""
        )
        if tape_name in self.env:
            raise ProgramError(
                f"'{tape_name}' is a value here; <tape>.watch(...) needs a name the program has not bound",
                *self.parsed.position(call),
            )
        for argument in call.args:
            value = self._evaluate(argument)
            with self._at(argument):
                tensors = list(_flatten(value))
                if not tensors or not all(_is_float_tensor(t) for t in tensors):
                    raise ValueProblem(f"only float tensors can be watched, not {describe(value)}")
                for tape in self.tapes:
                    for tensor in tensors:
                        tape.watch(tensor)

    # expressions

    def _lookup(self, node: ast.Name) -> Any:
        if node.id == "float":
            return self.float_dtype
        if node.id not in self.env:
            raise ProgramError(f"name '{node.id}' is not defined", *self.parsed.position(node))
        return self.env[node.id]

    def _evaluate(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self._lookup(node)
        if isinstance(node, ast.List | ast.Tuple):
            items = [self._evaluate(element) for element in node.elts]
            with self._at(node):
                return make_list(items, is_tuple=isinstance(node, ast.Tuple), max_elements=self.max_elements)
        if isinstance(node, ast.BinOp):
            left, right = self._evaluate(node.left), self._evaluate(node.right)
            with self._at(node):
                return self._arithmetic(type(node.op), left, right)
        if isinstance(node, ast.UnaryOp):
            operand = self._evaluate(node.operand)
            with self._at(node):
                return self._unary(node.op, operand)
        if isinstance(node, ast.Compare):
            left, right = self._evaluate(node.left), self._evaluate(node.comparators[0])
            with self._at(node):
                return self._compare(type(node.ops[0]), left, right)
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            return DTYPES[self.parsed.dtypes[id(node)]]
        if isinstance(node, ast.Subscript):
            value = self._evaluate(node.value)
            with self._at(node):
                return self._subscript(value, self.parsed.subscripts[id(node)])
        raise ProgramError(f"{type(node).__name__} is not allowed", *self.parsed.position(node))

    def _check_operands(self, symbol: str, left: Any, right: Any) -> None:
        for value in (left, right):
            if isinstance(value, tf.DType) or value is None:
                raise ValueProblem(f"{symbol} cannot take {describe(value)}")
        if not (is_tensor(left) or is_tensor(right)):
            raise ValueProblem(
                f"{symbol} between {describe(left)} and {describe(right)} is Python list arithmetic, "
                "not tensor maths; make one side a tensor with tf.constant(...)"
            )

    def _arithmetic(self, kind: type[ast.operator], left: Any, right: Any) -> Any:
        if _is_scalar(left) and _is_scalar(right):
            return _python_arithmetic(kind, left, right)
        symbol = BINARY_OPERATORS[kind]
        self._check_operands(symbol, left, right)
        if kind is ast.MatMult:
            arguments = matmul_operator_args(left, right)
            self._admit(matmul_size(arguments), (left, right), matmul_work(arguments))
        else:
            self._admit(broadcast_size("x", "y")({"x": left, "y": right}), (left, right))
        return self._record(_ARITHMETIC[kind](to_tensorflow(left), to_tensorflow(right)))

    def _compare(self, kind: type[ast.cmpop], left: Any, right: Any) -> Any:
        if _is_scalar(left) and _is_scalar(right):
            return _COMPARE[kind](left, right)
        self._check_operands(COMPARISONS[kind], left, right)
        self._admit(broadcast_size("x", "y")({"x": left, "y": right}), (left, right))
        return self._record(_TENSOR_COMPARE[kind](to_tensorflow(left), to_tensorflow(right)))

    def _unary(self, op: ast.unaryop, operand: Any) -> Any:
        if _is_scalar(operand):
            return -operand if isinstance(op, ast.USub) else +operand
        if not is_tensor(operand):
            raise ValueProblem(f"unary {'-' if isinstance(op, ast.USub) else '+'} cannot take {describe(operand)}")
        return self._record(-operand) if isinstance(op, ast.USub) else operand

    def _subscript(self, value: Any, key: Any) -> Any:
        if is_tensor(value):
            return self._record(value[key])
        if isinstance(value, PyList):
            if isinstance(key, int):
                return value.items[key]
            if isinstance(key, slice):
                return make_list(value.items[key], is_tuple=value.is_tuple, max_elements=self.max_elements)
            raise ValueProblem("a list takes one integer index or a slice")
        raise ValueProblem(f"cannot subscript {describe(value)}")

    def _call(self, node: ast.Call) -> Any:
        target = self.parsed.calls[id(node)]
        if target.kind == "numpy" and isinstance(node.func, ast.Attribute):
            value = self._evaluate(node.func.value)
            with self._at(node):
                if not is_tensor(value):
                    raise ValueProblem(f".numpy() needs a tensor, not {describe(value)}")
                self._admit(None, (value,))
                return self._record(tf.constant(value.numpy()))
        if target.kind != "op" or target.op is None:
            raise ProgramError("this call is only allowed as a statement", *self.parsed.position(node))
        op = target.op
        positional = [self._evaluate(argument) for argument in node.args]
        keywords = {k.arg: self._evaluate(k.value) for k in node.keywords if k.arg is not None}
        with self._at(node):
            bound = op.bind(positional, keywords)
            self._default_float(op, bound)
            view = op.with_defaults(bound)
            work = op.work(view) if op.work is not None else None
            self._admit(op.size(view), list(bound.values()), work)
            memo: dict[int, Any] = {}
            arguments = {name: to_tensorflow(value, memo) for name, value in bound.items()}
            return self._record(op.fn(**arguments))

    def _default_float(self, op: OpSpec, bound: dict[str, Any]) -> None:
        """With a float64 request, float64 takes float32's place as TensorFlow's default float type."""
        if self.float_dtype == tf.float32 or bound.get("dtype") is not None:
            return
        data = [name for name in op.data if name in bound]
        if any(_is_float_tensor(t) for name in data for t in _flatten(bound[name])):
            return  # Python floats follow the float tensor they meet, as in TensorFlow
        if op.float_dtype_param:
            bound["dtype"] = self.float_dtype
            return
        for name in data:
            value = bound[name]
            if (isinstance(value, float)) or (isinstance(value, PyList) and value.has_float and not value.has_tensor):
                self._admit(None, (value,))
                bound[name] = self._record(tf.constant(to_tensorflow(value), dtype=self.float_dtype))


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, PyList):
        for item in value.items:
            yield from _flatten(item)
    elif is_tensor(value):
        yield value


# --- the tape runner -----------------------------------------------------------------------------


def _float_dtype(name: str) -> Any:
    if name not in ("float32", "float64"):
        raise InvalidInput(f"dtype must be float32 or float64, not {name!r}", ("body", "dtype"))
    return tf.float32 if name == "float32" else tf.float64


def _check_inputs(inputs: Mapping[str, TapeInput], max_elements: int) -> None:
    for name, spec in inputs.items():
        loc = ("body", "inputs", name)
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
        if value.dtype.name not in _INPUT_DTYPES:
            raise InvalidInput(f"input {name!r} has dtype {value.dtype.name}; use float32/float64/int32/int64", loc)
        if value.size > max_elements:
            raise LimitExceeded(f"input {name!r} has {value.size:,} elements, above the limit of {max_elements:,}", loc)


def _check_watch(watch: Sequence[str], inputs: Mapping[str, TapeInput]) -> list[str]:
    for index, name in enumerate(watch):
        if name not in inputs:
            raise InvalidInput(
                f"watch: {name!r} is not an input (use <tape>.watch(...) in the program for tensors it creates)",
                ("body", "watch", index),
            )
        if np.asarray(inputs[name].value).dtype.kind != "f":
            raise InvalidInput(
                f"watch: {name!r} is an integer input; only float tensors can be watched", ("body", "watch", index)
            )
    return list(watch)


def _check_compute(compute: Sequence[ComputeRequest], known: set[str]) -> None:
    """What can be told before running the program: names, kinds and per-kind arguments."""
    for index, request in enumerate(compute):
        where = ("body", "compute", index)
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


def _check_outputs(outputs: Sequence[str] | None, known: set[str]) -> None:
    for index, name in enumerate(outputs or ()):
        if name not in known:
            raise InvalidInput(
                f"output {name!r} is not an input and not assigned by the program", ("body", "outputs", index)
            )


def _given_as(given: np.ndarray[Any, Any], dtype: Any, index: int, loc: tuple[str | int, ...], what: str) -> Any:
    """A caller's tensor (output_gradients, tangent) as `dtype`: values beyond its range are the caller's error,
    not an infinity that TensorFlow's cast would make of them."""
    numpy_dtype = np.dtype(dtype.as_numpy_dtype)
    if numpy_dtype.kind == "f" and given.size and float(np.abs(given).max()) > float(np.finfo(numpy_dtype).max):
        raise TapeSemanticsError(f"{what} has values that overflow {dtype.name}; send dtype float64", index, loc)
    return tf.constant(given, dtype=dtype)


def _output_array(value: Any, float_dtype: Any) -> np.ndarray[Any, Any] | None:
    """The value as a numpy array the service can return, or None (bool, dtype, ragged list...)."""
    if isinstance(value, bool) or value is None or isinstance(value, tf.DType):
        return None
    if isinstance(value, float):
        with np.errstate(over="ignore"):  # 1e308 in float32 is inf, as TensorFlow converts it
            return np.asarray(value, dtype=float_dtype.as_numpy_dtype)
    if isinstance(value, int):
        return np.asarray(value, dtype=np.int32 if abs(value) < 2**31 else np.int64)
    if isinstance(value, PyList):
        if value.shape is None:
            return None
        try:
            dtype = float_dtype if value.has_float and not value.has_tensor else None
            value = tf.constant(to_tensorflow(value), dtype=dtype)
        except (ValueError, TypeError, tf.errors.OpError):
            return None
    if is_tensor(value) and value.dtype in _OUTPUT_DTYPES:
        return np.asarray(value.numpy())
    return None


def _collect_outputs(
    env: Mapping[str, Any], parsed: ParsedProgram, outputs: Sequence[str] | None, float_dtype: Any
) -> dict[str, np.ndarray[Any, Any]]:
    values: dict[str, np.ndarray[Any, Any]] = {}
    for index, name in enumerate(parsed.assigned_names if outputs is None else outputs):
        array = _output_array(env[name], float_dtype)
        if array is None:
            if outputs is not None:
                raise InvalidInput(
                    f"output {name!r} is {describe(env[name])}; only numeric tensors can be returned "
                    "(cast bool tensors with tf.cast)",
                    ("body", "outputs", index),
                )
            continue
        values[name] = array
    return values


@contextlib.contextmanager
def _tape_errors(index: int) -> Iterator[None]:
    try:
        yield
    except ComputeError:
        raise
    except RuntimeError as error:
        if str(error).startswith(_NON_PERSISTENT):
            raise NonPersistentTapeError(str(error), index) from None
        raise TapeSemanticsError(tensorflow_message(error), index) from error
    except Exception as error:  # TensorFlow's errors: shapes of output_gradients, pfor, ...
        raise TapeSemanticsError(tensorflow_message(error), index) from error


def _to_numpy(value: Any) -> np.ndarray[Any, Any] | None:
    if value is None:
        return None
    if isinstance(value, tf.IndexedSlices):  # gradients through tf.gather on a variable
        value = tf.convert_to_tensor(value)
    return np.asarray(value.numpy())


class _TapeRunner:
    """Runs the program (possibly several times) and answers the compute entries."""

    def __init__(
        self,
        parsed: ParsedProgram,
        inputs: Mapping[str, Any],
        *,
        float_dtype: Any,
        max_elements: int,
        watch: Sequence[str],
        watch_accessed_variables: bool,
    ) -> None:
        self.parsed = parsed
        self.inputs = inputs
        self.float_dtype = float_dtype
        self.max_elements = max_elements
        self.watch = watch
        self.watch_accessed_variables = watch_accessed_variables

    def run(self, tapes: Sequence[Any], on_assign: AssignHook | None = None) -> _Interpreter:
        for tape in tapes:
            for name in self.watch:
                tape.watch(self.inputs[name])
        interpreter = _Interpreter(
            self.parsed,
            self.inputs,
            float_dtype=self.float_dtype,
            max_elements=self.max_elements,
            tapes=tapes,
            on_assign=on_assign,
        )
        return interpreter.run()

    # checks on the values of the main run

    @staticmethod
    def tensor(env: Mapping[str, Any], name: str, index: int, role: str) -> Any:
        value = env[name]
        if not is_tensor(value):
            raise TapeSemanticsError(
                f"{role} {name!r} is {describe(value)}, not a tensor; make it one with tf.constant(...)", index
            )
        if not value.dtype.is_floating:
            raise TapeSemanticsError(
                f"only float tensors are differentiable: {role} {name!r} is {value.dtype.name}", index
            )
        return value

    def check_size(self, index: int, count: int, what: str, *, vectorised: int = 0, peak: int = 1) -> None:
        if count > self.max_elements:
            raise LimitExceeded(
                f"{what} would have {count:,} elements, above the limit of {self.max_elements:,}",
                ("body", "compute", index),
            )
        if vectorised * peak > TOTAL_FACTOR * self.max_elements:
            raise LimitExceeded(
                f"{what} vectorises the backward pass over {vectorised:,} target elements, and the program's "
                f"largest tensor has {peak:,}: above {TOTAL_FACTOR * self.max_elements:,} elements",
                ("body", "compute", index),
            )

    # compute kinds

    def answer(self, index: int, request: ComputeRequest, tape: Any, main: _Interpreter) -> ComputeResult:
        unconnected = tf.UnconnectedGradients.ZERO if request.unconnected == "zero" else tf.UnconnectedGradients.NONE
        target = self.tensor(main.env, request.target, index, "target")
        sources = [self.tensor(main.env, s, index, "source") for s in request.sources]
        target_size = element_count(target)
        if request.kind == "gradient":
            values = self._gradient(index, request, tape=tape, target=target, sources=sources, unconnected=unconnected)
        elif request.kind == "jacobian":
            for name, source in zip(request.sources, sources, strict=True):
                self.check_size(
                    index,
                    target_size * element_count(source),
                    f"the Jacobian of {request.target!r} by {name!r}",
                    vectorised=target_size,
                    peak=main.peak,
                )
            with _tape_errors(index):
                jacobians = tape.jacobian(target, sources, unconnected_gradients=unconnected)
            values = [_to_numpy(j) for j in jacobians]
        elif request.kind == "batch_jacobian":
            values = [
                self._batch_jacobian(
                    index,
                    request,
                    tape=tape,
                    target=target,
                    source=sources[0],
                    unconnected=unconnected,
                    peak=main.peak,
                )
            ]
        elif request.kind == "hessian":
            values = self._hessian(
                index, request, target=target, sources=sources, unconnected=unconnected, peak=main.peak
            )
        else:
            values = [self._jvp(index, request, sources, unconnected)]
        return ComputeResult(request.kind, request.target, tuple(request.sources), values)

    def _gradient(
        self, index: int, request: ComputeRequest, *, tape: Any, target: Any, sources: list[Any], unconnected: Any
    ) -> list[np.ndarray[Any, Any] | None]:
        output_gradients = None
        if request.output_gradients is not None:
            given = np.asarray(request.output_gradients)
            if given.shape != tensor_shape(target):
                raise TapeSemanticsError(
                    f"output_gradients has shape {list(given.shape)}, the target {request.target!r} "
                    f"has shape {list(tensor_shape(target))}",
                    index,
                    ("body", "compute", index, "output_gradients"),
                )
            output_gradients = _given_as(
                given, target.dtype, index, ("body", "compute", index, "output_gradients"), "output_gradients"
            )
        with _tape_errors(index):
            gradients = tape.gradient(
                target, sources, output_gradients=output_gradients, unconnected_gradients=unconnected
            )
        return [_to_numpy(g) for g in gradients]

    def _batch_jacobian(
        self, index: int, request: ComputeRequest, *, tape: Any, target: Any, source: Any, unconnected: Any, peak: int
    ) -> np.ndarray[Any, Any] | None:
        target_shape, source_shape = tensor_shape(target), tensor_shape(source)
        if not target_shape or not source_shape or target_shape[0] != source_shape[0]:
            raise TapeSemanticsError(
                f"batch_jacobian needs target and source with the same first (batch) axis; "
                f"{request.target!r} has shape {list(target_shape)}, {request.sources[0]!r} has "
                f"{list(source_shape)}",
                index,
            )
        batch = target_shape[0]
        per_sample = element_count(target) // batch if batch else 0
        self.check_size(
            index,
            element_count(target) * (element_count(source) // batch if batch else 0),
            f"the batch Jacobian of {request.target!r}",
            vectorised=per_sample,
            peak=peak,
        )
        with _tape_errors(index):
            return _to_numpy(tape.batch_jacobian(target, source, unconnected_gradients=unconnected))

    def _hessian(
        self, index: int, request: ComputeRequest, *, target: Any, sources: list[Any], unconnected: Any, peak: int
    ) -> list[np.ndarray[Any, Any] | None]:
        if tensor_shape(target) != ():
            raise TapeSemanticsError(
                f"hessian needs a scalar target; {request.target!r} has shape {list(tensor_shape(target))} "
                "(reduce it with tf.reduce_sum first)",
                index,
            )
        for name, source in zip(request.sources, sources, strict=True):
            size = element_count(source)
            self.check_size(index, size * size, f"the Hessian block of {name!r}", vectorised=size, peak=peak)
        with tf.GradientTape(persistent=True, watch_accessed_variables=self.watch_accessed_variables) as outer:
            with tf.GradientTape(watch_accessed_variables=self.watch_accessed_variables) as inner:
                rerun = self.run((outer, inner))
            rerun_sources = [rerun.env[name] for name in request.sources]
            with _tape_errors(index):
                first = inner.gradient(rerun.env[request.target], rerun_sources, unconnected_gradients=unconnected)
        blocks = []
        with _tape_errors(index):
            for gradient, source in zip(first, rerun_sources, strict=True):
                block = (
                    None if gradient is None else outer.jacobian(gradient, source, unconnected_gradients=unconnected)
                )
                blocks.append(_to_numpy(block))
        return blocks

    def _jvp(
        self, index: int, request: ComputeRequest, sources: list[Any], unconnected: Any
    ) -> np.ndarray[Any, Any] | None:
        tangents = []
        given_tangents = request.tangents or ()
        for position, (name, source, given) in enumerate(zip(request.sources, sources, given_tangents, strict=True)):
            tangent = np.asarray(given)
            if tangent.shape != tensor_shape(source):
                raise TapeSemanticsError(
                    f"the tangent for {name!r} has shape {list(tangent.shape)}, the source has "
                    f"{list(tensor_shape(source))}",
                    index,
                    ("body", "compute", index, "tangents", position),
                )
            where = ("body", "compute", index, "tangents", position)
            tangents.append(_given_as(tangent, source.dtype, index, where, f"the tangent for {name!r}"))
        # a source the program assigns starts its accumulator when its last assignment runs
        pending = {
            position: (name, self.parsed.last_assignment[name])
            for position, name in enumerate(request.sources)
            if name in self.parsed.last_assignment
        }
        with contextlib.ExitStack() as stack:
            accumulators = []

            def start(primal: Any, tangent: Any) -> None:
                with _tape_errors(index):
                    accumulators.append(stack.enter_context(tf.autodiff.ForwardAccumulator(primal, tangent)))

            for position, name in enumerate(request.sources):
                if position not in pending:
                    start(self.inputs[name], tangents[position])

            def on_assign(name: str, statement: int, value: Any) -> None:
                for position, (source, last) in list(pending.items()):
                    if source == name and last == statement:
                        del pending[position]
                        start(value, tangents[position])

            rerun = self.run((), on_assign)
        final_target = rerun.env[request.target]
        with _tape_errors(index):
            products = [a.jvp(final_target, unconnected_gradients=unconnected) for a in accumulators]
        present = [p for p in products if p is not None]
        if not present:
            return None
        return _to_numpy(tf.add_n(present) if len(present) > 1 else present[0])


def run_tape(
    inputs: Mapping[str, TapeInput],
    program: str | ParsedProgram,
    *,
    compute: Sequence[ComputeRequest],
    watch: Sequence[str] = (),
    persistent: bool = False,
    watch_accessed_variables: bool = True,
    outputs: Sequence[str] | None = None,
    float_dtype: str = "float32",
    max_elements: int = 4_194_304,
) -> TapeRun:
    """Run `program` under `tf.GradientTape(persistent, watch_accessed_variables)` and answer `compute`.

    Inputs become tf.constant (their own dtype) or tf.Variable(trainable=...); the names in `watch`
    are watched before the program runs. Results come in the order of `compute`; `values` holds
    `outputs` (default: every name the program assigns that holds a numeric value, in order).
    """
    parsed = program if isinstance(program, ParsedProgram) else parse_program(program)
    dtype = _float_dtype(float_dtype)
    _check_inputs(inputs, max_elements)
    watch_names = _check_watch(watch, inputs)
    known = set(inputs) | set(parsed.assigned_names)
    _check_compute(compute, known)
    _check_outputs(outputs, known)
    tensors = {
        name: tf.Variable(spec.value, trainable=spec.trainable) if spec.variable else tf.constant(spec.value)
        for name, spec in inputs.items()
    }
    runner = _TapeRunner(
        parsed,
        tensors,
        float_dtype=dtype,
        max_elements=max_elements,
        watch=watch_names,
        watch_accessed_variables=watch_accessed_variables,
    )
    with tf.GradientTape(persistent=persistent, watch_accessed_variables=watch_accessed_variables) as tape:
        main = runner.run((tape,))
    values = _collect_outputs(main.env, parsed, outputs, dtype)
    results = [runner.answer(index, request, tape, main) for index, request in enumerate(compute)]
    return TapeRun(values, results)
