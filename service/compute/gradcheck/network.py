"""Gradient checks of network problems: the network engine's autodiff against batched central differences.

Every perturbation of one source is evaluated in one batched forward pass, chunked to bound memory. A
perturbed weight Wₗ[i, j] changes only unit i of zₗ, so that unit is recomputed from the perturbed row of
Wₗ (a perturbed feature: that sample's row of z₁ from the perturbed sample) and the layers above run once
for all 2·P perturbations along a leading axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.activations import ACTIVATION_FUNCTIONS
from service.compute.errors import InvalidInput
from service.compute.gradcheck.checks import (
    DEFAULT_OPTIONS,
    FD_CHUNK_ELEMENTS,
    CheckOptions,
    Differences,
    check_cap,
    check_claims,
    check_deadline,
    conclude,
    element_count,
    source_check,
)
from service.compute.gradcheck.results import Array, GradientCheck
from service.compute.networks import NetworkProblem
from service.compute.networks.engine import NetworkEngine


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


def _chosen_sources(problem: NetworkProblem, sources: Sequence[str] | None) -> dict[str, tuple[int, ...]]:
    """The sources to check with their shapes, in the order asked (default: all of them)."""
    available = network_sources(problem)
    chosen = list(available) if sources is None else list(sources)
    for index, name in enumerate(chosen):
        if name not in available:
            raise InvalidInput(f"unknown source {name!r}; a network has {', '.join(available)}", ("sources", index))
        if name in chosen[:index]:
            raise InvalidInput(f"source {name!r} is listed twice", ("sources", index))
    if not chosen:
        raise InvalidInput("at least one source is needed", ("sources",))
    return {name: available[name] for name in chosen}


def _autodiff(problem: NetworkProblem, engine: NetworkEngine, with_features: bool) -> dict[str, Array]:
    """The engine's own gradients of the problem, by source."""
    spec = problem.spec
    includes = frozenset({"input_gradients"}) if with_features else frozenset()
    autodiff_problem = dataclasses.replace(problem, spec=dataclasses.replace(spec, includes=includes))
    result = engine.run([autodiff_problem])[0]
    autodiff: dict[str, Array] = {f"W{i + 1}": g for i, g in enumerate(result.weight_gradients)}
    if result.input_gradients is not None:
        autodiff["features"] = result.input_gradients
    return autodiff


def _differences(network: _BatchedNetwork, name: str, shape: tuple[int, ...], options: CheckOptions) -> Differences:
    """The losses at every perturbation of source `name`, in chunks of batched forward passes."""
    problem = network.problem
    if name == "features":
        flat, layer = problem.features.reshape(-1), 0
    else:
        layer = int(name[1:]) - 1
        flat = problem.weights[layer].reshape(-1)
    differences = Differences.around(name, flat, shape, options.epsilon)
    plus, minus = differences.plus, differences.minus
    chunk = max(1, FD_CHUNK_ELEMENTS // network.per_perturbation_elements(layer) // 2)
    for start in range(0, flat.size, chunk):
        check_deadline(options.stop_at)
        indices = np.arange(start, min(start + chunk, flat.size))
        both_indices = np.concatenate([indices, indices])
        both_values = np.concatenate([plus[indices], minus[indices]])
        if name == "features":
            losses = network.feature_losses(both_indices, both_values)
        else:
            losses = network.weight_losses(layer, both_indices, both_values)
        differences.plus_losses[indices] = losses[: indices.size]
        differences.minus_losses[indices] = losses[indices.size :]
    return differences


def check_network(
    problem: NetworkProblem,
    *,
    engine: NetworkEngine,
    sources: Sequence[str] | None = None,
    options: CheckOptions = DEFAULT_OPTIONS,
) -> GradientCheck:
    """Check dL/dWₗ (and dL/dfeatures) of a network problem: the engine's autodiff against finite differences.

    `sources` defaults to every weight matrix and the features. Autodiff and finite differences run in
    the problem's dtype. Raises InvalidInput / LimitExceeded, located relative to these arguments, for bad
    sources, claims of the wrong shape, an epsilon that vanishes, or more perturbed elements than
    `options.max_fd_elements`.
    """
    shapes = _chosen_sources(problem, sources)
    check_claims(options.claimed, shapes)
    perturbed = check_cap(element_count(shapes), options.max_fd_elements, ("sources",), "(TAPESERVE_MAX_FD_ELEMENTS)")
    autodiff = _autodiff(problem, engine, "features" in shapes)
    network = _BatchedNetwork(problem)
    notes = [*options.notes, *_kink_notes(network)]
    dtype = problem.spec.dtype
    checks = [
        source_check(_differences(network, name, shape, options), autodiff[name], dtype, options)
        for name, shape in shapes.items()
    ]
    return conclude(checks, dtype=dtype, options=options, perturbed=perturbed, notes=notes)
