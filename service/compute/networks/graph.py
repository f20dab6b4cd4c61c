"""The TensorFlow side of networks: every output of R requests of one structure as one traced function of
packed rows (`trace`), built so that a request's answer is the same bit for bit alone or merged with others.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from service.compute.activations import ACTIVATION_FUNCTIONS, DEFAULT_ALPHA, ELEMENTWISE
from service.compute.networks.packing import Layout
from service.compute.networks.problem import Loss, NetworkSpec, Reduction

LANES = 16
"""Values per SIMD packet of the widest vector unit TensorFlow's CPU kernels use (AVX-512: 16 float32)."""


def _whole_packets(size: int) -> int:
    """`size` rounded up to a whole number of SIMD packets."""
    return -(-size // LANES) * LANES


def _lanewise(function: Callable[..., Any], *tensors: Any) -> Any:
    """`function` applied elementwise to tensors of one shape (R, ...), each request's values padded to
    whole SIMD packets.

    TensorFlow's CPU kernels for exp, log, tanh, erf and the like compute a tensor packet by packet and
    its last `size % packet` values with scalar code, which rounds differently. Which values those are
    depends on the whole tensor's size, and so on how many requests were merged; padded, every request's
    values are computed by the packet code, alone or merged, and come out bit for bit the same.
    """
    shape = tensors[0].shape
    size = math.prod(shape[1:])
    padded = _whole_packets(size)
    if padded == size:
        return function(*tensors)
    rows = [tf.pad(tf.reshape(t, (-1, size)), ((0, 0), (0, padded - size))) for t in tensors]
    return tf.reshape(function(*rows)[:, :size], (-1, *shape[1:]))


def _rowwise(function: Callable[[Any], Any], z: Any) -> Any:
    """A function of the last axis (softmax) on z (R, B, u), each request's rows padded with zero rows so
    that its values fill whole SIMD packets (see `_lanewise`)."""
    batch, units = z.shape[1:]
    step = LANES // math.gcd(LANES, units)  # rows * units is a whole number of packets when step divides rows
    rows = -(-batch // step) * step
    if rows == batch:
        return function(z)
    return function(tf.pad(z, ((0, 0), (0, rows - batch), (0, 0))))[:, :batch]


def activate(name: str, z_rows: Any, alpha_rows: Any) -> Any:
    """Activation `name` on z_rows; `alpha_rows` (broadcast against z_rows) are leaky_relu's slopes."""
    if name == "leaky_relu":
        # alpha varies per merged request, and tf.nn.leaky_relu only takes a Python float; same kink
        # convention (slope alpha at z = 0)
        return tf.where(z_rows > 0, z_rows, alpha_rows * z_rows)
    return ACTIVATION_FUNCTIONS[name](z_rows, DEFAULT_ALPHA)


def _activate_packed(name: str, z_rows: Any, alpha_rows: Any, batch: int) -> Any:
    """`activate` on z_rows (R·B, u), one row per sample, each request's values in whole SIMD packets
    (see `_lanewise`): a request's activations come out the same alone or merged."""
    if name == "leaky_relu":  # no rounding to speak of: compares and products only
        return activate(name, z_rows, alpha_rows)
    function = ACTIVATION_FUNCTIONS[name]
    units = z_rows.shape[-1]
    z = tf.reshape(z_rows, (-1, batch, units))
    if name in ELEMENTWISE:
        a = _lanewise(lambda values: function(values, DEFAULT_ALPHA), z)
    else:
        a = _rowwise(lambda values: function(values, DEFAULT_ALPHA), z)
    return tf.reshape(a, (-1, units))


_PARALLEL_PRODUCT = 128 * 128
"""TensorFlow's CPU BatchMatMul parallelises inside each product above this cost (rows × inner × columns),
whatever the batch size (kMaxCostOuterParallelism in batch_matmul_op_impl.h)."""


def _per_request_matmul(x: Any, w: Any) -> Any:
    """x (R, B, c) times w (R, u, c) transposed: (R, B, u), each request's product computed alike for every R.

    TensorFlow's CPU BatchMatMul multiplies a batch of one pair of matrices with a different kernel
    (Eigen's contraction, parallel inside the matrix) than a batch of several small ones (one matrix
    product per thread), and the two round differently: a request alone and the same request merged
    would differ in the last bits. Multiplying each request's two halves of rows as two products makes
    the batch 2R, never one. TensorFlow uses one kernel for every batch size when a matrix has one row
    (B = 1, the per-thread kernel) or the product costs more than `_PARALLEL_PRODUCT` multiply-adds (the
    contraction): such products are left whole.
    """
    batch, columns = x.shape[1:]
    if batch == 1 or batch * columns * w.shape[1] > _PARALLEL_PRODUCT:
        return tf.linalg.matmul(x, w, transpose_b=True)
    halves = tf.reshape(x, (-1, 2, batch // 2, columns))
    z = tf.linalg.matmul(halves, w[:, None], transpose_b=True)
    return tf.reshape(z, (-1, batch, w.shape[1]))


def _per_sample_loss(loss: Loss, predictions: Any, targets: Any) -> Any:
    """(R, B, k) -> (R, B), on the last layer's output as is (no clipping, no logits)."""
    if loss == "cross_entropy":
        # xlogy: a class with target 0 adds 0 even where ŷ = 0 (0·log 0 = 0); log 0 of a target class is inf
        return -tf.reduce_sum(_lanewise(tf.math.xlogy, targets, predictions), axis=-1)
    if loss == "binary_cross_entropy":
        return -tf.reduce_mean(
            _lanewise(tf.math.xlogy, targets, predictions) + _lanewise(tf.math.xlogy, 1 - targets, 1 - predictions),
            axis=-1,
        )
    return tf.reduce_mean(tf.math.squared_difference(predictions, targets), axis=-1)


def _reduce(reduction: Reduction, per_sample: Any, mask: Any) -> Any:
    """(R, B) -> (R,) or (R, B); padded samples (mask 0) count for nothing, not even in the mean."""
    # where, not a product: a padded copy of a sample with an infinite loss must not turn the sum into NaN
    per_sample = tf.where(mask > 0, per_sample, tf.zeros_like(per_sample))
    if reduction == "sum":
        return tf.reduce_sum(per_sample, axis=1)
    if reduction == "mean":
        return tf.reduce_sum(per_sample, axis=1) / tf.reduce_sum(mask, axis=1)
    return per_sample


@dataclass
class _Forward:
    """The forward pass of every layer, recorded on the tape: per layer its input x_B, z and a (R, B, ·), z and
    a as one row per sample (R·B, u), and z as one row per request (R, B·u) for the Jacobians."""

    layer_inputs: list[Any] = field(default_factory=list)
    zs: list[Any] = field(default_factory=list)
    z_rows: list[Any] = field(default_factory=list)
    a_rows: list[Any] = field(default_factory=list)
    z_flat: list[Any] = field(default_factory=list)
    activations: list[Any] = field(default_factory=list)


def _forward(spec: NetworkSpec, features: Any, weights: list[Any], alphas: Any) -> _Forward:
    """Every layer on `features` (R, B, n); called inside the tape."""
    batch = spec.batch
    layers = _Forward()
    x = features
    for i, (w, name) in enumerate(zip(weights, spec.activations, strict=True)):
        units = spec.layer_shapes[i][0]
        x_b = tf.concat([x, tf.ones_like(x[..., :1])], axis=-1) if spec.bias == "augmented" else x
        z = _per_request_matmul(x_b, w)
        # one row per sample, made inside the tape so that batch_jacobian sees each sample's activation
        z_rows = tf.reshape(z, (-1, units))
        alpha_rows = None
        if name == "leaky_relu":
            alpha_rows = tf.reshape(tf.repeat(alphas[:, i], batch), (-1, 1))
        a_rows = _activate_packed(name, z_rows, alpha_rows, batch)
        a = tf.reshape(a_rows, tf.shape(z))
        if "jacobians" in spec.includes:
            # (R, B*u) against W (R, u, c): requests are independent, so batch_jacobian is exact
            layers.z_flat.append(tf.reshape(z, (-1, batch * units)))
        layers.layer_inputs.append(x_b)
        layers.zs.append(z)
        layers.z_rows.append(z_rows)
        layers.a_rows.append(a_rows)
        layers.activations.append(a)
        x = a
    return layers


_ZERO = tf.UnconnectedGradients.ZERO


def _local_gradients(tape: Any, layers: _Forward, weights: list[Any], loss: Any, mask: Any) -> dict[str, Any]:
    predictions = layers.activations[-1]
    out = {"grad loss/predictions": tape.gradient(loss, predictions, unconnected_gradients=_ZERO)}
    for i, w in enumerate(weights):
        out[f"grad a{i + 1}/z{i + 1}"] = tape.gradient(layers.a_rows[i], layers.z_rows[i], unconnected_gradients=_ZERO)
        # the gradient of the sum of z over the request's real samples: padded rows weigh 0
        real_rows = tf.broadcast_to(mask[..., None], tf.shape(layers.zs[i]))
        out[f"grad z{i + 1}/W{i + 1}"] = tape.gradient(
            layers.zs[i], w, output_gradients=real_rows, unconnected_gradients=_ZERO
        )
    return out


def _jacobians(tape: Any, layers: _Forward, weights: list[Any]) -> dict[str, Any]:
    out = {}
    for i, w in enumerate(weights):
        out[f"jacobian a{i + 1}/z{i + 1}"] = tape.batch_jacobian(
            layers.a_rows[i], layers.z_rows[i], unconnected_gradients=_ZERO
        )
        out[f"jacobian z{i + 1}/W{i + 1}"] = tape.batch_jacobian(layers.z_flat[i], w, unconnected_gradients=_ZERO)
    return out


def network_outputs(spec: NetworkSpec, unpacked: dict[str, Any]) -> dict[str, Any]:
    """Every requested output of the network, each with a leading request axis R."""
    includes = spec.includes
    features, targets, alphas, mask = (unpacked[name] for name in ("features", "targets", "alphas", "mask"))
    weights = [unpacked[f"W{i + 1}"] for i in range(len(spec.layer_shapes))]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(features)
        tape.watch(weights)
        layers = _forward(spec, features, weights, alphas)
        predictions = layers.activations[-1]
        loss = _reduce(spec.reduction, _per_sample_loss(spec.loss, predictions, targets), mask)
    sources = [*weights, features] if "input_gradients" in includes else weights
    # a non-scalar target (R requests, or reduction none) differentiates its sum: each request its own
    gradients = tape.gradient(loss, sources, unconnected_gradients=_ZERO)
    out: dict[str, Any] = {"loss": loss, "predictions": predictions}
    for i in range(len(weights)):
        out[f"dL/dW{i + 1}"] = gradients[i]
    if "input_gradients" in includes:
        out["dL/dfeatures"] = gradients[-1]
    if "intermediates" in includes:
        for i in range(len(weights)):
            out[f"x_B{i + 1}"], out[f"z{i + 1}"] = layers.layer_inputs[i], layers.zs[i]
            out[f"a{i + 1}"] = layers.activations[i]
    if "local_gradients" in includes:
        out.update(_local_gradients(tape, layers, weights, loss, mask))
    if "jacobians" in includes:
        out.update(_jacobians(tape, layers, weights))
    del tape
    return out


def trace(layout: Layout, on_trace: Callable[[], None], jit_compile: bool) -> Any:
    """The concrete function of `layout.spec`: a packed (R, P) row per request in, a packed (R, Q) row out.
    `on_trace` is called each time TensorFlow traces it."""
    spec = layout.spec

    def network(packed: Any) -> Any:
        on_trace()
        unpacked = {slot.name: tf.reshape(packed[:, slot.columns], (-1, *slot.shape)) for slot in layout.inputs}
        out = network_outputs(spec, unpacked)
        return tf.concat([tf.reshape(out[slot.name], (-1, slot.size)) for slot in layout.outputs], axis=1)

    compiled = tf.function(
        network,
        input_signature=(tf.TensorSpec((None, layout.input_size), tf.as_dtype(spec.dtype), name="packed"),),
        autograph=False,
        jit_compile=jit_compile,
    )
    return compiled.get_concrete_function()
