"""What both checks share, with numpy only: the check's options, the tape run a tape check differentiates,
the checks of sources, claims and caps, and central differences turned into a `SourceCheck`.

Errors name locations relative to the check's own arguments: ("sources", i), ("claimed", name),
("epsilon",); () for the check as a whole (its deadline).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.compute.errors import InvalidInput, LimitExceeded, Loc
from service.compute.gradcheck.results import (
    Array,
    GradientCheck,
    SourceCheck,
    Tolerances,
    compare,
    name_index,
    summarise,
)

if TYPE_CHECKING:
    from service.compute.program import ComputeRequest, TapeInput
    from service.compute.program.parse import ParsedProgram

DEFAULT_EPSILON = 1e-6
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8

FD_CHUNK_ELEMENTS = 1 << 22
"""Elements one batched finite-difference pass may hold per intermediate (32 MiB in float64)."""

TAPE_FD_MAX_ELEMENTS = 1_000
"""A tape check re-runs the program twice per perturbed element, so it perturbs at most this many."""

MAX_FD_ELEMENTS = 20_000
"""The default cap on perturbed elements (TAPESERVE_MAX_FD_ELEMENTS)."""


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """How a check compares and how far it may go: the check's own fields."""

    claimed: Mapping[str, Array] = field(default_factory=dict)
    """The caller's gradients by source, compared with autodiff."""
    epsilon: float = DEFAULT_EPSILON
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    max_fd_elements: int = MAX_FD_ELEMENTS
    stop_at: float | None = None
    """Monotonic deadline: finite differences stop (LimitExceeded) once it has passed."""
    notes: Sequence[str] = ()
    """Notes the caller already has (casts, replaced dtypes), reported first."""

    @property
    def tolerances(self) -> Tolerances:
        return Tolerances(self.epsilon, self.rtol, self.atol)


DEFAULT_OPTIONS = CheckOptions()


@dataclass(frozen=True, kw_only=True)
class TapeCheck:
    """The tape run a check differentiates: `run_tape`'s arguments, with exactly one gradient entry.

    Errors of the run are located as `run_tape` locates them (the gradient is compute entry 0), under "tape".
    """

    inputs: Mapping[str, TapeInput]
    program: str | ParsedProgram
    gradient: ComputeRequest
    watch: Sequence[str] = ()
    persistent: bool = False
    watch_accessed_variables: bool = True
    float_dtype: str = "float64"
    max_elements: int = 4_194_304


def check_cap(sizes: Mapping[str, int], cap: int, loc: Loc, why: str) -> int:
    """The number of elements to perturb; LimitExceeded at `loc` above `cap`."""
    total = sum(sizes.values())
    if total > cap:
        parts = ", ".join(f"{name}: {size:,}" for name, size in sizes.items())
        raise LimitExceeded(
            f"the check would perturb {total:,} elements ({parts}), above the finite-difference cap of {cap:,} "
            f"{why}; check fewer or smaller sources",
            loc,
        )
    return total


def check_claims(claimed: Mapping[str, Array], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Every claim names a checked source and has its shape."""
    for name, value in claimed.items():
        loc: Loc = ("claimed", name)
        if name not in shapes:
            raise InvalidInput(f"unknown source {name!r}; the sources checked are {', '.join(shapes)}", loc)
        if tuple(np.shape(value)) != shapes[name]:
            raise InvalidInput(
                f"the claimed gradient for {name!r} has shape {list(np.shape(value))}, the source has "
                f"{list(shapes[name])}",
                loc,
            )


def check_deadline(stop_at: float | None) -> None:
    if stop_at is not None and time.monotonic() > stop_at:
        # the client already has its 504; this only frees the worker
        raise LimitExceeded("finite differences ran past the request's deadline", ())


Evaluate = Callable[[Array], float]
"""The checked scalar with one source's flat values replaced (a run of the computation)."""


@dataclass
class Differences:
    """Central finite differences of one source: the loss at fl(θₖ + ε) and fl(θₖ − ε) for every element k."""

    source: str
    shape: tuple[int, ...]
    plus: Array
    minus: Array
    plus_losses: Array
    minus_losses: Array

    @classmethod
    def around(cls, source: str, flat: Array, shape: tuple[int, ...], epsilon: float) -> Differences:
        """The perturbed values of the source's elements `flat` in their dtype (losses yet to fill in); 422
        where the two coincide (ε below θ's spacing)."""
        step = np.asarray(epsilon, dtype=flat.dtype)
        plus, minus = flat + step, flat - step
        vanished = plus == minus
        if vanished.any():
            k = int(np.argmax(vanished))
            where = name_index(source, [int(i) for i in np.unravel_index(k, shape)])
            raise InvalidInput(
                f"epsilon {epsilon:g} vanishes against {where} = {flat[k]:g} in {flat.dtype.name} (spacing "
                f"{np.spacing(flat[k]):.3g}); send a larger epsilon or dtype float64",
                ("epsilon",),
            )
        empty = np.empty(flat.size, dtype=np.float64)
        return cls(source, shape, plus, minus, empty, empty.copy())

    def numerical(self) -> Array:
        """(L(θ + ε·eₖ) − L(θ − ε·eₖ)) / (fl(θ + ε) − fl(θ − ε)), in the source's shape."""
        steps = self.plus.astype(np.float64) - self.minus.astype(np.float64)
        differences = self.plus_losses.astype(np.float64) - self.minus_losses.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            numerical: Array = differences / steps
        return numerical.reshape(self.shape)

    def rounding_floor(self, dtype: str, epsilon: float) -> float:
        """Rough absolute error of the differences from rounding alone: ε_machine·max|L| / ε."""
        largest = max(
            float(np.max(np.abs(self.plus_losses), initial=0.0)), float(np.max(np.abs(self.minus_losses), initial=0.0))
        )
        return float(np.finfo(dtype).eps) * largest / epsilon


def rerun_differences(
    name: str, flat: Array, shape: tuple[int, ...], evaluate: Evaluate, options: CheckOptions
) -> Differences:
    """The central differences of one source, `evaluate` run once per perturbed value (two per element)."""
    differences = Differences.around(name, flat, shape, options.epsilon)
    for k in range(flat.size):
        check_deadline(options.stop_at)
        for value, losses in (
            (differences.plus[k], differences.plus_losses),
            (differences.minus[k], differences.minus_losses),
        ):
            moved = flat.copy()
            moved[k] = value
            losses[k] = evaluate(moved)
    return differences


def source_check(differences: Differences, autodiff: Array, dtype: str, options: CheckOptions) -> SourceCheck:
    """Autodiff against the finite differences, and the claim (if any) against autodiff, in `dtype`."""
    name = differences.source
    autodiff = np.asarray(autodiff, dtype=dtype)
    numerical = differences.numerical()
    check = SourceCheck(
        source=name,
        autodiff=autodiff,
        numerical=np.asarray(numerical, dtype=dtype),
        comparison=compare(autodiff, numerical, options.rtol, options.atol),
        rounding_floor=differences.rounding_floor(dtype, options.epsilon),
    )
    claim = options.claimed.get(name)
    if claim is not None:
        check.claimed = np.asarray(claim, dtype=dtype)
        check.claimed_comparison = compare(claim, autodiff, options.rtol, options.atol)
    return check


def _precision_notes(dtype: str, epsilon: float) -> list[str]:
    if dtype == "float32" and epsilon < 1e-3:
        return [
            f"float32 finite differences with epsilon {epsilon:g} lose about 1e-7·|L|/ε to rounding; "
            "dtype float64 (the default) or an epsilon near 1e-3 gives a sharper check."
        ]
    return []


def conclude(
    checks: list[SourceCheck], *, dtype: str, options: CheckOptions, perturbed: int, notes: Sequence[str]
) -> GradientCheck:
    """The check's answer: every source's check, the worst error's verdict, and the notes."""
    return summarise(
        checks,
        dtype=dtype,
        tolerances=options.tolerances,
        perturbed=perturbed,
        notes=[*notes, *_precision_notes(dtype, options.epsilon)],
    )


def element_count(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    return {name: math.prod(shape) for name, shape in shapes.items()}
