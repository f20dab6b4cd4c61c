"""The numpy side of explanations: integration rules, defaults and checks of one request's options.

Nothing here imports TensorFlow, so adapters build jobs on the event loop. Locations in errors are
relative to the explanation's own fields ("steps", "baseline", "class_index", ...).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from service.compute.buckets import next_power_of_two
from service.compute.errors import InvalidInput, LimitExceeded, Loc
from service.compute.networks.problem import NetworkStructure
from service.vocabulary import DEFAULT_SAMPLES, DEFAULT_STEPS, INTEGRATIONS, MAX_SAMPLES, MAX_STEPS, METHODS
from service.vocabulary import IntegrationName as Integration
from service.vocabulary import MethodName as Method

NOISE_FRACTION = 0.15
"""SmoothGrad's default σ: this fraction of (max − min) of each instance's own values (Smilkov et al.)."""

Array = npt.NDArray[Any]


def integration_rule(integration: str, steps: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(α, w) on [0, 1] for `steps` gradient evaluations, exactly as API.md §10 defines them."""
    m = steps
    k = np.arange(m, dtype=np.float64)
    if integration == "riemann_left":
        return k / m, np.full(m, 1.0 / m)
    if integration == "riemann_right":
        return (k + 1) / m, np.full(m, 1.0 / m)
    if integration == "riemann_middle":
        return (k + 0.5) / m, np.full(m, 1.0 / m)
    if integration == "riemann_trapezoid":
        weights = np.full(m, 1.0 / (m - 1))
        weights[[0, -1]] /= 2
        return k / (m - 1), weights
    if integration == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(m)
        # from [−1, 1] to [0, 1]: α = (t + 1) / 2, dα = dt / 2
        return (nodes + 1) / 2, weights / 2
    raise ValueError(f"unknown integration {integration!r}")


@dataclass(frozen=True)
class ExplainOptions:
    """The method fields of a §10 body, defaults filled in (None where the default depends on the data)."""

    method: Method = "integrated_gradients"
    integration: Integration = "riemann_trapezoid"
    steps: int = DEFAULT_STEPS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    absolute: bool | None = None
    """None: true for saliency, false for every other method."""


@dataclass(frozen=True)
class Evaluation:
    """Where the gradients are taken, independent of the function: points b + αₖ(x − b) (+ noise), weights wₖ."""

    method: Method
    alphas: Array
    """(m,) in the compute dtype."""
    weights: Array
    """(m,) in the compute dtype."""
    absolute: bool
    noisy: bool
    rule: tuple[str, int]
    """(integration rule or method, m): requests with equal rules evaluate at equal α and w."""

    @property
    def evaluations(self) -> int:
        return int(self.alphas.shape[0])


# eq=False: numpy fields make value equality ambiguous; a problem is compared by identity.
@dataclass(frozen=True, eq=False)
class AttributionInputs:
    """One request's instances, as the kernel takes them: every array has the instance axis first."""

    inputs: tuple[Array, ...]
    """(N, *shape) per input of the function."""
    starts: tuple[Array, ...]
    """(N, *shape): the baseline for integrated gradients, the inputs themselves for the other methods."""
    noise: tuple[Array, ...] | None
    """(N, m, *shape) per input for SmoothGrad: σ · standard normal draws of the seeded generator."""
    class_index: Array
    """(N,) int32; −1 where the instance's predicted class is to be used."""

    @property
    def instances(self) -> int:
        return int(self.inputs[0].shape[0])


def evaluation(options: ExplainOptions, dtype: str) -> Evaluation:
    """The method's evaluation points and weights, checked: steps for integrated gradients, samples for SmoothGrad."""
    if options.method not in METHODS:
        raise InvalidInput(f"unknown method {options.method!r}; expected one of {', '.join(METHODS)}", ("method",))
    absolute = options.method == "saliency" if options.absolute is None else options.absolute
    if absolute and options.method not in ("saliency", "smoothgrad"):
        raise InvalidInput(
            f"absolute applies to saliency and smoothgrad; {options.method} attributions are signed (their sum "
            "is what the completeness check compares)",
            ("absolute",),
        )
    if options.method == "integrated_gradients":
        if options.integration not in INTEGRATIONS:
            raise InvalidInput(
                f"unknown integration {options.integration!r}; expected one of {', '.join(INTEGRATIONS)}",
                ("integration",),
            )
        lowest = 2 if options.integration == "riemann_trapezoid" else 1
        _bounded(options.steps, lowest, MAX_STEPS, ("steps",), f"steps ({options.integration})")
        alphas, weights = integration_rule(options.integration, options.steps)
    elif options.method == "smoothgrad":
        _bounded(options.samples, 1, MAX_SAMPLES, ("samples",), "samples")
        alphas, weights = np.ones(options.samples), np.full(options.samples, 1.0 / options.samples)
    else:
        alphas, weights = np.ones(1), np.ones(1)
    rule = (options.integration if options.method == "integrated_gradients" else options.method, len(alphas))
    return Evaluation(
        options.method, alphas.astype(dtype), weights.astype(dtype), absolute, options.method == "smoothgrad", rule
    )


def _bounded(value: int, lowest: int, highest: int, loc: Loc, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}", loc)
    if not lowest <= value <= highest:
        raise InvalidInput(f"{what} must be between {lowest} and {highest}, got {value}", loc)


def class_indices(class_index: int | Sequence[int] | None, instances: int, units: int) -> Array:
    """(N,) int32 class per instance, −1 for "the predicted one"; a one-unit output only has class 0."""
    loc: Loc = ("class_index",)
    if class_index is None:
        return np.full(instances, -1, dtype=np.int32)
    listed = not isinstance(class_index, int | np.integer)
    values = np.asarray(class_index if listed else [class_index] * instances)
    if isinstance(class_index, bool) or values.dtype.kind not in "iu" or values.ndim != 1:
        raise InvalidInput("class_index must be an int or a list of ints, one per instance", loc)
    if values.size != instances:
        raise InvalidInput(f"{values.size} class indices for {instances} instances: send one per instance", loc)
    valid = (values >= 0) & (values < units)
    if not valid.all():
        j = int(np.argmin(valid))
        classes = "a one-unit output has class 0 only" if units == 1 else f"classes are 0 to {units - 1}"
        raise InvalidInput(
            f"class index {values[j]} is out of range: the output has {units} units, so {classes}",
            (*loc, j) if listed else loc,
        )
    return values.astype(np.int32)


def per_instance(value: Array | None, instances: Array, loc: Loc, what: str, single: bool) -> Array:
    """`value` broadcast to one copy per instance: None (zeros), one instance's shape, or one per instance."""
    if value is None:
        return np.zeros_like(instances)
    one = tuple(instances.shape[1:])
    shape = tuple(value.shape)
    if shape == one:
        return np.broadcast_to(value, instances.shape).astype(instances.dtype)
    if shape == tuple(instances.shape) and not single:
        return value.astype(instances.dtype)
    accepted = f"{one}" if single else f"{one} (one for all instances) or {tuple(instances.shape)} (one per instance)"
    raise InvalidInput(f"{what} must have shape {accepted}, got {shape}", loc)


def _finite(value: Array, loc: Loc, what: str) -> None:
    if value.dtype.kind == "f" and not np.isfinite(value).all():
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        raise InvalidInput(f"{what} must be finite, got {value[index]}", (*loc, *index))


def noise_scale(noise_stddev: float | Array | None, instances: Array, loc: Loc) -> Array:
    """σ of shape (N, *shape): the default per instance, a number, or one instance's shape."""
    rank = instances.ndim - 1
    if noise_stddev is None:
        flat = instances.reshape(instances.shape[0], -1).astype(np.float64)
        spread = flat.max(axis=1) - flat.min(axis=1) if flat.shape[1] else np.zeros(flat.shape[0])
        return np.broadcast_to((NOISE_FRACTION * spread).reshape((-1,) + (1,) * rank), instances.shape)
    sigma = np.asarray(noise_stddev, dtype=np.float64)
    _finite(sigma, loc, "noise_stddev")
    if sigma.ndim and tuple(sigma.shape) != tuple(instances.shape[1:]):
        raise InvalidInput(
            f"noise_stddev must be a number or have one instance's shape {tuple(instances.shape[1:])}, got "
            f"{tuple(sigma.shape)}",
            loc,
        )
    if (sigma < 0).any():
        raise InvalidInput("noise_stddev must not be negative", loc)
    return np.broadcast_to(sigma, instances.shape)


def attribution_inputs(
    inputs: Mapping[str, Array],
    evaluated: Evaluation,
    *,
    single: bool,
    units: int,
    class_index: int | Sequence[int] | None = None,
    baseline: Mapping[str, Array | None] | None = None,
    noise_stddev: Mapping[str, float | Array | None] | None = None,
    seed: int = 0,
    max_elements: int,
) -> AttributionInputs:
    """One request's instances checked and completed: baselines, SmoothGrad noise, class indices.

    `inputs` are (N, *shape) arrays by input name, in the compute dtype; `baseline` and `noise_stddev` are by
    input name too (locations name the input when there are several). Raises InvalidInput / LimitExceeded.
    """
    names = list(inputs)
    first = inputs[names[0]]
    instances = int(first.shape[0])
    for name, array in inputs.items():
        _finite(array, (name,), name)
    several = len(names) > 1
    starts: list[Array] = []
    noise: list[Array] = []
    elements = evaluated.evaluations * sum(math.prod(array.shape) for array in inputs.values())
    if elements > max_elements:
        field = "samples" if evaluated.noisy else "steps"
        raise LimitExceeded(
            f"{instances} instances × {evaluated.evaluations} {field} × their values make {elements:,} elements, "
            f"above the limit of {max_elements:,} (TAPESERVE_MAX_ELEMENTS); send fewer {field} or instances",
            (field,),
        )
    generator = np.random.default_rng(seed)
    for name in names:
        x = inputs[name]
        if evaluated.method == "integrated_gradients":
            loc: Loc = ("baseline", name) if several else ("baseline",)
            given = (baseline or {}).get(name)
            if given is not None:
                _finite(np.asarray(given), loc, "baseline")
            starts.append(per_instance(given, x, loc, "baseline", single))
        else:
            starts.append(x)
        if evaluated.noisy:
            loc = ("noise_stddev", name) if several else ("noise_stddev",)
            sigma = noise_scale((noise_stddev or {}).get(name), x, loc)
            draws = generator.standard_normal((instances, evaluated.evaluations, *x.shape[1:]))
            noise.append((draws * np.expand_dims(sigma, 1)).astype(x.dtype))
    return AttributionInputs(
        inputs=tuple(inputs[name] for name in names),
        starts=tuple(starts),
        noise=tuple(noise) if evaluated.noisy else None,
        class_index=class_indices(class_index, instances, units),
    )


# eq=False: numpy fields make value equality ambiguous; a job is compared by identity.
@dataclass(frozen=True, eq=False)
class NetworkExplanation:
    """One /v1/networks/explanations request, built without TensorFlow: the network and what to explain."""

    structure: NetworkStructure
    weights: tuple[Array, ...]
    leaky_alphas: tuple[float, ...]
    evaluation: Evaluation
    attribution: AttributionInputs
    single: bool
    """The features were one instance of shape (n,): answers drop the instance axis."""
    stop_at: float | None = None
    """Monotonic deadline: a computation split into several calls stops between them once it has passed."""

    @property
    def merge_key(self) -> tuple[Any, ...]:
        """Requests with equal keys run as one compiled call (instances padded to one power of two)."""
        evaluated = self.evaluation
        bucket = next_power_of_two(self.attribution.instances)
        return ("explain", self.structure, evaluated.rule, evaluated.absolute, bucket)
