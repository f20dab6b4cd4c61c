"""Gradient checks of tape programs: `tape.gradient` against central differences of the program's target.

The program is arbitrary, so each perturbation re-runs it; the number of perturbed elements is therefore
capped lower (`TAPE_FD_MAX_ELEMENTS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from service.compute.errors import InvalidInput, Loc, located_under
from service.compute.gradcheck.checks import (
    DEFAULT_OPTIONS,
    TAPE_FD_MAX_ELEMENTS,
    CheckOptions,
    Differences,
    TapeCheck,
    check_cap,
    check_claims,
    conclude,
    element_count,
    rerun_differences,
    source_check,
)
from service.compute.gradcheck.results import Array, GradientCheck
from service.compute.program.dtype_warnings import GRADIENT_TARGET, dtype_warning
from service.compute.program.parse import ParsedProgram, parse_program
from service.compute.program.requests import TapeInput
from service.compute.program.runner import run_tape

Objective = Callable[[Mapping[str, TapeInput]], float]

ENTRY: Loc = ("tape", "compute", 0)
"""Where the checked gradient sits among the check's arguments: the tape run's one compute entry."""


def _source_shapes(tape: TapeCheck) -> dict[str, tuple[int, ...]]:
    """The gradient's sources with their shapes: float inputs, each named once."""
    gradient = tape.gradient
    shapes: dict[str, tuple[int, ...]] = {}
    for position, name in enumerate(gradient.sources):
        loc: Loc = (*ENTRY, "sources", position)
        if name not in tape.inputs:
            raise InvalidInput(
                f"source {name!r} is not an input: finite differences perturb inputs, so the sources of a "
                "checked gradient must be input names",
                loc,
            )
        if name in gradient.sources[:position]:
            raise InvalidInput(f"source {name!r} is listed twice", loc)
        value = np.asarray(tape.inputs[name].value)
        if value.dtype.kind != "f":
            raise InvalidInput(f"source {name!r} is {value.dtype.name}; only float inputs are differentiable", loc)
        shapes[name] = tuple(value.shape)
    return shapes


def _check_float_target(name: str, target: Array) -> None:
    """An integer (or bool) target has no gradient to check: TensorFlow warns, in these words, and answers None."""
    warning = dtype_warning(GRADIENT_TARGET, target)
    if warning is not None:
        raise InvalidInput(
            f"target {name!r}: {warning}. tape.gradient answers None for it (/v1/tape reports the same warning), "
            "so there is no gradient to check; differentiate a float target",
            (*ENTRY, "target"),
        )


def _objective(tape: TapeCheck, parsed: ParsedProgram, weights: Array) -> Objective:
    """The perturbed run's scalar: Σ weights·target (the sum the tape differentiates for a non-scalar target)."""
    target = tape.gradient.target

    def objective(replaced: Mapping[str, TapeInput]) -> float:
        with located_under("tape"):
            values = run_tape(
                replaced,
                parsed,
                compute=[],
                outputs=[target],
                float_dtype=tape.float_dtype,
                max_elements=tape.max_elements,
            ).values
        return float(np.sum(weights * values[target].astype(np.float64)))

    return objective


def _differences(
    tape: TapeCheck, name: str, shape: tuple[int, ...], objective: Objective, options: CheckOptions
) -> Differences:
    """The objective at every perturbation of input `name`, one program run each."""
    original = tape.inputs[name]

    def evaluate(moved: Array) -> float:
        return objective({**tape.inputs, name: dataclasses.replace(original, value=moved.reshape(shape))})

    return rerun_differences(name, np.asarray(original.value).reshape(-1), shape, evaluate, options)


def check_tape(tape: TapeCheck, options: CheckOptions = DEFAULT_OPTIONS) -> GradientCheck:
    """Check the one `gradient` entry of a tape run: `tape.gradient` against finite differences.

    The sources must be float inputs. For a non-scalar target the tape differentiates the sum of the
    target (or Σ output_gradients·target), and so do the finite differences. Errors are located relative to
    the arguments: the tape run's under "tape" (the gradient is its compute entry 0), the options' at theirs.
    """
    gradient = tape.gradient
    if gradient.kind != "gradient":
        raise InvalidInput("a gradient check needs one compute entry of kind gradient", (*ENTRY, "kind"))
    with located_under("tape"):
        parsed = tape.program if isinstance(tape.program, ParsedProgram) else parse_program(tape.program)
    shapes = _source_shapes(tape)
    check_claims(options.claimed, shapes)
    cap = min(options.max_fd_elements, TAPE_FD_MAX_ELEMENTS)
    why = (
        "(TAPESERVE_MAX_FD_ELEMENTS)"
        if cap == options.max_fd_elements
        else "for a tape program (each perturbed element re-runs the program twice)"
    )
    perturbed = check_cap(element_count(shapes), cap, (*ENTRY, "sources"), why)
    # a non-persistent tape answers exactly this one entry, so persistence does not matter here
    with located_under("tape"):
        run = run_tape(
            tape.inputs,
            parsed,
            compute=[gradient],
            watch=tape.watch,
            persistent=tape.persistent,
            watch_accessed_variables=tape.watch_accessed_variables,
            outputs=[gradient.target],
            float_dtype=tape.float_dtype,
            max_elements=tape.max_elements,
        )
    target = run.values[gradient.target]
    _check_float_target(gradient.target, target)
    weights = np.ones(target.shape) if gradient.output_gradients is None else np.asarray(gradient.output_gradients)
    objective = _objective(tape, parsed, weights)
    notes = [*options.notes]
    checks = []
    for name, autodiff_value in zip(gradient.sources, run.results[0].values, strict=True):
        differences = _differences(tape, name, shapes[name], objective, options)
        if autodiff_value is None:
            notes.append(
                f"tape.gradient returned None for {name!r}: it is not watched (a constant input needs `watch`) "
                f"or not connected to {gradient.target!r}; compared as zeros."
            )
        autodiff = np.zeros(shapes[name], dtype=tape.float_dtype) if autodiff_value is None else autodiff_value
        checks.append(source_check(differences, autodiff, tape.float_dtype, options))
    return conclude(checks, dtype=tape.float_dtype, options=options, perturbed=perturbed, notes=notes)
