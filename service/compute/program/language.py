"""The tape language as one table: every ast node type a program may use, mapped to its construct.

Both halves of the interpreter follow this table: the checker dispatches each node to its
construct's `check`, which returns the checked node whose `evaluate` / `execute` / `bind` the run
calls. A node type not listed is refused with its line and column, named by `REFUSED` where that
reads better than the ast class name.
"""

from __future__ import annotations

import ast

from service.compute.program.calls import check_call
from service.compute.program.checker import Language
from service.compute.program.expressions import (
    BinOp,
    Compare,
    Constant,
    Name,
    Sequence,
    Subscript,
    UnaryOp,
    dtype_constant,
)
from service.compute.program.statements import (
    Assign,
    AugAssign,
    NameTarget,
    Pass,
    Unpack,
    check_expression_statement,
)

REFUSED: dict[type[ast.AST], str] = {
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
"""How refusals name the constructs outside the language."""

TAPE_LANGUAGE = Language(
    statements={
        ast.Assign: Assign.check,
        ast.AugAssign: AugAssign.check,
        ast.Expr: check_expression_statement,
        ast.Pass: Pass.check,
    },
    expressions={
        ast.Constant: Constant.check,
        ast.Name: Name.check,
        ast.List: Sequence.check,
        ast.Tuple: Sequence.check,
        ast.BinOp: BinOp.check,
        ast.UnaryOp: UnaryOp.check,
        ast.Compare: Compare.check,
        ast.Call: check_call,
        ast.Attribute: dtype_constant,
        ast.Subscript: Subscript.check,
    },
    targets={
        ast.Name: NameTarget.check,
        ast.Tuple: Unpack.check,
        ast.List: Unpack.check,
    },
    refused=REFUSED,
    refused_targets={
        ast.Subscript: "item assignment is not allowed (tensors are immutable)",
        ast.Attribute: "attribute assignment is not allowed",
    },
    any_target="assign to a name, or unpack into a flat tuple of names",
)
