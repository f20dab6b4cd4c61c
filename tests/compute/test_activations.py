"""Activations and their local gradients, against TensorFlow written here and numpy closed forms."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf

from service.compute.activations import (
    ACTIVATION_FUNCTIONS,
    CATALOGUE,
    DEFAULT_ALPHA,
    ELEMENTWISE,
    default_grid,
    evaluate_activations,
)
from service.compute.errors import InvalidInput

Array = npt.NDArray[np.float64]
SEED_ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu"]
SELU_SCALE = 1.0507009873554804934193349852946
SELU_ALPHA = 1.6732632423543772848170429916717
# the leaky-ReLU slope is exactly alpha in float64, as the seed's tf.maximum(0.01 * z, z) has it (tf.nn.leaky_relu
# would keep it in a 32-bit attribute); tf.nn.gelu casts 1/√2 from float32, in float64 too
LEAKY_SLOPE = DEFAULT_ALPHA
GELU_SCALE = float(np.float32(1.0 / math.sqrt(2.0)))


def seed_tape(z: Array) -> dict[str, tuple[Array, Array]]:
    """The seed notebook's own cell: one persistent tape over the four activations, in float64."""
    z_tensor = tf.constant(z, dtype=tf.float64)
    with tf.GradientTape(persistent=True) as g:
        g.watch(z_tensor)
        a_sigmoid = tf.math.sigmoid(z_tensor)
        a_tanh = tf.math.tanh(z_tensor)
        a_relu = tf.maximum(tf.constant(0.0, tf.float64), z_tensor)
        a_lrelu = tf.maximum(0.01 * z_tensor, z_tensor)
    activated = {"sigmoid": a_sigmoid, "tanh": a_tanh, "relu": a_relu, "leaky_relu": a_lrelu}
    return {name: (a.numpy(), g.gradient(a, z_tensor).numpy()) for name, a in activated.items()}


def _sigmoid(z: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-z))


_erfc = np.vectorize(math.erfc)


def _phi(z: Array) -> Array:
    """The normal CDF as TensorFlow's GELU evaluates it, erfc(−z/√2) / 2 without cancellation for z ≪ 0."""
    return np.asarray(0.5 * _erfc(-z * GELU_SCALE), dtype=np.float64)


CLOSED_FORMS: dict[str, tuple[Callable[[Array], Array], Callable[[Array], Array]]] = {
    "linear": (lambda z: z, np.ones_like),
    "sigmoid": (_sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z))),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(np.float64)),
    "leaky_relu": (
        lambda z: np.where(z > 0, z, LEAKY_SLOPE * z),
        lambda z: np.where(z > 0, 1.0, LEAKY_SLOPE),
    ),
    "elu": (lambda z: np.where(z > 0, z, np.expm1(z)), lambda z: np.where(z >= 0, 1.0, np.exp(z))),
    "selu": (
        lambda z: SELU_SCALE * np.where(z > 0, z, SELU_ALPHA * np.expm1(z)),
        lambda z: SELU_SCALE * np.where(z >= 0, 1.0, SELU_ALPHA * np.exp(z)),
    ),
    "gelu": (
        lambda z: z * _phi(z),
        lambda z: _phi(z) + z * GELU_SCALE * np.exp(-((GELU_SCALE * z) ** 2)) / math.sqrt(math.pi),
    ),
    "softplus": (lambda z: np.log1p(np.exp(z)), _sigmoid),
    "swish": (lambda z: z * _sigmoid(z), lambda z: _sigmoid(z) * (1.0 + z * (1.0 - _sigmoid(z)))),
}
"""name -> (activation, local derivative) in numpy, TensorFlow's conventions at the kinks."""


def _softmax(z: Array) -> Array:
    shifted = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), dtype=np.float64)


def test_default_grid_is_the_seeds_linspace_and_holds_zero_exactly() -> None:
    grid = default_grid()
    np.testing.assert_array_equal(grid, tf.linspace(-10.0, 10.0, 129).numpy())
    assert grid.dtype == np.float64
    assert grid.shape == (129,)
    assert grid[64] == 0.0
    assert grid[1] - grid[0] == 0.15625
    np.testing.assert_array_equal(default_grid(-1.0, 1.0, 5), [-1.0, -0.5, 0.0, 0.5, 1.0])


def test_seed_activations_match_the_seed_cell_exactly() -> None:
    z = default_grid()
    expected = seed_tape(z)
    curves = evaluate_activations(SEED_ACTIVATIONS, z)
    assert [curve.name for curve in curves] == SEED_ACTIVATIONS
    for curve in curves:
        values, gradients = expected[curve.name]
        assert curve.values.shape == curve.gradients.shape == z.shape
        np.testing.assert_array_equal(curve.values, values, err_msg=curve.name)
        np.testing.assert_array_equal(curve.gradients, gradients, err_msg=curve.name)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
# float32 gradients computed from the outputs (1 − tanh², e^z as ELU(z) + 1) lose digits to cancellation
@pytest.mark.parametrize(("dtype", "rtol", "atol"), [("float64", 1e-12, 1e-15), ("float32", 2e-6, 1e-6)])
def test_values_and_gradients_match_closed_forms(name: str, dtype: str, rtol: float, atol: float) -> None:
    z = default_grid()
    (curve,) = evaluate_activations([name], z, dtype=dtype)
    activation, derivative = CLOSED_FORMS[name]
    z_rounded = z.astype(dtype).astype(np.float64)
    assert curve.values.dtype == np.dtype(dtype)
    assert curve.gradients.dtype == np.dtype(dtype)
    np.testing.assert_allclose(curve.values, activation(z_rounded), rtol=rtol, atol=atol)
    np.testing.assert_allclose(curve.gradients, derivative(z_rounded), rtol=rtol, atol=atol)


def test_relu_gradient_at_the_kink_is_zero_and_leaky_relu_takes_alpha() -> None:
    z = default_grid()
    relu, leaky_relu = evaluate_activations(["relu", "leaky_relu"], z)
    assert z[64] == 0.0
    assert relu.gradients[64] == 0.0
    assert relu.gradients[65] == 1.0
    assert leaky_relu.gradients[64] == LEAKY_SLOPE
    assert relu.summary.verdict == (
        "The gradient is 1 for z > 0 and 0 for z ≤ 0: the backward gradient passes unchanged "
        "for z > 0 and is blocked for z ≤ 0."
    )
    assert "0.01 for z ≤ 0" in leaky_relu.summary.verdict
    assert "attenuated 100-fold for z ≤ 0" in leaky_relu.summary.verdict


@pytest.mark.parametrize("alpha", [0.2, 0.3, 2.0])
def test_alpha_sets_the_leaky_relu_slope(alpha: float) -> None:
    z = default_grid()
    (curve,) = evaluate_activations(["leaky_relu"], z, alpha=alpha)
    slope = alpha  # exact in float64, not tf.nn.leaky_relu's float32(alpha)
    np.testing.assert_allclose(curve.values, np.where(z > 0, z, slope * z), rtol=1e-15)
    np.testing.assert_array_equal(curve.gradients, np.where(z > 0, 1.0, slope))
    summary = curve.summary
    assert summary.amplifies is (alpha > 1)
    assert summary.max_abs_gradient == max(1.0, slope)
    assert summary.fraction_attenuating == pytest.approx(65 / 129 if alpha < 1 else 0.0)
    if alpha == 0.2:
        assert "attenuated fivefold for z ≤ 0" in summary.verdict
    if alpha == 2.0:
        assert "amplified twofold for z ≤ 0" in summary.verdict
        assert summary.argmax_z == -10.0


def test_leaky_relu_slope_is_exactly_alpha_in_float64_and_float32_in_float32() -> None:
    z = np.array([-3.0, -1.0, 0.0, 2.0])
    (wide,) = evaluate_activations(["leaky_relu"], z)
    assert wide.gradients.tolist() == [0.01, 0.01, 0.01, 1.0]
    assert wide.values.tolist() == [-0.03, -0.01, 0.0, 2.0]
    assert float(np.float32(0.01)) == 0.009999999776482582 != wide.gradients[0]  # what tf.nn.leaky_relu gives
    (narrow,) = evaluate_activations(["leaky_relu"], z, dtype="float32")
    reference = tf.nn.leaky_relu(tf.constant(z, tf.float32), alpha=0.01)  # float32: the same rounding
    np.testing.assert_array_equal(narrow.values, reference.numpy())
    assert narrow.gradients.tolist() == [np.float32(0.01)] * 3 + [1.0]


def test_alpha_leaves_the_other_activations_alone() -> None:
    z = default_grid()
    default = evaluate_activations(["relu", "elu", "selu"], z)
    other = evaluate_activations(["relu", "elu", "selu"], z, alpha=0.5)
    for a, b in zip(default, other, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.gradients, b.gradients)


def test_sigmoid_summary_says_a_quarter_at_zero() -> None:
    (curve,) = evaluate_activations(["sigmoid"], default_grid())
    summary = curve.summary
    assert summary.max_abs_gradient == 0.25
    assert summary.argmax_z == 0.0
    assert summary.fraction_attenuating == 1.0
    assert summary.amplifies is False
    saturated = _sigmoid(default_grid()) * (1.0 - _sigmoid(default_grid())) < 1e-3
    assert summary.fraction_saturated == pytest.approx(np.mean(saturated))
    assert summary.verdict.startswith(
        "The gradient is at most 0.25 (at z = 0): the backward gradient shrinks at least fourfold at every z"
    )


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_summary_figures_match_the_reference_gradients(name: str) -> None:
    z = default_grid()
    (curve,) = evaluate_activations([name], z)
    magnitudes = np.abs(CLOSED_FORMS[name][1](z))
    summary = curve.summary
    assert summary.max_abs_gradient == pytest.approx(magnitudes.max(), rel=1e-12)
    assert summary.argmax_z == z[np.argmax(magnitudes)]
    assert summary.fraction_attenuating == np.mean(magnitudes < 1.0)
    assert summary.fraction_saturated == np.mean(magnitudes < 1e-3)
    assert summary.amplifies is bool(np.any(magnitudes > 1.0))
    assert summary.verdict.endswith(".")
    assert summary.verdict.count(":") == 1


def test_amplifying_activations_say_so_and_where() -> None:
    z = default_grid()
    selu, gelu, tanh = evaluate_activations(["selu", "gelu", "tanh"], z)
    assert selu.summary.amplifies
    assert gelu.summary.amplifies
    assert not tanh.summary.amplifies
    # SELU's gradient λ·α·e^z exceeds 1 from z > −ln(λ·α) on: the first grid point after that
    first_amplifying = z[z > -math.log(SELU_SCALE * SELU_ALPHA)][0]
    assert f"z from {first_amplifying:.3g} to 10" in selu.summary.verdict
    assert "exceeds 1" in selu.summary.verdict
    assert f"at most {selu.summary.max_abs_gradient:.3g}" in selu.summary.verdict
    assert "never grows" in tanh.summary.verdict
    assert "exceeds 1" not in tanh.summary.verdict


def test_linear_passes_the_gradient_unchanged() -> None:
    (curve,) = evaluate_activations(["linear"], default_grid())
    assert curve.summary.fraction_attenuating == 0.0
    assert not curve.summary.amplifies
    assert curve.summary.verdict == "The gradient is 1 at every z: the backward gradient passes unchanged everywhere."


def test_softmax_gradients_are_those_of_the_summed_outputs() -> None:
    z = np.array([[-1.0, 0.0, 2.0, 0.5], [3.0, 3.0, -4.0, 1.0]])
    softmax, log_softmax = evaluate_activations(["softmax", "log_softmax"], z)
    probabilities = _softmax(z)
    np.testing.assert_allclose(softmax.values, probabilities, rtol=1e-14)
    np.testing.assert_allclose(log_softmax.values, np.log(probabilities), rtol=1e-14)
    # Σᵢ ∂softmaxᵢ/∂zⱼ = 0 and Σᵢ ∂log_softmaxᵢ/∂zⱼ = 1 − n·softmaxⱼ, per row of the last axis
    np.testing.assert_allclose(softmax.gradients, 0.0, atol=1e-15)
    np.testing.assert_allclose(log_softmax.gradients, 1.0 - z.shape[-1] * probabilities, rtol=1e-13)
    assert softmax.summary.verdict.startswith("The gradient of the summed outputs")
    assert log_softmax.summary.amplifies


def test_any_shape_of_z_is_elementwise_and_summarised_over_all_elements() -> None:
    z = np.array([[[-2.0, 0.0], [1.5, 3.0]], [[-0.5, 0.25], [4.0, -7.0]]])
    (relu, tanh) = evaluate_activations(["relu", "tanh"], z)
    assert relu.values.shape == relu.gradients.shape == (2, 2, 2)
    np.testing.assert_array_equal(relu.gradients, (z > 0).astype(np.float64))
    assert relu.summary.fraction_attenuating == 4 / 8
    np.testing.assert_allclose(tanh.gradients, 1.0 - np.tanh(z) ** 2, rtol=1e-14, atol=1e-15)
    assert tanh.summary.argmax_z == 0.0
    assert tanh.summary.max_abs_gradient == 1.0


def test_activations_come_back_in_the_requested_order_with_repeats() -> None:
    names = ["tanh", "sigmoid", "tanh"]
    curves = evaluate_activations(names, default_grid(-1.0, 1.0, 9))
    assert [curve.name for curve in curves] == names
    np.testing.assert_array_equal(curves[0].values, curves[2].values)


def test_unknown_names_are_invalid_input_at_their_index() -> None:
    with pytest.raises(InvalidInput) as raised:
        evaluate_activations(["sigmoid", "swishy", "relu"], default_grid())
    assert raised.value.loc == ("activations", 1)
    assert "'swishy'" in raised.value.message
    for name in ACTIVATION_FUNCTIONS:
        assert name in raised.value.message


@pytest.mark.parametrize(
    ("z", "kwargs", "loc"),
    [
        (np.array([]), {}, ("z",)),
        (np.array([0.0, np.nan]), {}, ("z",)),
        (np.array([0.0, 1e300]), {"dtype": "float32"}, ("z",)),
        (np.array([0.0, 1.0]), {"dtype": "int32"}, ("dtype",)),
        (np.array([0.0, 1.0]), {"alpha": math.inf}, ("alpha",)),
    ],
)
def test_invalid_grids_and_options_are_invalid_input(z: Array, kwargs: dict[str, Any], loc: tuple[str, ...]) -> None:
    with pytest.raises(InvalidInput) as raised:
        evaluate_activations(["sigmoid"], z, **kwargs)
    assert raised.value.loc == loc


def test_softmax_of_a_scalar_is_invalid_input() -> None:
    with pytest.raises(InvalidInput) as raised:
        evaluate_activations(["relu", "softmax"], np.float64(1.0))
    assert raised.value.loc == ("activations", 1)
    (relu,) = evaluate_activations(["relu"], np.float64(-1.0))
    assert relu.gradients.shape == ()
    assert relu.gradients == 0.0


def test_catalogue_describes_every_activation() -> None:
    assert set(CATALOGUE) == set(ACTIVATION_FUNCTIONS)
    for name, info in CATALOGUE.items():
        assert info.name == name
        assert info.formula.strip()
        assert info.derivative.strip()
        assert "′" in info.derivative or "∂" in info.derivative
        assert all(isinstance(value, float) for value in info.parameters.values())
    assert CATALOGUE["leaky_relu"].parameters == {"alpha": DEFAULT_ALPHA}
    assert [name for name, info in CATALOGUE.items() if info.parameters] == ["leaky_relu"]
    assert "ReLU′(0) = 0" in CATALOGUE["relu"].notes
    for name in ACTIVATION_FUNCTIONS.keys() - ELEMENTWISE:
        assert "sum of the outputs" in CATALOGUE[name].notes


def test_elementwise_set_is_unchanged() -> None:
    assert frozenset({"softmax", "log_softmax"}) == ACTIVATION_FUNCTIONS.keys() - ELEMENTWISE
    assert DEFAULT_ALPHA == 0.01
