"""Calls: a function of the op table (by plain name or TensorFlow name), or `.numpy()`.

A call's arguments are matched against the op's parameters when the program is checked, so a run
only binds them, sizes the result (`OpSpec.size`, `OpSpec.work`) and calls the TensorFlow function.
`print(...)` and `<tape>.watch(...)` are statements (see `statements`), refused here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from service.compute.program.checker import Checker, Expression, Position, dotted, is_dunder
from service.compute.program.expressions import Constant, unavailable
from service.compute.program.ops import OPS_BY_NAME, OPS_BY_TF_NAME
from service.compute.program.opspec import REQUIRED, OpSpec, Param
from service.compute.program.values import PyList, ValueProblem, describe, is_tensor, to_tensorflow

if TYPE_CHECKING:
    from service.compute.program.run import Run

TAPE_METHODS = frozenset({"gradient", "jacobian", "batch_jacobian"})
"""Tape methods the request's compute entries answer; a program calling them is told so."""


def check_call(node: ast.Call, checker: Checker) -> Expression:
    """The construct for `ast.Call`: which call this is decides the checked node."""
    func = node.func
    checker.reject_dunder_attributes(func)
    if isinstance(func, ast.Name):
        if is_dunder(func.id):
            raise checker.error(func, f"dunder names ('{func.id}') are not allowed")
        if func.id == "print":
            raise checker.error(node, "print(...) is only allowed as a statement")
        op = OPS_BY_NAME.get(func.id)
        if op is None:
            raise checker.error(func, f"'{func.id}' is not a function of the tape language (see GET /v1/ops)")
        return OpCall.check(node, checker, op)
    if isinstance(func, ast.Attribute):
        name = dotted(func)
        if name is not None and name.split(".")[0] == "tf":
            op = OPS_BY_TF_NAME.get(name)
            if op is None:
                raise checker.error(func, unavailable(name))
            return OpCall.check(node, checker, op)
        if func.attr == "numpy":
            return Numpy.check(node, checker, func.value)
        if func.attr == "watch":
            raise checker.error(node, "<tape>.watch(...) is only allowed as a statement")
        if func.attr in TAPE_METHODS:
            raise checker.error(
                node, f".{func.attr}() is computed by the request's compute entries, not inside the program"
            )
        raise checker.error(func, f"the method .{func.attr}() is not allowed; only .numpy() may be called")
    raise checker.error(node, "only functions named by the tape language can be called")


def _positional(node: ast.Call, checker: Checker, op: OpSpec) -> tuple[Expression, ...]:
    arguments = []
    for position, argument in enumerate(node.args):
        if isinstance(argument, ast.Starred):
            raise checker.error(argument, "starred arguments (*args) are not allowed in a tape program")
        param = op.positional[position] if position < len(op.positional) else None
        arguments.append(_argument(checker, op, param, argument))
    if len(node.args) > len(op.positional):
        raise checker.error(
            node, f"{op.name}() takes at most {len(op.positional)} positional arguments ({len(node.args)} given)"
        )
    return tuple(arguments)


def _argument(checker: Checker, op: OpSpec, param: Param | None, node: ast.expr) -> Expression:
    """An argument's checked expression; a string literal only where its parameter lists it as a choice."""
    if param is not None and param.choices and isinstance(node, ast.Constant) and isinstance(node.value, str):
        if node.value not in param.choices:
            raise checker.error(
                node,
                f"{op.name}(): {param.name} must be one of {', '.join(map(repr, param.choices))}, not {node.value!r}",
            )
        return Constant(node.value)
    return checker.expression(node)


def _keywords(node: ast.Call, checker: Checker, op: OpSpec) -> tuple[tuple[str, Expression], ...]:
    names = {p.name: p for p in op.params}
    given = {p.name for p in op.positional[: len(node.args)]}
    keywords = []
    for keyword in node.keywords:
        if keyword.arg is None:
            raise checker.error(keyword, "**kwargs unpacking is not allowed in a tape program")
        if keyword.arg not in names:
            raise checker.error(keyword, f"{op.name}() got an unexpected keyword argument '{keyword.arg}'")
        if keyword.arg in given:
            raise checker.error(keyword, f"{op.name}() got multiple values for argument '{keyword.arg}'")
        given.add(keyword.arg)
        keywords.append((keyword.arg, _argument(checker, op, names[keyword.arg], keyword.value)))
    missing = [p.name for p in op.params if p.default is REQUIRED and p.name not in given]
    if missing:
        raise checker.error(node, f"{op.name}() is missing required argument '{missing[0]}'")
    return tuple(keywords)


@dataclass(frozen=True, slots=True)
class OpCall(Expression):
    """A call of a table function, its arguments already matched to the op's parameters."""

    op: OpSpec
    positional: tuple[Expression, ...]
    keywords: tuple[tuple[str, Expression], ...]
    at: Position

    @classmethod
    def check(cls, node: ast.Call, checker: Checker, op: OpSpec) -> Expression:
        positional = _positional(node, checker, op)
        return cls(op, positional, _keywords(node, checker, op), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        op = self.op
        positional = [argument.evaluate(run) for argument in self.positional]
        keywords = {name: argument.evaluate(run) for name, argument in self.keywords}
        with run.at(self.at, op.name):
            bound = op.bind(positional, keywords)
            _default_float(run, op, bound)
            view = op.with_defaults(bound)
            work = op.work(view) if op.work is not None else None
            run.admit(op.size(view), list(bound.values()), work)
            memo: dict[int, Any] = {}
            arguments = {name: to_tensorflow(value, memo) for name, value in bound.items()}
            return run.record(op.fn(**arguments))


@dataclass(frozen=True, slots=True)
class Numpy(Expression):
    """`t.numpy()`: the same values as a new constant, detached from the tape."""

    value: Expression
    at: Position

    @classmethod
    def check(cls, node: ast.Call, checker: Checker, tensor: ast.expr) -> Expression:
        if node.args or node.keywords:
            raise checker.error(node, ".numpy() takes no arguments")
        return cls(checker.expression(tensor), checker.position(node))

    def evaluate(self, run: Run) -> Any:
        value = self.value.evaluate(run)
        with run.at(self.at):
            if not is_tensor(value):
                raise ValueProblem(f".numpy() needs a tensor, not {describe(value)}")
            run.admit(None, (value,))
            return run.record(tf.constant(value.numpy()))


def flatten(value: Any) -> Iterator[Any]:
    """The tensors in a value (a tensor, or the tensors nested in a PyList)."""
    if isinstance(value, PyList):
        for item in value.items:
            yield from flatten(item)
    elif is_tensor(value):
        yield value


def is_float_tensor(value: Any) -> bool:
    return is_tensor(value) and value.dtype.is_floating


def _default_float(run: Run, op: OpSpec, bound: dict[str, Any]) -> None:
    """With a float64 request, float64 takes float32's place as TensorFlow's default float type."""
    if run.float_dtype == tf.float32 or bound.get("dtype") is not None:
        return
    data = [name for name in op.data if name in bound]
    if any(is_float_tensor(t) for name in data for t in flatten(bound[name])):
        return  # Python floats follow the float tensor they meet, as in TensorFlow
    if op.float_dtype_param:
        bound["dtype"] = run.float_dtype
        return
    for name in data:
        value = bound[name]
        if (isinstance(value, float)) or (isinstance(value, PyList) and value.has_float and not value.has_tensor):
            run.admit(None, (value,))
            bound[name] = run.record(tf.constant(to_tensorflow(value), dtype=run.float_dtype))
