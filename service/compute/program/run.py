"""The dynamic half of the interpreter: one run of a checked program, with its names, the tapes that
`<tape>.watch(...)` feeds, and the size accounting every tensor passes before TensorFlow allocates it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import tensorflow as tf

from service.compute.errors import ComputeError, ProgramError, ProgramLimitExceeded
from service.compute.program.checker import Position, Statement
from service.compute.program.limits import TOTAL_FACTOR, TOTAL_WORK_FACTOR, WORK_FACTOR
from service.compute.program.values import SizeProblem, ValueProblem, element_count, is_tensor, make_list

AssignHook = Callable[[str, int, Any], None]
"""Called with (name, statement index, value) each time the program binds a name."""


def tensorflow_message(error: BaseException) -> str:
    """TensorFlow's own message, first line only, without its internal function-node prefix."""
    text = error.message if isinstance(error, tf.errors.OpError) else str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text).strip()
    first = text.splitlines()[0].strip() if text else ""
    first = re.sub(r"\s*\[Op:[^\]]*\].*$", "", first)
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


class Run:
    """One run of a checked program. `tapes` get `<tape>.watch(...)`; `on_assign` sees each binding."""

    def __init__(
        self,
        inputs: Mapping[str, Any],
        *,
        float_dtype: Any,
        max_elements: int,
        tapes: Sequence[Any],
        on_assign: AssignHook | None = None,
    ) -> None:
        self.env: dict[str, Any] = dict(inputs)
        self.float_dtype = float_dtype
        self.max_elements = max_elements
        self.budget = TOTAL_FACTOR * max_elements
        self.tapes = tuple(tapes)
        self.on_assign = on_assign
        sizes = [element_count(v) for v in inputs.values()]
        self.peak = max(sizes, default=1)
        """Elements of the largest tensor so far (bounds a jacobian's vectorised backward pass)."""
        self.total = sum(sizes)
        self.work = 0
        self.warnings: list[str] = []
        """TensorFlow's warnings during the run (watching a non-float tensor), in order."""

    def execute(self, statements: Sequence[Statement]) -> Run:
        for statement in statements:
            statement.execute(self)
        return self

    def warn(self, warning: str | None) -> None:
        if warning is not None and warning not in self.warnings:
            self.warnings.append(warning)

    # names

    def lookup(self, name: str, at: Position) -> Any:
        if name == "float":
            return self.float_dtype
        if name not in self.env:
            raise ProgramError(f"name '{name}' is not defined", *at)
        return self.env[name]

    def assign(self, name: str, statement: int, value: Any) -> None:
        self.env[name] = value
        if self.on_assign is not None:
            self.on_assign(name, statement, value)

    # errors carry the line and column of the node that failed

    @contextlib.contextmanager
    def at(self, where: Position, function: str | None = None) -> Iterator[None]:
        """Problems raised inside become ProgramErrors at `where` (TensorFlow's message, first line),
        led by the `function` called there."""
        lead = "" if function is None else f"{function}(): "
        try:
            yield
        except ComputeError:
            raise
        except SizeProblem as problem:
            raise ProgramLimitExceeded(lead + str(problem), *where) from None
        except ValueProblem as problem:
            raise ProgramError(lead + str(problem), *where) from None
        except Exception as error:  # TensorFlow's errors on user data: InvalidArgument, ValueError, ...
            raise ProgramError(lead + tensorflow_message(error), *where) from error

    # size accounting

    def admit(self, predicted: int | None, arguments: Sequence[Any], work: int | None = None) -> None:
        """Raise SizeProblem unless a result of `predicted` elements (None: no larger than the largest
        argument), costing `work` multiply-adds, fits every limit; then count its work."""
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

    def record(self, result: Any) -> Any:
        """Count a result's tensors towards the run's total; lists and tuples become PyLists."""
        if isinstance(result, list | tuple):
            items = [self.record(item) for item in result]
            return make_list(items, is_tuple=isinstance(result, tuple), max_elements=self.max_elements)
        if is_tensor(result):
            count = element_count(result)
            self.total += count
            self.peak = max(self.peak, count)
        return result
