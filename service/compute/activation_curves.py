"""The numpy side of activations: their catalogue (formula, derivative, parameters), the seed's grid of z,
the checks of an evaluation's arguments, and the summary of local gradients with its one-sentence verdict.
Nothing here imports TensorFlow (`service.compute.activations` computes the curves)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from service import vocabulary
from service.compute.errors import InvalidInput

DEFAULT_ALPHA = vocabulary.DEFAULT_ALPHA

ELEMENTWISE = frozenset(vocabulary.ACTIVATIONS) - vocabulary.SUMMED_GRADIENT_ACTIVATIONS
"""Activations that act on each value alone."""

SATURATION_THRESHOLD = 1e-3
"""A local gradient below this in magnitude counts as saturated: the backward gradient shrinks 1000-fold."""

COMPUTE_DTYPES = vocabulary.FLOAT_DTYPES

_SUMMED_GRADIENT_NOTE = (
    "Not elementwise: every output depends on every z on the last axis. The gradients reported are "
    "what tape.gradient returns for this non-scalar target, the gradient of the sum of the outputs"
)


@dataclass(frozen=True)
class ActivationInfo:
    """One catalogue entry; formulas are plain Unicode text."""

    name: str
    formula: str
    derivative: str
    parameters: dict[str, float] = field(default_factory=dict, hash=False)
    """Parameters a request may set, with their defaults (only leaky_relu's alpha)."""
    notes: str = ""


CATALOGUE: dict[str, ActivationInfo] = {
    info.name: info
    for info in (
        ActivationInfo("linear", "a(z) = z", "a′(z) = 1"),
        ActivationInfo("sigmoid", "σ(z) = 1 / (1 + e^(−z))", "σ′(z) = σ(z)·(1 − σ(z))"),
        ActivationInfo("tanh", "tanh(z) = (e^z − e^(−z)) / (e^z + e^(−z))", "tanh′(z) = 1 − tanh²(z)"),
        ActivationInfo(
            "relu",
            "ReLU(z) = max(0, z)",
            "ReLU′(z) = 1 if z > 0, else 0",
            notes="TensorFlow's convention at the kink: ReLU′(0) = 0.",
        ),
        ActivationInfo(
            "leaky_relu",
            "LReLU(z) = z if z > 0, else α·z",
            "LReLU′(z) = 1 if z > 0, else α",
            parameters={"alpha": DEFAULT_ALPHA},
            notes=(
                "TensorFlow's convention at the kink: LReLU′(0) = α. The default α = 0.01 is the seed's "
                "(tf.nn.leaky_relu's own default is 0.2). α is exact in the request's dtype: 0.01 in float64 "
                "is 0.01, as the seed's tf.maximum(0.01·z, z) has it (tf.nn.leaky_relu would hold it as a "
                "32-bit float, 0.0099999998)."
            ),
        ),
        ActivationInfo(
            "elu",
            "ELU(z) = z if z > 0, else e^z − 1",
            "ELU′(z) = 1 if z ≥ 0, else e^z",
            notes="α = 1 (tf.nn.elu). Both sides meet at the kink: ELU′(0) = 1.",
        ),
        ActivationInfo(
            "selu",
            "SELU(z) = λ·z if z > 0, else λ·α·(e^z − 1), with λ ≈ 1.0507 and α ≈ 1.6733",
            "SELU′(z) = λ if z ≥ 0, else λ·α·e^z",
            notes=(
                "λ and α are fixed (tf.nn.selu). TensorFlow's convention at the kink: SELU′(0) = λ ≈ 1.0507; "
                "just left of 0 the local gradient nears λ·α ≈ 1.7581, so SELU amplifies most near z = 0."
            ),
        ),
        ActivationInfo(
            "gelu",
            "GELU(z) = z·Φ(z) = ½·z·(1 + erf(z/√2))",
            "GELU′(z) = Φ(z) + z·φ(z), with φ(z) = e^(−z²/2) / √(2π)",
            notes=(
                "The exact form (tf.nn.gelu, approximate=False). GELU′ peaks at about 1.13 near z ≈ 1.41. "
                "TensorFlow rounds 1/√2 to float32 even in float64, which moves values by up to about 5e-9."
            ),
        ),
        ActivationInfo("softplus", "softplus(z) = ln(1 + e^z)", "softplus′(z) = σ(z) = 1 / (1 + e^(−z))"),
        ActivationInfo(
            "swish",
            "swish(z) = z·σ(z)",
            "swish′(z) = σ(z)·(1 + z·(1 − σ(z)))",
            notes="Also called SiLU (tf.nn.silu, β = 1). swish′ peaks at about 1.10 near z ≈ 2.40.",
        ),
        ActivationInfo(
            "softmax",
            "softmax(z)ᵢ = e^(zᵢ) / Σⱼ e^(zⱼ), over the last axis",
            "∂softmax(z)ᵢ/∂zⱼ = softmax(z)ᵢ·(δᵢⱼ − softmax(z)ⱼ)",
            notes=_SUMMED_GRADIENT_NOTE
            + ", Σᵢ ∂softmax(z)ᵢ/∂zⱼ = 0 up to rounding, because the outputs always sum to 1.",
        ),
        ActivationInfo(
            "log_softmax",
            "log_softmax(z)ᵢ = zᵢ − ln Σⱼ e^(zⱼ), over the last axis",
            "∂log_softmax(z)ᵢ/∂zⱼ = δᵢⱼ − softmax(z)ⱼ",
            notes=_SUMMED_GRADIENT_NOTE + ", Σᵢ ∂log_softmax(z)ᵢ/∂zⱼ = 1 − n·softmax(z)ⱼ for n entries.",
        ),
    )
}
"""Every activation of the vocabulary, by name."""


def default_grid(start: float = -10.0, stop: float = 10.0, num: int = 129) -> npt.NDArray[np.float64]:
    """The seed's `linspace(-10, 10, 129)`: step 0.15625, so z = 0 is a grid point exactly.

    Limits on `num` and the range are the caller's (the request schemas) to enforce.
    """
    return np.linspace(start, stop, num, dtype=np.float64)


@dataclass
class GradientSummary:
    """How the local gradient scales the gradient flowing back through the activation, over all z."""

    max_abs_gradient: float
    argmax_z: float
    """The first z (in the order given) where |gradient| is largest."""
    fraction_attenuating: float
    """Fraction of z with |gradient| < 1: the backward gradient shrinks there."""
    fraction_saturated: float
    """Fraction of z with |gradient| < SATURATION_THRESHOLD."""
    amplifies: bool
    """Whether |gradient| > 1 anywhere: the backward gradient grows there."""
    verdict: str


@dataclass
class ActivationCurve:
    """An activation's values and local gradients at every z (same shape as z), with their summary."""

    name: str
    values: npt.NDArray[np.floating[Any]]
    gradients: npt.NDArray[np.floating[Any]]
    summary: GradientSummary


def check_activations(names: Sequence[str], z: npt.ArrayLike, alpha: float, dtype: str) -> npt.NDArray[Any]:
    """z as the grid `evaluate_activations` runs on, in `dtype`, after checking its arguments; errors are
    located relative to them: ("activations", i), ("dtype",), ("alpha",), ("z",)."""
    unknown = [(index, name) for index, name in enumerate(names) if name not in CATALOGUE]
    if unknown:
        index, name = unknown[0]
        known = ", ".join(CATALOGUE)
        raise InvalidInput(f"unknown activation {name!r}; known activations: {known}", ("activations", index))
    if dtype not in COMPUTE_DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {dtype!r}", ("dtype",))
    if not np.isfinite(alpha):
        raise InvalidInput(f"alpha must be a finite number, not {alpha}", ("alpha",))
    with np.errstate(over="ignore", invalid="ignore"):
        # a value beyond the dtype's range becomes inf here and is rejected just below
        grid = np.asarray(z, dtype=dtype)
    if grid.size == 0:
        raise InvalidInput("z has no elements", ("z",))
    if not np.all(np.isfinite(grid)):
        raise InvalidInput(f"z must be finite in {dtype}", ("z",))
    if grid.ndim == 0:
        for index, name in enumerate(names):
            if name not in ELEMENTWISE:
                raise InvalidInput(f"{name} acts on the last axis of z, and z is a scalar", ("activations", index))
    return grid


def summarise_gradients(
    z: npt.NDArray[np.floating[Any]], gradients: npt.NDArray[np.floating[Any]], summed: bool = False
) -> GradientSummary:
    """The figures and one-sentence verdict for local gradients at z (same shape, at least one element).

    `summed` says the gradients are those of a sum of outputs (softmax), and the verdict says so.
    """
    z_flat = np.asarray(z, dtype=np.float64).ravel()
    gradients_flat = np.asarray(gradients, dtype=np.float64).ravel()
    magnitudes = np.abs(gradients_flat)
    argmax = int(np.argmax(magnitudes))
    summary = GradientSummary(
        max_abs_gradient=float(magnitudes[argmax]),
        argmax_z=float(z_flat[argmax]),
        fraction_attenuating=float(np.mean(magnitudes < 1.0)),
        fraction_saturated=float(np.mean(magnitudes < SATURATION_THRESHOLD)),
        amplifies=bool(np.any(magnitudes > 1.0)),
        verdict="",
    )
    subject = "The gradient of the summed outputs" if summed else "The gradient"
    summary.verdict = _verdict(subject, z_flat, gradients_flat, summary)
    return summary


def _verdict(
    subject: str,
    z: npt.NDArray[np.float64],
    gradients: npt.NDArray[np.float64],
    summary: GradientSummary,
) -> str:
    order = np.argsort(z, kind="stable")
    z_sorted, gradients_sorted = z[order], gradients[order]
    levels = np.unique(gradients_sorted)
    if levels.size == 1:
        level = float(levels[0])
        return f"{subject} is {_number(level)} at every z: the backward gradient {_effect(level)} everywhere."
    if levels.size == 2:
        # a two-level gradient split at one z (ReLU, leaky ReLU) is described by its two pieces
        left_level = float(gradients_sorted[0])
        split = int(np.argmax(gradients_sorted != left_level))
        if np.all(gradients_sorted[split:] != left_level):
            right_level = float(gradients_sorted[split])
            kink = _number(float(z_sorted[split - 1]))
            right, left = _number(right_level), _number(left_level)
            return (
                f"{subject} is {right} for z > {kink} and {left} for z ≤ {kink}: "
                f"the backward gradient {_effect(right_level)} for z > {kink} "
                f"and {_effect(left_level)} for z ≤ {kink}."
            )
    peak = f"{_number(summary.max_abs_gradient)} (at z = {_number(summary.argmax_z)})"
    saturated = _percent(summary.fraction_saturated)
    if summary.amplifies:
        amplifying = np.abs(gradients_sorted) > 1.0
        where = _where(z_sorted, amplifying)
        shrinks = (
            f" and shrinks at {_percent(summary.fraction_attenuating)} of the points"
            if summary.fraction_attenuating > 0
            else ""
        )
        share = _percent(float(np.mean(amplifying)))
        return (
            f"{subject} exceeds 1 in magnitude at {share} of the points ({where}), "
            f"at most {peak}: the backward gradient grows up to "
            f"{_fold(summary.max_abs_gradient)} there{shrinks}."
        )
    # a maximum that would print as a 1-fold shrink reads better as 'never grows'
    if 1.0 / summary.max_abs_gradient >= 1.005:
        more = f", and more than 1000-fold at {saturated} of them" if summary.fraction_saturated > 0 else ""
        return (
            f"{subject} is at most {peak}: the backward gradient shrinks at least "
            f"{_fold(1.0 / summary.max_abs_gradient)} at every z{more}."
        )
    more = f" (more than 1000-fold at {saturated})" if summary.fraction_saturated > 0 else ""
    return (
        f"{subject} is at most {peak}: the backward gradient never grows, "
        f"and it shrinks at {_percent(summary.fraction_attenuating)} of the points{more}."
    )


def _where(z_sorted: npt.NDArray[np.float64], mask: npt.NDArray[np.bool_]) -> str:
    """The z range of the True entries of `mask`, and in how many separate runs along sorted z."""
    indices = np.flatnonzero(mask)
    low, high = _number(float(z_sorted[indices[0]])), _number(float(z_sorted[indices[-1]]))
    runs = 1 + int(np.count_nonzero(np.diff(indices) > 1))
    if runs == 1:
        return f"z = {low}" if low == high else f"z from {low} to {high}"
    return f"{runs} separate ranges of z between {low} and {high}"


_FOLD_WORDS = {"2": "twofold", "3": "threefold", "4": "fourfold", "5": "fivefold", "10": "tenfold"}


def _fold(factor: float) -> str:
    """'fourfold', '100-fold': the factor to the three significant digits every figure is given in."""
    digits = _number(factor)
    return _FOLD_WORDS.get(digits, f"{digits}-fold")


def _effect(level: float) -> str:
    """What a local gradient of `level` does to the gradient flowing back through it."""
    magnitude = abs(level)
    if magnitude == 0.0:
        return "is blocked"
    if magnitude == 1.0:
        effect = "passes unchanged"
    elif magnitude < 1.0:
        effect = f"is attenuated {_fold(1.0 / magnitude)}"
    else:
        effect = f"is amplified {_fold(magnitude)}"
    return effect + (" with its sign flipped" if level < 0 else "")


def _number(value: float) -> str:
    # -0.0 would print as "-0"
    return "0" if value == 0.0 else f"{value:.3g}"


def _percent(fraction: float) -> str:
    # never round a partial fraction to 0% or 100%
    if 0.0 < fraction < 0.01:
        return "<1%"
    if 0.99 < fraction < 1.0:
        return ">99%"
    return f"{fraction:.0%}"
