"""Gradient checks (API.md §5): TensorFlow autodiff against central finite differences and a caller's claim.

The seed recomputed dL/dW "pen-and-paper" with numpy and compared it with the tape by eye. A check here
does that three ways and reports honest error figures: autodiff (the service's own gradients), central
finite differences (L(θ + ε·eₖ) − L(θ − ε·eₖ)) / (2ε) for every element θₖ of every source, and an
optional claimed gradient, compared with autodiff.

Finite differences never take a gradient: they only evaluate the loss at perturbed values.

* Network: every perturbation of one source is evaluated in one batched forward pass, chunked to bound
  memory. A perturbed weight Wₗ[i, j] changes only unit i of zₗ, so that unit is recomputed from the
  perturbed row of Wₗ (a perturbed feature: that sample's row of z₁ from the perturbed sample) and the
  layers above run once for all 2·P perturbations along a leading axis.
* Tape: the program is arbitrary, so each perturbation re-runs it (about a millisecond for the seed's
  program); the number of perturbed elements is therefore capped lower (`TAPE_FD_MAX_ELEMENTS`).

The divisor is the step actually taken, fl(θ + ε) − fl(θ − ε), not 2ε: in float32 the two differ.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from service.compute.activations import ACTIVATION_FUNCTIONS
from service.compute.errors import ComputeError, InvalidInput, LimitExceeded, Loc
from service.compute.networks import NetworkProblem
from service.compute.networks.engine import NetworkEngine
from service.compute.program import ComputeRequest, ParsedProgram, TapeInput, parse_program, run_tape

Array = npt.NDArray[Any]

DEFAULT_EPSILON = 1e-6
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-8

VERDICT_BANDS: tuple[tuple[float, str], ...] = ((1e-7, "excellent"), (1e-4, "acceptable"), (1e-2, "suspicious"))
"""Upper bounds of the worst relative error for each verdict; above the last: "wrong"."""

FD_CHUNK_ELEMENTS = 1 << 22
"""Elements one batched finite-difference pass may hold per intermediate (32 MiB in float64)."""

TAPE_FD_MAX_ELEMENTS = 1_000
"""A tape check re-runs the program twice per perturbed element, so it perturbs at most this many."""


# ---------------------------------------------------------------------------------------------
# Comparing two gradients
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


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


@dataclass
class GradientCheck:
    passed: bool
    dtype: str
    epsilon: float
    rtol: float
    atol: float
    checks: list[SourceCheck]
    max_rel_error: float
    """The worst relative error of every comparison made (autodiff–numerical and claimed–autodiff)."""
    verdict: str
    perturbed_elements: int
    notes: list[str] = field(default_factory=list)


def _name_index(source: str, index: Sequence[int]) -> str:
    return f"{source}[{', '.join(map(str, index))}]" if index else source


def _summarise(
    checks: list[SourceCheck], *, dtype: str, epsilon: float, rtol: float, atol: float, perturbed: int, notes: list[str]
) -> GradientCheck:
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
        f"largest absolute error {worst.max_abs_error:.3g} at {_name_index(worst_source, worst.worst_index)}."
    )
    if failing:
        summary += f" Outside rtol={rtol:g}, atol={atol:g}: {', '.join(failing)}."
    else:
        summary += f" Every comparison is within rtol={rtol:g}, atol={atol:g}."
    notes = [*notes, summary]
    for check in checks:
        error, floor = check.comparison.max_abs_error, check.rounding_floor
        if check.comparison.max_rel_error > VERDICT_BANDS[0][0] and 0 < error <= 10 * floor:
            notes.append(
                f"Every autodiff–finite-difference difference for {check.source} (at most {error:.2g}) is within "
                f"the finite differences' own rounding error (about {floor:.2g} = ε_machine·max|L|/ε): the "
                "relative error is large only where the gradient is small."
            )
    return GradientCheck(
        passed=passed,
        dtype=dtype,
        epsilon=epsilon,
        rtol=rtol,
        atol=atol,
        checks=checks,
        max_rel_error=worst.max_rel_error,
        verdict=band,
        perturbed_elements=perturbed,
        notes=notes,
    )


# ---------------------------------------------------------------------------------------------
# Shared checks
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def program_located_under(*prefix: str | int) -> Iterator[None]:
    """Errors of the tape program (relative to `run_tape`'s arguments) re-rooted under `prefix`."""
    try:
        yield
    except ComputeError as error:
        error.loc = (*prefix, *error.loc)
        raise


@contextlib.contextmanager
def located_under(*prefix: str | int) -> Iterator[None]:
    """Re-root the JSON locations of compute errors raised inside: ("body", "features") -> prefix + ("features",).

    A check embeds a whole /v1/networks/gradients or /v1/tape body, so errors found in it point into it.
    """
    try:
        yield
    except ComputeError as error:
        if error.loc[:1] == ("body",):
            error.loc = (*prefix, *error.loc[1:])
        raise


def _check_cap(sizes: Mapping[str, int], cap: int, loc: Loc, why: str) -> int:
    total = sum(sizes.values())
    if total > cap:
        parts = ", ".join(f"{name}: {size:,}" for name, size in sizes.items())
        raise LimitExceeded(
            f"the check would perturb {total:,} elements ({parts}), above the finite-difference cap of {cap:,} "
            f"{why}; check fewer or smaller sources",
            loc,
        )
    return total


def _check_claims(claimed: Mapping[str, Array], shapes: Mapping[str, tuple[int, ...]]) -> None:
    for name, value in claimed.items():
        loc: Loc = ("body", "claimed", name)
        if name not in shapes:
            raise InvalidInput(f"unknown source {name!r}; the sources checked are {', '.join(shapes)}", loc)
        if tuple(np.shape(value)) != shapes[name]:
            raise InvalidInput(
                f"the claimed gradient for {name!r} has shape {list(np.shape(value))}, the source has "
                f"{list(shapes[name])}",
                loc,
            )


def _perturbed_values(flat: Array, epsilon: float, source: str, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """fl(θ + ε) and fl(θ − ε) in θ's dtype; 422 where the two coincide (ε below θ's spacing)."""
    step = np.asarray(epsilon, dtype=flat.dtype)
    plus, minus = flat + step, flat - step
    vanished = plus == minus
    if vanished.any():
        k = int(np.argmax(vanished))
        where = _name_index(source, [int(i) for i in np.unravel_index(k, shape)])
        raise InvalidInput(
            f"epsilon {epsilon:g} vanishes against {where} = {flat[k]:g} in {flat.dtype.name} (spacing "
            f"{np.spacing(flat[k]):.3g}); send a larger epsilon or dtype float64",
            ("body", "epsilon"),
        )
    return plus, minus


def _rounding_floor(plus_losses: Array, minus_losses: Array, dtype: str, epsilon: float) -> float:
    largest = max(float(np.max(np.abs(plus_losses), initial=0.0)), float(np.max(np.abs(minus_losses), initial=0.0)))
    return float(np.finfo(dtype).eps) * largest / epsilon


def _central_differences(plus_losses: Array, minus_losses: Array, plus: Array, minus: Array) -> Array:
    steps = plus.astype(np.float64) - minus.astype(np.float64)
    differences = plus_losses.astype(np.float64) - minus_losses.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        numerical: Array = differences / steps
    return numerical


def _check_deadline(stop_at: float | None) -> None:
    if stop_at is not None and time.monotonic() > stop_at:
        # the client already has its 504; this only frees the worker
        raise LimitExceeded("finite differences ran past the request's deadline", ("body",))


def _precision_notes(dtype: str, epsilon: float) -> list[str]:
    if dtype == "float32" and epsilon < 1e-3:
        return [
            f"float32 finite differences with epsilon {epsilon:g} lose about 1e-7·|L|/ε to rounding; "
            "dtype float64 (the default) or an epsilon near 1e-3 gives a sharper check."
        ]
    return []


# ---------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------


class _BatchedNetwork:
    """The loss of a network problem under many perturbations at once (forward passes only, eager)."""

    def __init__(self, problem: NetworkProblem) -> None:
        spec = problem.spec
        self.spec = spec
        self.problem = problem
        self.weights = [tf.constant(w) for w in problem.weights]
        self.targets = tf.constant(problem.targets)
        self.layer_inputs: list[Any] = []
        self.pre_activations: list[Any] = []
        x = tf.constant(problem.features)
        for layer, w in enumerate(self.weights):
            x_b = self._augment(x)
            z = tf.linalg.matmul(x_b, w, transpose_b=True)
            self.layer_inputs.append(x_b)
            self.pre_activations.append(z)
            x = self._activate(layer, z)

    def _augment(self, x: Any) -> Any:
        if self.spec.bias == "augmented":
            return tf.concat([x, tf.ones_like(x[..., :1])], axis=-1)
        return x

    def _activate(self, layer: int, z: Any) -> Any:
        name, alpha = self.spec.activations[layer], self.problem.alphas[layer]
        if name == "leaky_relu":
            # the slope exactly alpha in either dtype (tf.nn.leaky_relu rounds it to float32)
            return tf.where(z > 0, z, tf.constant(alpha, dtype=z.dtype) * z)
        return ACTIVATION_FUNCTIONS[name](z, alpha)

    def _loss(self, predictions: Any) -> Any:
        """(C, B, k) predictions -> (C,) losses, as API.md §2 defines them (reduction none: their sum)."""
        targets = self.targets[tf.newaxis]
        loss = self.spec.loss
        if loss == "cross_entropy":
            per_sample = -tf.reduce_sum(tf.math.xlogy(targets, predictions), axis=-1)
        elif loss == "binary_cross_entropy":
            per_sample = -tf.reduce_mean(
                tf.math.xlogy(targets, predictions) + tf.math.xlogy(1 - targets, 1 - predictions), axis=-1
            )
        else:
            per_sample = tf.reduce_mean(tf.math.square(predictions - targets), axis=-1)
        if self.spec.reduction == "mean":
            return tf.reduce_mean(per_sample, axis=1)
        return tf.reduce_sum(per_sample, axis=1)

    def losses_from(self, layer: int, z: Any) -> Any:
        """Losses for perturbed pre-activations `z` (C, B, units) of `layer`; the layers above run batched."""
        x = self._activate(layer, z)
        for above in range(layer + 1, len(self.weights)):
            z_above = tf.einsum("cbk,uk->cbu", self._augment(x), self.weights[above])
            x = self._activate(above, z_above)
        return self._loss(x)

    def per_perturbation_elements(self, layer: int) -> int:
        batch = int(self.problem.features.shape[0])
        columns = self.spec.layer_shapes[layer][1]
        return columns + sum(batch * (cols + 2 * units) for units, cols in self.spec.layer_shapes[layer:])

    def weight_losses(self, layer: int, flat_indices: Array, values: Array) -> Array:
        """Loss with Wₗ.flat[k] set to values[k], for each k of flat_indices."""
        units, columns = self.spec.layer_shapes[layer]
        unit, column = np.divmod(flat_indices, columns)
        count = flat_indices.size
        rows = self.problem.weights[layer][unit]  # a copy: fancy indexing
        rows[np.arange(count), column] = values
        # only unit i of zₗ sees the perturbed row; it is recomputed from that row and this layer's input
        z_unit = tf.einsum("ck,bk->cb", tf.constant(rows), self.layer_inputs[layer])
        changed = np.arange(units)[np.newaxis, :] == unit[:, np.newaxis]
        z = tf.where(changed[:, np.newaxis, :], z_unit[:, :, tf.newaxis], self.pre_activations[layer][tf.newaxis])
        return np.asarray(self.losses_from(layer, z).numpy())

    def feature_losses(self, flat_indices: Array, values: Array) -> Array:
        """Loss with features.flat[k] (over the (batch, n) rows) set to values[k], for each k of flat_indices."""
        rows_in = self.problem.features
        sample, feature = np.divmod(flat_indices, rows_in.shape[1])
        count = flat_indices.size
        rows = rows_in[sample]
        rows[np.arange(count), feature] = values
        # only sample b of z₁ sees the perturbed sample; it is recomputed from that sample
        z_sample = tf.linalg.matmul(self._augment(tf.constant(rows)), self.weights[0], transpose_b=True)
        changed = np.arange(rows_in.shape[0])[np.newaxis, :] == sample[:, np.newaxis]
        z = tf.where(changed[:, :, np.newaxis], z_sample[:, tf.newaxis, :], self.pre_activations[0][tf.newaxis])
        return np.asarray(self.losses_from(0, z).numpy())


KINKED_ACTIVATIONS = frozenset({"relu", "leaky_relu", "selu"})
"""Activations whose two one-sided derivatives differ at z = 0."""


def _kink_notes(network: _BatchedNetwork) -> list[str]:
    notes = []
    for layer, (name, z) in enumerate(zip(network.spec.activations, network.pre_activations, strict=True)):
        at_kink = np.argwhere(z.numpy() == 0)
        if name in KINKED_ACTIVATIONS and at_kink.size:
            sample, unit = (int(i) for i in at_kink[0])
            where = f"unit {unit}" if network.spec.single else f"sample {sample}, unit {unit}"
            more = f" (and {len(at_kink) - 1} more)" if len(at_kink) > 1 else ""
            notes.append(
                f"z{layer + 1} is exactly 0 at {where}{more}, the kink of {name}: the tape takes TensorFlow's "
                "one-sided derivative there, central finite differences see the average of both slopes."
            )
    return notes


def network_sources(problem: NetworkProblem) -> dict[str, tuple[int, ...]]:
    """Every source a network check can perturb, with its shape: W1..WL, then features (as sent)."""
    shapes: dict[str, tuple[int, ...]] = {f"W{i + 1}": tuple(w.shape) for i, w in enumerate(problem.weights)}
    features = problem.features
    shapes["features"] = (features.shape[1],) if problem.spec.single else tuple(features.shape)
    return shapes


def check_network(
    problem: NetworkProblem,
    *,
    engine: NetworkEngine,
    sources: Sequence[str] | None = None,
    claimed: Mapping[str, Array] | None = None,
    epsilon: float = DEFAULT_EPSILON,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    max_fd_elements: int = 20_000,
    stop_at: float | None = None,
    notes: Sequence[str] = (),
) -> GradientCheck:
    """Check dL/dWₗ (and dL/dfeatures) of a network problem: the engine's autodiff against finite differences.

    `sources` defaults to every weight matrix and the features. Autodiff and finite differences run in
    the problem's dtype. Raises InvalidInput / LimitExceeded with JSON locations for bad sources, claims
    of the wrong shape, an epsilon that vanishes, or more perturbed elements than `max_fd_elements`.
    """
    claimed = dict(claimed or {})
    available = network_sources(problem)
    chosen = list(available) if sources is None else list(sources)
    for index, name in enumerate(chosen):
        if name not in available:
            raise InvalidInput(
                f"unknown source {name!r}; a network has {', '.join(available)}", ("body", "sources", index)
            )
        if name in chosen[:index]:
            raise InvalidInput(f"source {name!r} is listed twice", ("body", "sources", index))
    if not chosen:
        raise InvalidInput("at least one source is needed", ("body", "sources"))
    shapes = {name: available[name] for name in chosen}
    _check_claims(claimed, shapes)
    perturbed = _check_cap(
        {name: math.prod(shape) for name, shape in shapes.items()},
        max_fd_elements,
        ("body", "sources"),
        "(TAPESERVE_MAX_FD_ELEMENTS)",
    )

    spec = problem.spec
    includes = frozenset({"input_gradients"}) if "features" in shapes else frozenset()
    autodiff_problem = dataclasses.replace(problem, spec=dataclasses.replace(spec, includes=includes))
    result = engine.run([autodiff_problem])[0]
    autodiff: dict[str, Array] = {f"W{i + 1}": g for i, g in enumerate(result.weight_gradients)}
    if result.input_gradients is not None:
        autodiff["features"] = result.input_gradients

    network = _BatchedNetwork(problem)
    notes = [*notes, *_kink_notes(network)]
    checks: list[SourceCheck] = []
    for name in chosen:
        if name == "features":
            flat, layer = problem.features.reshape(-1), 0
        else:
            layer = int(name[1:]) - 1
            flat = problem.weights[layer].reshape(-1)
        plus, minus = _perturbed_values(flat, epsilon, name, shapes[name])
        chunk = max(1, FD_CHUNK_ELEMENTS // network.per_perturbation_elements(layer) // 2)
        plus_losses = np.empty(flat.size, dtype=np.float64)
        minus_losses = np.empty(flat.size, dtype=np.float64)
        for start in range(0, flat.size, chunk):
            _check_deadline(stop_at)
            indices = np.arange(start, min(start + chunk, flat.size))
            both_indices = np.concatenate([indices, indices])
            both_values = np.concatenate([plus[indices], minus[indices]])
            if name == "features":
                losses = network.feature_losses(both_indices, both_values)
            else:
                losses = network.weight_losses(layer, both_indices, both_values)
            plus_losses[indices], minus_losses[indices] = losses[: indices.size], losses[indices.size :]
        numerical = _central_differences(plus_losses, minus_losses, plus, minus).reshape(shapes[name])
        check = _source_check(
            name, autodiff[name], numerical, claimed.get(name), dtype=spec.dtype, rtol=rtol, atol=atol
        )
        check.rounding_floor = _rounding_floor(plus_losses, minus_losses, spec.dtype, epsilon)
        checks.append(check)
    return _summarise(
        checks,
        dtype=spec.dtype,
        epsilon=epsilon,
        rtol=rtol,
        atol=atol,
        perturbed=perturbed,
        notes=[*notes, *_precision_notes(spec.dtype, epsilon)],
    )


def _source_check(
    name: str, autodiff: Array, numerical: Array, claim: Array | None, *, dtype: str, rtol: float, atol: float
) -> SourceCheck:
    autodiff = np.asarray(autodiff, dtype=dtype)
    check = SourceCheck(
        source=name,
        autodiff=autodiff,
        numerical=np.asarray(numerical, dtype=dtype),
        comparison=compare(autodiff, numerical, rtol, atol),
    )
    if claim is not None:
        check.claimed = np.asarray(claim, dtype=dtype)
        check.claimed_comparison = compare(claim, autodiff, rtol, atol)
    return check


# ---------------------------------------------------------------------------------------------
# Tape programs
# ---------------------------------------------------------------------------------------------


def check_tape(
    inputs: Mapping[str, TapeInput],
    program: str | ParsedProgram,
    *,
    gradient: ComputeRequest,
    watch: Sequence[str] = (),
    persistent: bool = False,
    watch_accessed_variables: bool = True,
    float_dtype: str = "float64",
    max_elements: int = 4_194_304,
    claimed: Mapping[str, Array] | None = None,
    epsilon: float = DEFAULT_EPSILON,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    max_fd_elements: int = 20_000,
    stop_at: float | None = None,
    notes: Sequence[str] = (),
    body_loc: Loc = ("body",),
) -> GradientCheck:
    """Check one `gradient` entry of a tape program: `tape.gradient` against finite differences.

    The sources must be float inputs. For a non-scalar target the tape differentiates the sum of the
    target (or Σ output_gradients·target), and so do the finite differences. `body_loc` is where the
    /v1/tape body sits in the request: errors in it point there (claims and epsilon stay at the root).
    """
    claimed = dict(claimed or {})
    entry: Loc = (*body_loc, "compute", 0)
    if gradient.kind != "gradient":
        raise InvalidInput("a gradient check needs one compute entry of kind gradient", (*entry, "kind"))
    with program_located_under(*body_loc):
        parsed = program if isinstance(program, ParsedProgram) else parse_program(program)
    shapes: dict[str, tuple[int, ...]] = {}
    for position, name in enumerate(gradient.sources):
        loc: Loc = (*entry, "sources", position)
        if name not in inputs:
            raise InvalidInput(
                f"source {name!r} is not an input: finite differences perturb inputs, so the sources of a "
                "checked gradient must be input names",
                loc,
            )
        if name in gradient.sources[:position]:
            raise InvalidInput(f"source {name!r} is listed twice", loc)
        value = np.asarray(inputs[name].value)
        if value.dtype.kind != "f":
            raise InvalidInput(f"source {name!r} is {value.dtype.name}; only float inputs are differentiable", loc)
        shapes[name] = tuple(value.shape)
    _check_claims(claimed, shapes)
    cap = min(max_fd_elements, TAPE_FD_MAX_ELEMENTS)
    perturbed = _check_cap(
        {name: math.prod(shape) for name, shape in shapes.items()},
        cap,
        (*entry, "sources"),
        "(TAPESERVE_MAX_FD_ELEMENTS)"
        if cap == max_fd_elements
        else "for a tape program (each perturbed element re-runs the program twice)",
    )

    # a non-persistent tape answers exactly this one entry, so persistence does not matter here
    with program_located_under(*body_loc):
        run = run_tape(
            inputs,
            parsed,
            compute=[gradient],
            watch=watch,
            persistent=persistent,
            watch_accessed_variables=watch_accessed_variables,
            outputs=[gradient.target],
            float_dtype=float_dtype,
            max_elements=max_elements,
        )
    target = run.values[gradient.target]
    weights = np.ones(target.shape) if gradient.output_gradients is None else np.asarray(gradient.output_gradients)
    dtype = np.dtype(float_dtype)
    notes = [*notes]

    def objective(replaced: Mapping[str, TapeInput]) -> float:
        with program_located_under(*body_loc):
            values = run_tape(
                replaced,
                parsed,
                compute=[],
                outputs=[gradient.target],
                float_dtype=float_dtype,
                max_elements=max_elements,
            ).values
        return float(np.sum(weights * values[gradient.target].astype(np.float64)))

    checks: list[SourceCheck] = []
    for name, autodiff_value in zip(gradient.sources, run.results[0].values, strict=True):
        original = inputs[name]
        flat = np.asarray(original.value).reshape(-1)
        plus, minus = _perturbed_values(flat, epsilon, name, shapes[name])
        plus_losses = np.empty(flat.size, dtype=np.float64)
        minus_losses = np.empty(flat.size, dtype=np.float64)
        for k in range(flat.size):
            _check_deadline(stop_at)
            for perturbed_value, losses in ((plus[k], plus_losses), (minus[k], minus_losses)):
                moved = flat.copy()
                moved[k] = perturbed_value
                replaced = dict(inputs)
                replaced[name] = dataclasses.replace(original, value=moved.reshape(shapes[name]))
                losses[k] = objective(replaced)
        numerical = _central_differences(plus_losses, minus_losses, plus, minus).reshape(shapes[name])
        if autodiff_value is None:
            notes.append(
                f"tape.gradient returned None for {name!r}: it is not watched (a constant input needs `watch`) "
                f"or not connected to {gradient.target!r}; compared as zeros."
            )
        autodiff = np.zeros(shapes[name], dtype=dtype) if autodiff_value is None else autodiff_value
        check = _source_check(name, autodiff, numerical, claimed.get(name), dtype=float_dtype, rtol=rtol, atol=atol)
        check.rounding_floor = _rounding_floor(plus_losses, minus_losses, float_dtype, epsilon)
        checks.append(check)
    return _summarise(
        checks,
        dtype=float_dtype,
        epsilon=epsilon,
        rtol=rtol,
        atol=atol,
        perturbed=perturbed,
        notes=[*notes, *_precision_notes(float_dtype, epsilon)],
    )
