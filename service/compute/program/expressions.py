"""Expression constructs other than calls: constants, names, list and tuple literals, arithmetic,
comparisons, dtype constants and subscripts. Each class checks its node and evaluates it.

The operators a program may use are data (`BINARY_OPERATORS`, `UNARY_OPERATORS`, `COMPARISONS`).
Python numbers meeting Python numbers stay Python arithmetic; anything meeting a tensor is TensorFlow's.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from service.compute.program import sizes
from service.compute.program.checker import Checker, Expression, Position, dotted
from service.compute.program.limits import INT64_MAX, INT64_MIN
from service.compute.program.ops import DTYPES
from service.compute.program.values import PyList, ValueProblem, describe, is_tensor, make_list, to_tensorflow

if TYPE_CHECKING:
    from service.compute.program.run import Run

Binary = Callable[[Any, Any], Any]


@dataclass(frozen=True, kw_only=True)
class Operator:
    """A binary operator or comparison: its symbol, and what it does to Python numbers and to tensors."""

    symbol: str
    python: Binary
    tensor: Binary


BINARY_OPERATORS: dict[type[ast.AST], Operator] = {
    ast.Add: Operator(symbol="+", python=operator.add, tensor=operator.add),
    ast.Sub: Operator(symbol="-", python=operator.sub, tensor=operator.sub),
    ast.Mult: Operator(symbol="*", python=operator.mul, tensor=operator.mul),
    ast.Div: Operator(symbol="/", python=operator.truediv, tensor=operator.truediv),
    ast.Pow: Operator(symbol="**", python=operator.pow, tensor=operator.pow),
    ast.MatMult: Operator(symbol="@", python=operator.matmul, tensor=operator.matmul),
}
# Tensor.__eq__ answers False instead of raising on incompatible shapes; the ops do not
COMPARISONS: dict[type[ast.AST], Operator] = {
    ast.Lt: Operator(symbol="<", python=operator.lt, tensor=operator.lt),
    ast.LtE: Operator(symbol="<=", python=operator.le, tensor=operator.le),
    ast.Gt: Operator(symbol=">", python=operator.gt, tensor=operator.gt),
    ast.GtE: Operator(symbol=">=", python=operator.ge, tensor=operator.ge),
    ast.Eq: Operator(symbol="==", python=operator.eq, tensor=tf.math.equal),
    ast.NotEq: Operator(symbol="!=", python=operator.ne, tensor=tf.math.not_equal),
}
UNARY_OPERATORS: dict[type[ast.AST], str] = {ast.USub: "-", ast.UAdd: "+"}

_HINTS = {
    "tf.Variable": "declare variables as inputs with variable: true",
    "tf.GradientTape": "the request sets up the tape (persistent, watch, watch_accessed_variables)",
    "tf.random": "random numbers are not available; pass the values as inputs",
}
"""What to do instead, for TensorFlow names a program may reach for (by prefix)."""


def unavailable(name: str) -> str:
    """The refusal of a `tf.` name outside the table, with a hint where one helps."""
    for prefix, hint in _HINTS.items():
        if name == prefix or name.startswith(prefix + "."):
            return f"{name} is not available in a tape program: {hint}"
    return f"{name} is not available in a tape program (GET /v1/ops lists the functions)"


def binary_operator(checker: Checker, node: ast.AST, kind: ast.operator) -> Operator:
    found = BINARY_OPERATORS.get(type(kind))
    if found is None:
        raise checker.error(node, f"the operator {type(kind).__name__} is not allowed (use + - * / ** @)")
    return found


# --- evaluation helpers --------------------------------------------------------------------------


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float)


def _int64_power_overflows(left: Any, right: Any) -> bool:
    """Whether `left ** right`, two Python integers, is certainly outside int64, known without computing it.

    |left| ≥ 2^(bits − 1), so a power with (bits − 1)·right ≥ 64 is at least 2^64. Any other power has fewer
    than 128 bits and is computed exactly, then range-checked like every integer result: 2**62 and (−2)**63
    fit, 2**63 does not. A negative exponent is Python's float, as in a TensorFlow program written in Python.
    """
    if not (isinstance(left, int) and isinstance(right, int)) or right <= 0 or abs(left) <= 1:
        return False
    return (abs(left).bit_length() - 1) * right >= 64


def _python_arithmetic(op: Operator, left: Any, right: Any) -> Any:
    if op.symbol == "@":
        raise ValueProblem("@ needs tensors, not Python numbers")
    if op.symbol == "**" and _int64_power_overflows(left, right):
        raise ValueProblem("integer power outside the int64 range")
    try:
        result = op.python(left, right)
    except ZeroDivisionError:
        raise ValueProblem("division by zero") from None
    except OverflowError:
        raise ValueProblem("numeric overflow") from None
    if isinstance(result, complex):
        raise ValueProblem("the result is a complex number, which is not supported")
    return _within_int64(result)


def _within_int64(result: Any) -> Any:
    """A Python number result, refused if it is an integer TensorFlow cannot convert (outside int64)."""
    if isinstance(result, int) and not isinstance(result, bool) and not INT64_MIN <= result <= INT64_MAX:
        raise ValueProblem("integer result outside the int64 range")
    return result


def _check_operands(symbol: str, left: Any, right: Any) -> None:
    for value in (left, right):
        if isinstance(value, tf.DType) or value is None:
            raise ValueProblem(f"{symbol} cannot take {describe(value)}")
    if not (is_tensor(left) or is_tensor(right)):
        raise ValueProblem(
            f"{symbol} between {describe(left)} and {describe(right)} is Python list arithmetic, "
            "not tensor maths; make one side a tensor with tf.constant(...)"
        )


def arithmetic(run: Run, op: Operator, left: Any, right: Any) -> Any:
    """`left <op> right` as Python (two numbers) or TensorFlow would compute it, sized first."""
    if _is_scalar(left) and _is_scalar(right):
        return _python_arithmetic(op, left, right)
    _check_operands(op.symbol, left, right)
    if op.symbol == "@":
        arguments = sizes.matmul_operator_args(left, right)
        run.admit(sizes.matmul(arguments), (left, right), sizes.matmul_work(arguments))
    else:
        run.admit(sizes.broadcast("x", "y")({"x": left, "y": right}), (left, right))
    return run.record(op.tensor(to_tensorflow(left), to_tensorflow(right)))


# --- the constructs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Constant(Expression):
    value: Any

    @classmethod
    def check(cls, node: ast.Constant, checker: Checker) -> Expression:
        value = node.value
        if isinstance(value, str):
            raise checker.error(node, "strings are not values in a tape program")
        if isinstance(value, bytes):
            raise checker.error(node, "bytes are not values in a tape program")
        if isinstance(value, complex):
            raise checker.error(node, "complex numbers are not supported")
        if value is Ellipsis:
            raise checker.error(node, "... is only allowed inside a subscript")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise checker.error(node, "integer literal outside the int64 range")
        return cls(value)

    def evaluate(self, run: Run) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class Name(Expression):
    name: str
    at: Position

    @classmethod
    def check(cls, node: ast.Name, checker: Checker) -> Expression:
        checker.name(node)
        return cls(node.id, checker.position(node))

    def evaluate(self, run: Run) -> Any:
        return run.lookup(self.name, self.at)


@dataclass(frozen=True, slots=True)
class Sequence(Expression):
    """A list or tuple literal."""

    elements: tuple[Expression, ...]
    is_tuple: bool
    at: Position

    @classmethod
    def check(cls, node: ast.List | ast.Tuple, checker: Checker) -> Expression:
        elements = tuple(checker.expression(element) for element in node.elts)
        return cls(elements, isinstance(node, ast.Tuple), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        items = [element.evaluate(run) for element in self.elements]
        with run.at(self.at):
            return make_list(items, is_tuple=self.is_tuple, max_elements=run.max_elements)


@dataclass(frozen=True, slots=True)
class BinOp(Expression):
    op: Operator
    left: Expression
    right: Expression
    at: Position

    @classmethod
    def check(cls, node: ast.BinOp, checker: Checker) -> Expression:
        op = binary_operator(checker, node, node.op)
        return cls(op, checker.expression(node.left), checker.expression(node.right), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        left, right = self.left.evaluate(run), self.right.evaluate(run)
        with run.at(self.at):
            return arithmetic(run, self.op, left, right)


@dataclass(frozen=True, slots=True)
class UnaryOp(Expression):
    symbol: str
    operand: Expression
    at: Position

    @classmethod
    def check(cls, node: ast.UnaryOp, checker: Checker) -> Expression:
        symbol = UNARY_OPERATORS.get(type(node.op))
        if symbol is None:
            raise checker.error(node, f"the unary operator {type(node.op).__name__} is not allowed")
        return cls(symbol, checker.expression(node.operand), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        operand = self.operand.evaluate(run)
        with run.at(self.at):
            if _is_scalar(operand):
                return _within_int64(-operand if self.symbol == "-" else +operand)
            if not is_tensor(operand):
                raise ValueProblem(f"unary {self.symbol} cannot take {describe(operand)}")
            return run.record(-operand) if self.symbol == "-" else operand


@dataclass(frozen=True, slots=True)
class Compare(Expression):
    op: Operator
    left: Expression
    right: Expression
    at: Position

    @classmethod
    def check(cls, node: ast.Compare, checker: Checker) -> Expression:
        if len(node.ops) != 1:
            raise checker.error(node, "chained comparisons are not allowed; compare two values at a time")
        op = COMPARISONS.get(type(node.ops[0]))
        if op is None:
            raise checker.error(node, f"the comparison {type(node.ops[0]).__name__} is not allowed")
        return cls(op, checker.expression(node.left), checker.expression(node.comparators[0]), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        left, right = self.left.evaluate(run), self.right.evaluate(run)
        with run.at(self.at):
            if _is_scalar(left) and _is_scalar(right):
                return self.op.python(left, right)
            _check_operands(self.op.symbol, left, right)
            run.admit(sizes.broadcast("x", "y")({"x": left, "y": right}), (left, right))
            return run.record(self.op.tensor(to_tensorflow(left), to_tensorflow(right)))


def dtype_constant(node: ast.Attribute, checker: Checker) -> Expression:
    """`tf.float32` and the other dtype constants, the only attributes a program may read: a `Constant`."""
    name = dotted(node)
    checker.reject_dunder_attributes(node)
    if name is not None and name in DTYPES:
        return Constant(DTYPES[name])
    if name is not None and name.split(".")[0] == "tf":
        raise checker.error(node, unavailable(name))
    raise checker.error(node, f"attribute access (.{node.attr}) is not allowed; only .numpy() may be called")


@dataclass(frozen=True, slots=True)
class Subscript(Expression):
    """`value[key]` with a key of integer constants, slices of them, None and ..., fixed when checked."""

    value: Expression
    key: Any
    at: Position

    @classmethod
    def check(cls, node: ast.Subscript, checker: Checker) -> Expression:
        value = checker.expression(node.value)
        return cls(value, _index(checker, node.slice), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        value = self.value.evaluate(run)
        with run.at(self.at):
            if is_tensor(value):
                return run.record(value[self.key])
            if isinstance(value, PyList):
                if isinstance(self.key, int):
                    if not -len(value.items) <= self.key < len(value.items):
                        raise ValueProblem(f"index {self.key} is out of range for a list of {len(value.items)}")
                    return value.items[self.key]
                if isinstance(self.key, slice):
                    return make_list(value.items[self.key], is_tuple=value.is_tuple, max_elements=run.max_elements)
                raise ValueProblem("a list takes one integer index or a slice")
            raise ValueProblem(f"cannot subscript {describe(value)}")


def _index(checker: Checker, node: ast.expr) -> Any:
    if isinstance(node, ast.Tuple):
        return tuple(_index_item(checker, element) for element in node.elts)
    return _index_item(checker, node)


def _index_item(checker: Checker, node: ast.expr) -> Any:
    if isinstance(node, ast.Slice):
        return slice(
            *(None if part is None else _integer(checker, part) for part in (node.lower, node.upper, node.step))
        )
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return Ellipsis
    return _integer(checker, node)


def _integer(checker: Checker, node: ast.expr) -> int:
    sign = 1
    operand = node
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        sign = -1 if isinstance(node.op, ast.USub) else 1
        operand = node.operand
    if (
        isinstance(operand, ast.Constant)
        and isinstance(operand.value, int)
        and not isinstance(operand.value, bool)
        and abs(operand.value) <= INT64_MAX
    ):
        return sign * operand.value
    raise checker.error(node, "subscripts take integer constants, slices of them, None or ...")
