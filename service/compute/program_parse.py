"""The static half of the tape-program interpreter: parse with `ast`, enforce the size limits, and
check every node against the language's whitelist. No TensorFlow op runs here.

Everything a program may name is resolved here, once: function calls to entries of the op table,
`tf.float32`-style attributes to dtypes, subscripts to constant indices. The evaluator only looks
these up; it never turns user text into an attribute lookup.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from service.compute.errors import LimitExceeded, ProgramError, ProgramLimitExceeded
from service.compute.program_ops import DTYPES, OPS_BY_NAME, OPS_BY_TF_NAME, REQUIRED, OpSpec
from service.compute.program_values import INT64_MAX

RESERVED_NAMES = frozenset({"tf", "float", "print"})
"""Names with a fixed meaning in programs; inputs and assignments cannot take them."""

TAPE_METHODS = frozenset({"gradient", "jacobian", "batch_jacobian"})

BINARY_OPERATORS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Pow: "**",
    ast.MatMult: "@",
}
COMPARISONS: dict[type[ast.cmpop], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
}

_CONSTRUCTS: dict[type[ast.AST], str] = {
    ast.Import: "import",
    ast.ImportFrom: "import",
    ast.FunctionDef: "def",
    ast.AsyncFunctionDef: "async def",
    ast.ClassDef: "class",
    ast.Return: "return",
    ast.Delete: "del",
    ast.For: "a for loop",
    ast.AsyncFor: "async for",
    ast.While: "a while loop",
    ast.If: "an if statement",
    ast.With: "a with block (the request sets up the tape)",
    ast.AsyncWith: "async with",
    ast.Match: "match",
    ast.Raise: "raise",
    ast.Try: "try",
    ast.TryStar: "try",
    ast.Assert: "assert",
    ast.Global: "global",
    ast.Nonlocal: "nonlocal",
    ast.Break: "break",
    ast.Continue: "continue",
    ast.AnnAssign: "an annotated assignment",
    ast.BoolOp: "and/or",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.Lambda: "lambda",
    ast.IfExp: "a conditional expression",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.ListComp: "a list comprehension",
    ast.SetComp: "a set comprehension",
    ast.DictComp: "a dict comprehension",
    ast.GeneratorExp: "a generator expression",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield from",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.Starred: "a starred expression",
    ast.Slice: "a slice outside a subscript",
}

_HINTS = {
    "tf.Variable": "declare variables as inputs with variable: true",
    "tf.GradientTape": "the request sets up the tape (persistent, watch, watch_accessed_variables)",
    "tf.random": "random numbers are not available; pass the values as inputs",
}


@dataclass(frozen=True)
class CallTarget:
    """What a call node calls: an op of the table, `.numpy()`, `<tape>.watch(...)` or `print(...)`."""

    kind: Literal["op", "numpy", "watch", "print"]
    op: OpSpec | None = None


@dataclass(frozen=True, eq=False)
class ParsedProgram:
    """A program that passed the static checks, with every name it uses already resolved."""

    source: str
    tree: ast.Module
    assigned_names: tuple[str, ...]
    """Names the program assigns, in order of first assignment."""
    last_assignment: Mapping[str, int]
    """Name -> index of the last statement that assigns it."""
    calls: Mapping[int, CallTarget]
    dtypes: Mapping[int, str]
    subscripts: Mapping[int, Any]
    lines: tuple[str, ...]

    def position(self, node: ast.AST) -> tuple[int, int]:
        """(line, 1-based column in characters) of a node; ast's col_offset counts UTF-8 bytes."""
        return _position(node, self.lines)


def _position(node: ast.AST, lines: tuple[str, ...]) -> tuple[int, int]:
    """(line, 1-based column in characters) of a node; ast's col_offset counts UTF-8 bytes."""
    if not isinstance(node, ast.expr | ast.stmt | ast.keyword):
        return 1, 1
    text = lines[node.lineno - 1] if 0 < node.lineno <= len(lines) else ""
    return node.lineno, len(text.encode("utf-8")[: node.col_offset].decode("utf-8", errors="ignore")) + 1


def _dotted(node: ast.AST) -> str | None:
    """`tf.nn.softmax` for an attribute chain rooted at a plain name, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _is_dunder(name: str) -> bool:
    return name.startswith("__")


def _check_depth_and_size(tree: ast.Module, lines: tuple[str, ...], max_statements: int, max_depth: int) -> None:
    """Count statements and measure expression nesting without recursion (the tree may be deep)."""
    statements = 0
    too_deep: ast.AST | None = None
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.stmt):
            statements += 1
            depth = 0
        elif depth > max_depth and too_deep is None:
            too_deep = node
        stack.extend(
            (child, depth + 1) for child in ast.iter_child_nodes(node) if not isinstance(child, ast.expr_context)
        )
    if statements > max_statements:
        raise LimitExceeded(
            f"the program has {statements} statements; the limit is {max_statements}", ("body", "program")
        )
    if too_deep is not None:
        raise ProgramLimitExceeded(f"expressions nest more than {max_depth} levels deep", *_position(too_deep, lines))


def parse_program(
    program: str, *, max_chars: int = 20_000, max_statements: int = 500, max_depth: int = 50
) -> ParsedProgram:
    """Parse and check a program statically (ast + whitelist): cheap, runs no TensorFlow op.

    Raises LimitExceeded (at ("body", "program")) for a program over `max_chars` characters or
    `max_statements` statements, ProgramLimitExceeded for nesting deeper than `max_depth`, and
    ProgramError (with line and column) for a syntax error or a construct outside the language.
    """
    if len(program) > max_chars:
        raise LimitExceeded(
            f"the program has {len(program):,} characters; the limit is {max_chars:,}", ("body", "program")
        )
    lines = tuple(re.split(r"\r\n|\r|\n", program))
    try:
        tree = ast.parse(program, mode="exec")
    except SyntaxError as error:
        raise ProgramError(f"syntax error: {error.msg}", error.lineno or 1, error.offset or 1) from None
    except (RecursionError, MemoryError):
        raise ProgramError("the program is nested too deeply to parse") from None
    except ValueError as error:  # e.g. a NUL character in the source
        raise ProgramError(f"the program cannot be parsed: {error}") from None
    _check_depth_and_size(tree, lines, max_statements, max_depth)
    return _Validator(program, tree, lines).parsed()


class _Validator:
    """Walks the (already depth-checked) tree and accepts only the language's constructs."""

    def __init__(self, source: str, tree: ast.Module, lines: tuple[str, ...]) -> None:
        self.source = source
        self.tree = tree
        self.lines = lines
        self.assigned: dict[str, None] = {}
        self.last_assignment: dict[str, int] = {}
        self.calls: dict[int, CallTarget] = {}
        self.dtypes: dict[int, str] = {}
        self.subscripts: dict[int, Any] = {}

    def parsed(self) -> ParsedProgram:
        for index, statement in enumerate(self.tree.body):
            self._statement(index, statement)
        return ParsedProgram(
            self.source,
            self.tree,
            tuple(self.assigned),
            self.last_assignment,
            self.calls,
            self.dtypes,
            self.subscripts,
            self.lines,
        )

    def _error(self, node: ast.AST, message: str) -> ProgramError:
        line, column = _position(node, self.lines)
        return ProgramError(message, line, column)

    def _forbidden(self, node: ast.AST) -> ProgramError:
        construct = _CONSTRUCTS.get(type(node), type(node).__name__)
        return self._error(node, f"{construct} is not allowed in a tape program")

    # statements

    def _statement(self, index: int, node: ast.stmt) -> None:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                self._target(index, target)
            self._expression(node.value)
        elif isinstance(node, ast.AugAssign):
            if not isinstance(node.target, ast.Name):
                raise self._error(node.target, "augmented assignment needs a plain name on the left")
            self._operator(node, node.op)
            self._name(node.target, store=True)
            self._record_assignment(index, node.target.id)
            self._expression(node.value)
        elif isinstance(node, ast.Expr):
            self._expression_statement(node.value)
        elif isinstance(node, ast.Pass):
            return
        else:
            raise self._forbidden(node)

    def _target(self, index: int, node: ast.expr) -> None:
        if isinstance(node, ast.Name):
            self._name(node, store=True)
            self._record_assignment(index, node.id)
        elif isinstance(node, ast.Tuple | ast.List) and all(isinstance(e, ast.Name) for e in node.elts):
            for element in node.elts:
                self._target(index, element)
        elif isinstance(node, ast.Subscript):
            raise self._error(node, "item assignment is not allowed (tensors are immutable)")
        elif isinstance(node, ast.Attribute):
            raise self._error(node, "attribute assignment is not allowed")
        else:
            raise self._error(node, "assign to a name, or unpack into a flat tuple of names")

    def _record_assignment(self, index: int, name: str) -> None:
        self.assigned.setdefault(name, None)
        self.last_assignment[name] = index

    def _expression_statement(self, node: ast.expr) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            # a no-op kept so notebook lines paste; its arguments are checked, never evaluated
            self.calls[id(node)] = CallTarget("print")
            for argument in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(argument, ast.Starred):
                    raise self._forbidden(argument)
                if not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)):
                    self._expression(argument)
            for keyword in node.keywords:
                if keyword.arg is None:
                    raise self._error(keyword, "**kwargs unpacking is not allowed in a tape program")
            return
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "watch"
            and isinstance(node.func.value, ast.Name)
        ):
            self._name(node.func.value, store=True)
            if node.keywords or not node.args:
                raise self._error(node, "watch takes the tensors to watch as positional arguments")
            for argument in node.args:
                self._expression(argument)
            self.calls[id(node)] = CallTarget("watch")
            return
        self._expression(node)

    # expressions

    def _name(self, node: ast.Name, *, store: bool = False) -> None:
        if _is_dunder(node.id):
            raise self._error(node, f"dunder names ('{node.id}') are not allowed")
        if store and node.id in RESERVED_NAMES:
            raise self._error(node, f"'{node.id}' is reserved in a tape program")
        if not store and node.id == "tf":
            raise self._error(node, "'tf' is a namespace, not a value; call a function of it")
        if not store and node.id == "print":
            raise self._error(node, "print(...) is only allowed as a statement")

    def _operator(self, node: ast.AST, operator: ast.operator) -> None:
        if type(operator) not in BINARY_OPERATORS:
            raise self._error(node, f"the operator {type(operator).__name__} is not allowed (use + - * / ** @)")

    def _expression(self, node: ast.expr) -> None:
        if isinstance(node, ast.Constant):
            self._constant(node)
        elif isinstance(node, ast.Name):
            self._name(node)
        elif isinstance(node, ast.List | ast.Tuple):
            for element in node.elts:
                self._expression(element)
        elif isinstance(node, ast.BinOp):
            self._operator(node, node.op)
            self._expression(node.left)
            self._expression(node.right)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise self._error(node, f"the unary operator {type(node.op).__name__} is not allowed")
            self._expression(node.operand)
        elif isinstance(node, ast.Compare):
            if len(node.ops) != 1:
                raise self._error(node, "chained comparisons are not allowed; compare two values at a time")
            if type(node.ops[0]) not in COMPARISONS:
                raise self._error(node, f"the comparison {type(node.ops[0]).__name__} is not allowed")
            self._expression(node.left)
            self._expression(node.comparators[0])
        elif isinstance(node, ast.Call):
            self._call(node)
        elif isinstance(node, ast.Attribute):
            self._attribute_value(node)
        elif isinstance(node, ast.Subscript):
            self._expression(node.value)
            self.subscripts[id(node)] = self._index(node.slice)
        else:
            raise self._forbidden(node)

    def _constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, str):
            raise self._error(node, "strings are not values in a tape program")
        if isinstance(value, bytes):
            raise self._error(node, "bytes are not values in a tape program")
        if isinstance(value, complex):
            raise self._error(node, "complex numbers are not supported")
        if value is Ellipsis:
            raise self._error(node, "... is only allowed inside a subscript")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64_MAX:
            raise self._error(node, "integer literal outside the int64 range")

    def _attribute_value(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        self._reject_dunder_attributes(node)
        if dotted is not None and dotted in DTYPES:
            self.dtypes[id(node)] = dotted
            return
        if dotted is not None and dotted.split(".")[0] == "tf":
            raise self._error(node, f"{dotted} is not available in a tape program{self._hint(dotted)}")
        raise self._error(node, f"attribute access (.{node.attr}) is not allowed; only .numpy() may be called")

    def _reject_dunder_attributes(self, node: ast.AST) -> None:
        while isinstance(node, ast.Attribute):
            if _is_dunder(node.attr):
                raise self._error(node, f"dunder attributes ('.{node.attr}') are not allowed")
            node = node.value

    def _hint(self, dotted: str) -> str:
        for prefix, hint in _HINTS.items():
            if dotted == prefix or dotted.startswith(prefix + "."):
                return f": {hint}"
        return " (GET /v1/ops lists the functions)"

    def _call(self, node: ast.Call) -> None:
        func = node.func
        self._reject_dunder_attributes(func)
        if isinstance(func, ast.Name):
            if _is_dunder(func.id):
                raise self._error(func, f"dunder names ('{func.id}') are not allowed")
            if func.id == "print":
                raise self._error(node, "print(...) is only allowed as a statement")
            op = OPS_BY_NAME.get(func.id)
            if op is None:
                raise self._error(func, f"'{func.id}' is not a function of the tape language (see GET /v1/ops)")
            self._op_call(node, op)
            return
        if isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            if dotted is not None and dotted.split(".")[0] == "tf":
                op = OPS_BY_TF_NAME.get(dotted)
                if op is None:
                    raise self._error(func, f"{dotted} is not available in a tape program{self._hint(dotted)}")
                self._op_call(node, op)
                return
            if func.attr == "numpy":
                if node.args or node.keywords:
                    raise self._error(node, ".numpy() takes no arguments")
                self._expression(func.value)
                self.calls[id(node)] = CallTarget("numpy")
                return
            if func.attr == "watch":
                raise self._error(node, "<tape>.watch(...) is only allowed as a statement")
            if func.attr in TAPE_METHODS:
                raise self._error(
                    node, f".{func.attr}() is computed by the request's compute entries, not inside the program"
                )
            raise self._error(func, f"the method .{func.attr}() is not allowed; only .numpy() may be called")
        raise self._error(node, "only functions named by the tape language can be called")

    def _op_call(self, node: ast.Call, op: OpSpec) -> None:
        positional = [p for p in op.params if not p.keyword_only]
        names = {p.name for p in op.params}
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                raise self._error(argument, "starred arguments (*args) are not allowed in a tape program")
            self._expression(argument)
        if len(node.args) > len(positional):
            raise self._error(
                node, f"{op.name}() takes at most {len(positional)} positional arguments ({len(node.args)} given)"
            )
        given = {p.name for p in positional[: len(node.args)]}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise self._error(keyword, "**kwargs unpacking is not allowed in a tape program")
            if keyword.arg not in names:
                raise self._error(keyword, f"{op.name}() got an unexpected keyword argument '{keyword.arg}'")
            if keyword.arg in given:
                raise self._error(keyword, f"{op.name}() got multiple values for argument '{keyword.arg}'")
            given.add(keyword.arg)
            self._expression(keyword.value)
        missing = [p.name for p in op.params if p.default is REQUIRED and p.name not in given]
        if missing:
            raise self._error(node, f"{op.name}() is missing required argument '{missing[0]}'")
        self.calls[id(node)] = CallTarget("op", op)

    # subscripts

    def _index(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Tuple):
            return tuple(self._index_item(element) for element in node.elts)
        return self._index_item(node)

    def _index_item(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Slice):
            return slice(
                *(None if part is None else self._integer(part) for part in (node.lower, node.upper, node.step))
            )
        if isinstance(node, ast.Constant) and node.value is None:
            return None
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            return Ellipsis
        return self._integer(node)

    def _integer(self, node: ast.expr) -> int:
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
        raise self._error(node, "subscripts take integer constants, slices of them, None or ...")
