"""Statement constructs and assignment targets: `=`, `+=` and friends, `print(...)`, `<tape>.watch(...)`,
a bare expression, `pass`; a name, or a tuple / list of names to unpack into."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import tensorflow as tf

from service.compute.errors import ProgramError
from service.compute.program.calls import flatten
from service.compute.program.checker import Checker, Expression, Position, Statement, Target
from service.compute.program.dtype_warnings import WATCHED_TENSOR, dtype_warning
from service.compute.program.expressions import Operator, arithmetic, binary_operator
from service.compute.program.values import PyList, ValueProblem, describe, element_count, is_tensor, tensor_shape

if TYPE_CHECKING:
    from service.compute.program.run import Run


# --- targets -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameTarget(Target):
    name: str
    statement: int

    @classmethod
    def check(cls, node: ast.Name, checker: Checker, index: int) -> Target:
        checker.name(node, store=True)
        checker.assign(index, node.id)
        return cls(node.id, index)

    def bind(self, run: Run, value: Any) -> None:
        run.assign(self.name, self.statement, value)


@dataclass(frozen=True, slots=True)
class Unpack(Target):
    """`a, b = value`: a PyList of as many items, or a tensor with as many rows (unstacked)."""

    targets: tuple[Target, ...]
    at: Position

    @classmethod
    def check(cls, node: ast.Tuple | ast.List, checker: Checker, index: int) -> Target:
        if not all(isinstance(element, ast.Name) for element in node.elts):
            raise checker.error(node, checker.language.any_target)
        return cls(tuple(checker.target(index, element) for element in node.elts), checker.position(node))

    def bind(self, run: Run, value: Any) -> None:
        count = len(self.targets)
        with run.at(self.at):
            if isinstance(value, PyList):
                items = list(value.items)
            elif is_tensor(value) and tensor_shape(value) and tensor_shape(value)[0] == count:
                items = list(run.record(tf.unstack(value, num=count)).items)
            else:
                raise ValueProblem(f"cannot unpack {describe(value)} into {count} names")
            if len(items) != count:
                raise ValueProblem(f"cannot unpack {len(items)} values into {count} names")
        for target, item in zip(self.targets, items, strict=True):
            target.bind(run, item)


# --- statements ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Assign(Statement):
    targets: tuple[Target, ...]
    value: Expression

    @classmethod
    def check(cls, node: ast.Assign, checker: Checker, index: int) -> Statement:
        targets = tuple(checker.target(index, target) for target in node.targets)
        return cls(targets, checker.expression(node.value))

    def execute(self, run: Run) -> None:
        value = self.value.evaluate(run)
        for target in self.targets:
            target.bind(run, value)


@dataclass(frozen=True, slots=True)
class AugAssign(Statement):
    """`name <op>= value`, as `name = name <op> value`."""

    name: str
    name_at: Position
    op: Operator
    value: Expression
    statement: int
    at: Position

    @classmethod
    def check(cls, node: ast.AugAssign, checker: Checker, index: int) -> Statement:
        if not isinstance(node.target, ast.Name):
            raise checker.error(node.target, "augmented assignment needs a plain name on the left")
        op = binary_operator(checker, node, node.op)
        checker.name(node.target, store=True)
        checker.assign(index, node.target.id)
        value = checker.expression(node.value)
        return cls(node.target.id, checker.position(node.target), op, value, index, checker.position(node))

    def execute(self, run: Run) -> None:
        current = run.lookup(self.name, self.name_at)
        value = self.value.evaluate(run)
        with run.at(self.at):
            result = arithmetic(run, self.op, current, value)
        run.assign(self.name, self.statement, result)


@dataclass(frozen=True, slots=True)
class Evaluate(Statement):
    """A bare expression: evaluated for its errors (`L.numpy()` is harmless), its value dropped."""

    value: Expression

    def execute(self, run: Run) -> None:
        self.value.evaluate(run)


@dataclass(frozen=True, slots=True)
class Print(Statement):
    """`print(...)`: a no-op kept so notebook lines paste; its arguments are checked, never evaluated."""

    @classmethod
    def check(cls, node: ast.Call, checker: Checker) -> Statement:
        for argument in [*node.args, *(k.value for k in node.keywords)]:
            if isinstance(argument, ast.Starred):
                raise checker.refuse(argument)
            if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                checker.expression(argument)
        for keyword in node.keywords:
            if keyword.arg is None:
                raise checker.error(keyword, "**kwargs unpacking is not allowed in a tape program")
        return cls()

    def execute(self, run: Run) -> None:
        return


@dataclass(frozen=True, slots=True)
class Watch(Statement):
    """`<tape>.watch(t, ...)`: every tape of the run watches the tensors the program made; a non-float one
    with TensorFlow's warning, as `tf.GradientTape.watch` gives it."""

    tape: str
    arguments: tuple[tuple[Expression, Position], ...]
    at: Position

    @classmethod
    def check(cls, node: ast.Call, checker: Checker, tape: ast.Name) -> Statement:
        checker.name(tape, store=True)
        if node.keywords or not node.args:
            raise checker.error(node, "watch takes the tensors to watch as positional arguments")
        arguments = tuple((checker.expression(a), checker.position(a)) for a in node.args)
        return cls(tape.id, arguments, checker.position(node))

    def execute(self, run: Run) -> None:
        if self.tape in run.env:
            raise ProgramError(
                f"'{self.tape}' is a value here; <tape>.watch(...) needs a name the program has not bound", *self.at
            )
        for argument, at in self.arguments:
            value = argument.evaluate(run)
            with run.at(at):
                tensors = list(flatten(value))
                if not tensors or (isinstance(value, PyList) and value.count != sum(map(element_count, tensors))):
                    raise ValueProblem(f"only tensors can be watched, not {describe(value)}")
                for tensor in tensors:
                    run.warn(dtype_warning(WATCHED_TENSOR, tensor))
                    for tape in run.tapes:
                        tape.watch(tensor)


def check_expression_statement(node: ast.Expr, checker: Checker, index: int) -> Statement:
    """The construct for `ast.Expr`: `print(...)`, `<tape>.watch(...)`, or an expression to evaluate."""
    value = node.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return Print.check(value, checker)
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "watch"
        and isinstance(value.func.value, ast.Name)
    ):
        return Watch.check(value, checker, value.func.value)
    return Evaluate(checker.expression(value))


@dataclass(frozen=True, slots=True)
class Pass(Statement):
    @classmethod
    def check(cls, node: ast.Pass, checker: Checker, index: int) -> Statement:
        return cls()

    def execute(self, run: Run) -> None:
        return
