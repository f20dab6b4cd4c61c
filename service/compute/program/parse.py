"""Parse a program with `ast`, enforce the size limits, and check it against the language's table.
No TensorFlow op runs here; nothing is ever passed to eval/exec/compile.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass

from service.compute.errors import LimitExceeded, ProgramError, ProgramLimitExceeded
from service.compute.program.checker import Checker, Language, Statement, position
from service.compute.program.language import TAPE_LANGUAGE
from service.compute.program.limits import MAX_DEPTH, MAX_PROGRAM_CHARS, MAX_STATEMENTS


@dataclass(frozen=True, eq=False, kw_only=True)
class ParsedProgram:
    """A program that passed the static checks: its checked statements, with every name resolved."""

    source: str
    statements: tuple[Statement, ...]
    assigned_names: tuple[str, ...]
    """Names the program assigns, in order of first assignment."""
    last_assignment: Mapping[str, int]
    """Name -> index of the last statement that assigns it."""


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
        raise LimitExceeded(f"the program has {statements} statements; the limit is {max_statements}", ("program",))
    if too_deep is not None:
        raise ProgramLimitExceeded(f"expressions nest more than {max_depth} levels deep", *position(too_deep, lines))


def parse_program(
    program: str,
    *,
    max_chars: int = MAX_PROGRAM_CHARS,
    max_statements: int = MAX_STATEMENTS,
    max_depth: int = MAX_DEPTH,
    language: Language = TAPE_LANGUAGE,
) -> ParsedProgram:
    """Parse and check a program statically (ast + the language's table): cheap, runs no TensorFlow op.

    Raises LimitExceeded (at ("program",)) for a program over `max_chars` characters or
    `max_statements` statements, ProgramLimitExceeded for nesting deeper than `max_depth`, and
    ProgramError (with line and column) for a syntax error or a construct outside the language.
    """
    if len(program) > max_chars:
        raise LimitExceeded(f"the program has {len(program):,} characters; the limit is {max_chars:,}", ("program",))
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
    checker = Checker(language, lines)
    statements = tuple(checker.statement(index, statement) for index, statement in enumerate(tree.body))
    return ParsedProgram(
        source=program,
        statements=statements,
        assigned_names=tuple(checker.assigned),
        last_assignment=dict(checker.last_assignment),
    )
