"""What a gradient check answers: comparisons of two gradients, one check per source, and the summary with
its verdict and notes. numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

VERDICT_BANDS: tuple[tuple[float, str], ...] = ((1e-7, "excellent"), (1e-4, "acceptable"), (1e-2, "suspicious"))
"""Upper bounds of the worst relative error for each verdict; above the last: "wrong"."""


@dataclass
class Comparison:
    """How far `candidate` is from `reference`, elementwise."""

    max_abs_error: float
    max_rel_error: float
    """max |a − b| / max(|a|, |b|), 0 where both are 0; infinite where one is non-finite and they differ."""
    worst_index: list[int]
    """Index of the largest absolute error (the first in row-major order on ties); [] for a scalar."""
    passed: bool
    """np.allclose semantics: |a − b| ≤ atol + rtol·|b| everywhere, b being the reference."""


def compare(candidate: npt.ArrayLike, reference: npt.ArrayLike, rtol: float, atol: float) -> Comparison:
    """Compare two arrays of one shape (float64 arithmetic)."""
    a = np.asarray(candidate, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes {a.shape} and {b.shape} differ")
    if a.size == 0:
        return Comparison(0.0, 0.0, [0] * a.ndim, True)
    with np.errstate(invalid="ignore", over="ignore"):
        same = a == b  # also equal infinities
        abs_error = np.where(same, 0.0, np.abs(a - b))
        abs_error = np.where(np.isnan(abs_error), np.inf, abs_error)
        scale = np.maximum(np.abs(a), np.abs(b))
        finite = np.isfinite(a) & np.isfinite(b)
        rel_error = np.where(same, 0.0, np.where(finite, abs_error / np.where(scale > 0, scale, 1.0), np.inf))
    worst = int(np.argmax(abs_error))
    return Comparison(
        max_abs_error=float(abs_error.reshape(-1)[worst]),
        max_rel_error=float(rel_error.max()),
        worst_index=[int(i) for i in np.unravel_index(worst, a.shape)],
        passed=bool(np.isclose(a, b, rtol=rtol, atol=atol).all()),
    )


def verdict_band(max_rel_error: float) -> str:
    """excellent (≤ 1e-7), acceptable (≤ 1e-4), suspicious (≤ 1e-2) or wrong, for the worst relative error."""
    for bound, band in VERDICT_BANDS:
        if max_rel_error <= bound:
            return band
    return "wrong"


@dataclass
class SourceCheck:
    """One source: autodiff against finite differences, and the claim (if any) against autodiff."""

    source: str
    autodiff: Array
    numerical: Array
    comparison: Comparison
    claimed: Array | None = None
    claimed_comparison: Comparison | None = None
    rounding_floor: float = 0.0
    """Rough absolute error of the finite differences from rounding alone: ε_machine·max|L| / ε."""


class Tolerances(NamedTuple):
    """How a check perturbs and compares: the central-difference step and `np.isclose`'s tolerances."""

    epsilon: float
    rtol: float
    atol: float


@dataclass
class GradientCheck:
    passed: bool
    dtype: str
    tolerances: Tolerances
    checks: list[SourceCheck]
    max_rel_error: float
    """The worst relative error of every comparison made (autodiff–numerical and claimed–autodiff)."""
    verdict: str
    perturbed_elements: int
    notes: list[str] = field(default_factory=list)


def name_index(source: str, index: Sequence[int]) -> str:
    return f"{source}[{', '.join(map(str, index))}]" if index else source


def _rounding_note(checks: list[SourceCheck]) -> list[str]:
    """One note naming every source whose differences from autodiff are all within the finite differences'
    rounding error (≤ 10× the floor) while its relative error is above the excellent band; [] if none is."""
    within = [
        check
        for check in checks
        if check.comparison.max_rel_error > VERDICT_BANDS[0][0]
        and 0 < check.comparison.max_abs_error <= 10 * check.rounding_floor
    ]
    if not within:
        return []
    floors = {f"{check.rounding_floor:.2g}" for check in within}
    shared = len(floors) == 1
    sources = ", ".join(
        f"{check.source} (at most {check.comparison.max_abs_error:.2g}"
        + ("" if shared else f", rounding about {check.rounding_floor:.2g}")
        + ")"
        for check in within
    )
    floor = f"about {next(iter(floors))} = ε_machine·max|L|/ε" if shared else "ε_machine·max|L|/ε"
    return [
        f"Every autodiff–finite-difference difference for {sources} is within the finite differences' own "
        f"rounding error ({floor}): the relative error is large only where the gradient is small."
    ]


def summarise(
    checks: list[SourceCheck], *, dtype: str, tolerances: Tolerances, perturbed: int, notes: list[str]
) -> GradientCheck:
    rtol, atol = tolerances.rtol, tolerances.atol
    comparisons = [(check.source, "autodiff vs finite differences", check.comparison) for check in checks]
    comparisons += [
        (check.source, "claimed vs autodiff", check.claimed_comparison)
        for check in checks
        if check.claimed_comparison is not None
    ]
    worst_source, worst_kind, worst = max(comparisons, key=lambda item: item[2].max_rel_error)
    passed = all(comparison.passed for _, _, comparison in comparisons)
    band = verdict_band(worst.max_rel_error)
    failing = [f"{source} ({kind})" for source, kind, comparison in comparisons if not comparison.passed]
    summary = (
        f"Worst relative error {worst.max_rel_error:.3g} ({band}): {worst_kind} for {worst_source}, "
        f"largest absolute error {worst.max_abs_error:.3g} at {name_index(worst_source, worst.worst_index)}."
    )
    if failing:
        summary += f" Outside rtol={rtol:g}, atol={atol:g}: {', '.join(failing)}."
    else:
        summary += f" Every comparison is within rtol={rtol:g}, atol={atol:g}."
    notes = [*notes, summary, *_rounding_note(checks)]
    return GradientCheck(
        passed=passed,
        dtype=dtype,
        tolerances=tolerances,
        checks=checks,
        max_rel_error=worst.max_rel_error,
        verdict=band,
        perturbed_elements=perturbed,
        notes=notes,
    )
