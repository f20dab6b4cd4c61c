"""The static half of the interpreter: one walk over the tree that checks each node against the
language's table of constructs and builds the checked program the interpreter runs.

A construct is a class with a `check` classmethod (ast node -> checked node, or a ProgramError
naming line and column) and an `evaluate` / `execute` / `bind` method (the run). `Language` is the
table from ast node types to those `check`s; a node type it does not list is refused.
"""

from __future__ import annotations

import abc
import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.compute.errors import ProgramError

if TYPE_CHECKING:
    from service.compute.program.run import Run

Position = tuple[int, int]
"""(line, 1-based column in characters) of a node in the program."""

RESERVED_NAMES = frozenset({"tf", "float", "print"})
"""Names with a fixed meaning in programs; inputs and assignments cannot take them."""


class Expression(abc.ABC):
    """A checked expression: built once from its ast node, evaluated on every run of the program."""

    __slots__ = ()

    @abc.abstractmethod
    def evaluate(self, run: Run) -> Any:
        """The expression's value in `run`; errors carry the line and column of the failing node."""


class Statement(abc.ABC):
    """A checked statement, executed once per run of the program."""

    __slots__ = ()

    @abc.abstractmethod
    def execute(self, run: Run) -> None:
        """Run the statement: bind names, watch tensors, or evaluate for its errors."""


class Target(abc.ABC):
    """A checked assignment target."""

    __slots__ = ()

    @abc.abstractmethod
    def bind(self, run: Run, value: Any) -> None:
        """Bind `value` to the target's names in `run`."""


ExpressionCheck = Callable[[Any, "Checker"], Expression]
StatementCheck = Callable[[Any, "Checker", int], Statement]
"""(node, checker, index of the statement in the program) -> checked statement."""
TargetCheck = Callable[[Any, "Checker", int], Target]


@dataclass(frozen=True, kw_only=True)
class Language:
    """The table of supported constructs: ast node type -> its construct's `check`."""

    statements: Mapping[type[ast.AST], StatementCheck]
    expressions: Mapping[type[ast.AST], ExpressionCheck]
    targets: Mapping[type[ast.AST], TargetCheck]
    refused: Mapping[type[ast.AST], str]
    """How a refusal names a construct outside the language ("a while loop is not allowed ...")."""
    refused_targets: Mapping[type[ast.AST], str]
    """The refusal for an assignment target the language does not take, by node type."""
    any_target: str
    """The refusal for any other target."""


def position(node: ast.AST, lines: tuple[str, ...]) -> Position:
    """(line, 1-based column in characters) of a node; ast's col_offset counts UTF-8 bytes."""
    if not isinstance(node, ast.expr | ast.stmt | ast.keyword):
        return 1, 1
    text = lines[node.lineno - 1] if 0 < node.lineno <= len(lines) else ""
    return node.lineno, len(text.encode("utf-8")[: node.col_offset].decode("utf-8", errors="ignore")) + 1


def dotted(node: ast.AST) -> str | None:
    """`tf.nn.softmax` for an attribute chain rooted at a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def is_dunder(name: str) -> bool:
    return name.startswith("__")


class Checker:
    """One static walk: dispatches each node to its construct and records what the program assigns."""

    def __init__(self, language: Language, lines: tuple[str, ...]) -> None:
        self.language = language
        self.lines = lines
        self.assigned: dict[str, None] = {}
        """Names the program assigns, in order of first assignment."""
        self.last_assignment: dict[str, int] = {}
        """Name -> index of the last statement that assigns it."""

    def position(self, node: ast.AST) -> Position:
        return position(node, self.lines)

    def error(self, node: ast.AST, message: str) -> ProgramError:
        return ProgramError(message, *self.position(node))

    def refuse(self, node: ast.AST) -> ProgramError:
        construct = self.language.refused.get(type(node), type(node).__name__)
        return self.error(node, f"{construct} is not allowed in a tape program")

    # dispatch through the table

    def statement(self, index: int, node: ast.stmt) -> Statement:
        check = self.language.statements.get(type(node))
        if check is None:
            raise self.refuse(node)
        return check(node, self, index)

    def expression(self, node: ast.expr) -> Expression:
        check = self.language.expressions.get(type(node))
        if check is None:
            raise self.refuse(node)
        return check(node, self)

    def target(self, index: int, node: ast.expr) -> Target:
        check = self.language.targets.get(type(node))
        if check is None:
            raise self.error(node, self.language.refused_targets.get(type(node), self.language.any_target))
        return check(node, self, index)

    # rules shared by several constructs

    def name(self, node: ast.Name, *, store: bool = False) -> None:
        """A name may be read (not `tf`, not `print`) or bound (not reserved); never a dunder."""
        if is_dunder(node.id):
            raise self.error(node, f"dunder names ('{node.id}') are not allowed")
        if store and node.id in RESERVED_NAMES:
            raise self.error(node, f"'{node.id}' is reserved in a tape program")
        if not store and node.id == "tf":
            raise self.error(node, "'tf' is a namespace, not a value; call a function of it")
        if not store and node.id == "print":
            raise self.error(node, "print(...) is only allowed as a statement")

    def assign(self, index: int, name: str) -> None:
        """Statement `index` binds `name`."""
        self.assigned.setdefault(name, None)
        self.last_assignment[name] = index

    def reject_dunder_attributes(self, node: ast.AST) -> None:
        while isinstance(node, ast.Attribute):
            if is_dunder(node.attr):
                raise self.error(node, f"dunder attributes ('.{node.attr}') are not allowed")
            node = node.value
