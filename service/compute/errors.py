"""Exceptions raised by the compute layer. They carry the JSON location of the culprit, not HTTP.

The worker turns each into a `ServiceError` (422 for all of these); compute code never imports
FastAPI or the service's error module.
"""

from __future__ import annotations

from types import TracebackType

Loc = tuple[str | int, ...]


class ComputeError(Exception):
    """Base of every error the compute layer raises on purpose."""

    def __init__(self, message: str, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


class LocatedUnder:
    """Compute errors raised inside are re-raised with `prefix` before their location (`located_under`).
    A class rather than a generator: it wraps the busiest request's decoding, where a generator's context
    manager costs several times as much."""

    __slots__ = ("prefix",)

    def __init__(self, *prefix: str | int) -> None:
        self.prefix = prefix

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if isinstance(error, ComputeError):
            error.loc = (*self.prefix, *error.loc)


def located_under(*prefix: str | int) -> LocatedUnder:
    """Compute errors raised inside are re-raised with `prefix` before their location: a computation that
    passes part of its arguments on (a gradient check's tape run) places the errors found in that part."""
    return LocatedUnder(*prefix)


class InvalidInput(ComputeError):
    """A value, shape or dtype the computation cannot accept; `loc` is its JSON location."""


class LimitExceeded(InvalidInput):
    """A request (or an intermediate it would create) is larger than the configured limits."""


class ProgramError(InvalidInput):
    """An error in a /v1/tape program: syntax, a forbidden construct, or TensorFlow failing on a line."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        where = f"line {line}, column {column}: " if line is not None else ""
        loc: Loc = ("program",) if line is None else ("program", f"line {line}", f"col {column}")
        super().__init__(where + message, loc)
        self.line = line
        self.column = column


class TapeSemanticsError(InvalidInput):
    """A compute entry the tape cannot answer (unknown name, integer source, bad tangent shape...)."""

    def __init__(self, message: str, compute_index: int, loc: Loc = ()) -> None:
        super().__init__(message, loc or ("compute", compute_index))
        self.compute_index = compute_index


class NonPersistentTapeError(TapeSemanticsError):
    """A non-persistent tape was asked for a second set of gradients; message is TensorFlow's own."""


class ProgramLimitExceeded(ProgramError, LimitExceeded):
    """A /v1/tape program line is too deeply nested, or would create an intermediate above the limits."""


class JobFailed:
    """A result of an engine's merged `run` that answers its one job with `error`, while the other jobs of the
    call keep their answers (the worker raises it for that job's request alone)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
