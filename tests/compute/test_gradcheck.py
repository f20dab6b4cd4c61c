"""Gradient checks against TensorFlow tapes written here and numpy closed forms."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf

from service.compute.errors import InvalidInput, LimitExceeded, ProgramError, located_under
from service.compute.gradcheck import TAPE_FD_MAX_ELEMENTS, CheckOptions, TapeCheck, compare, verdict_band
from service.compute.gradcheck.network import check_network
from service.compute.gradcheck.tape import check_tape
from service.compute.networks import NetworkProblem, prepare_network
from service.compute.networks.engine import NetworkEngine
from service.compute.program import ComputeRequest, TapeInput

Array = npt.NDArray[np.float64]
FEATURES = np.array([76.0, 120.0, 37.5])
X_B = np.array([76.0, 120.0, 37.5, 1.0])
WEIGHTS = np.array([[0.01, -0.02, 0.03, 0.01], [-0.01, 0.02, -0.015, 0.02]])
SEED_PROGRAM = (
    "xB = tf.concat([x, 1.0*tf.ones(1)], axis=0)\n"
    "z = tf.linalg.matvec(W, xB)\n"
    "a = tf.nn.softmax(z)\n"
    "L = tf.reduce_sum(-tf.one_hot(indices=y, depth=2)*tf.math.log(a))"
)


@pytest.fixture(scope="module")
def engine() -> NetworkEngine:
    return NetworkEngine(cache_size=16)


def softmax(z: Array) -> Array:
    shifted = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def seed_problem(dtype: str = "float64") -> NetworkProblem:
    return prepare_network(FEATURES, labels=1, weights=[WEIGHTS], activations=["softmax"], dtype=dtype)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ compare


def test_relative_error_is_against_the_larger_magnitude_and_zero_where_both_are_zero() -> None:
    comparison = compare([[1.0, 0.0], [-2.0, 4.0]], [[1.0, 0.0], [2.0, 5.0]], rtol=1e-5, atol=1e-8)
    # |−2 − 2| / 2 = 2 at [1, 0]; |4 − 5| / 5 = 0.2 at [1, 1]
    assert comparison.max_abs_error == 4.0
    assert comparison.max_rel_error == 2.0
    assert comparison.worst_index == [1, 0]
    assert comparison.passed is False
    exact = compare(np.zeros((2, 3)), np.zeros((2, 3)), rtol=0.0, atol=0.0)
    assert (exact.max_abs_error, exact.max_rel_error, exact.worst_index, exact.passed) == (0.0, 0.0, [0, 0], True)
    assert compare(3.0, 3.0, 0.0, 0.0).worst_index == []


def test_passed_follows_allclose_with_the_reference_second() -> None:
    # |a − b| = 1e-3 ≤ atol + rtol·|b| = 1e-3·|b| only when b is the larger one
    assert compare([1.0], [1.001], rtol=1e-3 / 1.001, atol=0.0).passed is True
    assert compare([1.001], [1.0], rtol=1e-3 / 1.001, atol=0.0).passed is False
    assert compare([1e-9], [0.0], rtol=1e-5, atol=1e-8).passed is True
    assert compare([1e-9], [0.0], rtol=1e-5, atol=1e-8).max_rel_error == 1.0


def test_non_finite_values_are_errors_unless_equal() -> None:
    comparison = compare([np.inf, 1.0, np.nan], [np.inf, 1.0, 2.0], rtol=1e-5, atol=1e-8)
    assert comparison.max_abs_error == np.inf
    assert comparison.max_rel_error == np.inf
    assert comparison.worst_index == [2]
    assert comparison.passed is False
    assert compare([np.inf], [np.inf], 0.0, 0.0).passed is True


@pytest.mark.parametrize(
    ("error", "band"),
    [(0.0, "excellent"), (1e-7, "excellent"), (1.1e-7, "acceptable"), (1e-4, "acceptable"), (1e-3, "suspicious"),
     (1e-2, "suspicious"), (0.011, "wrong"), (np.inf, "wrong")],
)  # fmt: skip
def test_verdict_bands(error: float, band: str) -> None:
    assert verdict_band(error) == band


# ------------------------------------------------------------------------------------------ networks


def test_seed_network_float64_is_excellent_and_matches_the_closed_form(engine: NetworkEngine) -> None:
    result = check_network(seed_problem(), engine=engine)
    a = softmax(WEIGHTS @ X_B)
    closed_form = np.outer(a - [0.0, 1.0], X_B)  # dL/dW = (a − y) ⊗ x_B
    w1, features = result.checks
    assert (w1.source, features.source) == ("W1", "features")
    np.testing.assert_allclose(w1.autodiff, closed_form, rtol=1e-12)
    np.testing.assert_allclose(w1.numerical, closed_form, rtol=1e-7)
    np.testing.assert_allclose(features.numerical, (a - [0.0, 1.0]) @ WEIGHTS[:, :3], rtol=1e-6)
    assert result.passed and result.verdict == "excellent"
    assert result.max_rel_error <= 1e-7
    assert result.perturbed_elements == 8 + 3
    assert result.dtype == "float64" and w1.autodiff.dtype == np.float64


def network_reference(
    features: Array,
    weights: list[Array],
    activations: list[Callable[[Any], Any]],
    loss: Callable[[Any], Any],
) -> list[Array]:
    """dL/dW for every layer and dL/dfeatures, from a plain tape (bias augmented)."""
    x = tf.constant(features)
    variables = [tf.Variable(w) for w in weights]
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = x
        for w, activation in zip(variables, activations, strict=True):
            h = activation(tf.concat([h, tf.ones_like(h[..., :1])], axis=-1) @ tf.transpose(w))
        value = loss(h)
    return [np.asarray(g) for g in tape.gradient(value, [*variables, x])]


def test_two_layer_batch_finite_differences_equal_a_tape_written_here(engine: NetworkEngine) -> None:
    rng = np.random.default_rng(3)
    features = rng.normal(size=(5, 3))
    weights = [rng.normal(size=(4, 4)) * 0.5, rng.normal(size=(3, 5)) * 0.5]
    labels = [0, 2, 1, 1, 0]
    problem = prepare_network(
        features, labels=labels, weights=weights, activations=["tanh", "softmax"], reduction="mean", dtype="float64"
    )
    one_hot = np.eye(3)[labels]
    reference = network_reference(
        features,
        weights,
        [tf.tanh, tf.nn.softmax],
        lambda p: tf.reduce_mean(-tf.reduce_sum(one_hot * tf.math.log(p), axis=-1)),
    )
    result = check_network(problem, engine=engine)
    assert [check.source for check in result.checks] == ["W1", "W2", "features"]
    for check, expected in zip(result.checks, reference, strict=True):
        np.testing.assert_allclose(check.numerical, expected, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(check.autodiff, expected, rtol=1e-10, atol=1e-14)
    assert result.passed


@pytest.mark.parametrize(
    ("activation", "tf_activation", "loss", "reduction"),
    [
        ("sigmoid", tf.sigmoid, "binary_cross_entropy", "sum"),
        ("leaky_relu", lambda z: tf.where(z > 0, z, 0.3 * z), "mean_squared_error", "none"),
        ("gelu", tf.nn.gelu, "mean_squared_error", "mean"),
    ],
)
def test_other_losses_and_activations(
    engine: NetworkEngine, activation: str, tf_activation: Callable[[Any], Any], loss: str, reduction: str
) -> None:
    rng = np.random.default_rng(11)
    features = rng.normal(size=(4, 3))
    weights = [rng.normal(size=(2, 4))]
    targets = rng.uniform(0.1, 0.9, size=(4, 2))
    problem = prepare_network(
        features,
        targets=targets,
        weights=weights,
        activations=[activation],
        alphas=[0.3 if activation == "leaky_relu" else None],
        loss=loss,  # type: ignore[arg-type]
        reduction=reduction,  # type: ignore[arg-type]
        dtype="float64",
    )
    if loss == "binary_cross_entropy":

        def per_sample(p: Any) -> Any:
            return -tf.reduce_mean(targets * tf.math.log(p) + (1 - targets) * tf.math.log(1 - p), axis=-1)
    else:

        def per_sample(p: Any) -> Any:
            return tf.reduce_mean((p - targets) ** 2, axis=-1)

    reduce = tf.reduce_mean if reduction == "mean" else tf.reduce_sum
    reference = network_reference(features, weights, [tf_activation], lambda p: reduce(per_sample(p)))
    result = check_network(problem, engine=engine)
    for check, expected in zip(result.checks, reference, strict=True):
        np.testing.assert_allclose(check.numerical, expected, rtol=1e-6, atol=1e-9)
    assert result.passed and result.verdict in ("excellent", "acceptable")


def test_relu_exactly_at_its_kink_is_a_mismatch(engine: NetworkEngine) -> None:
    # unit 0 of layer 1: 0.5·76 − 38 = 0 exactly
    w1 = np.array([[0.5, 0.0, 0.0, -38.0], [0.01, 0.02, -0.03, 0.1]])
    w2 = np.array([[0.3, -0.2, 0.1], [-0.1, 0.4, 0.0]])
    problem = prepare_network(FEATURES, labels=1, weights=[w1, w2], activations=["relu", "softmax"], dtype="float64")
    result = check_network(problem, engine=engine)
    w1_check = next(check for check in result.checks if check.source == "W1")
    # the tape takes ReLU′(0) = 0; central differences see (1 + 0) / 2 of the downstream gradient, up to
    # the curvature of the layers above over the step ε·x_B (about 1e-4 relative)
    a2 = softmax(w2 @ np.array([0.0, max(0.0, float(w1[1] @ X_B)), 1.0]))
    downstream = (a2 - [0.0, 1.0]) @ w2[:, 0]
    np.testing.assert_array_equal(w1_check.autodiff[0], np.zeros(4))
    np.testing.assert_allclose(w1_check.numerical[0], 0.5 * downstream * X_B, rtol=1e-3)
    assert not w1_check.comparison.passed and w1_check.comparison.max_rel_error == 1.0
    assert w1_check.comparison.worst_index[0] == 0
    assert not result.passed and result.verdict == "wrong"
    assert any("exactly 0 at unit 0" in note and "relu" in note for note in result.notes)


def test_claims_are_compared_with_autodiff(engine: NetworkEngine) -> None:
    a = softmax(WEIGHTS @ X_B)
    correct = np.outer(a - [0.0, 1.0], X_B)
    wrong = correct.copy()
    wrong[1, 2] += 0.5
    result = check_network(seed_problem(), engine=engine, sources=["W1"], options=CheckOptions(claimed={"W1": wrong}))
    (check,) = result.checks
    assert check.claimed_comparison is not None and check.claimed is not None
    assert check.claimed_comparison.worst_index == [1, 2]
    np.testing.assert_allclose(check.claimed_comparison.max_abs_error, 0.5, rtol=1e-9)
    assert not check.claimed_comparison.passed and check.comparison.passed
    assert not result.passed
    good = check_network(seed_problem(), engine=engine, sources=["W1"], options=CheckOptions(claimed={"W1": correct}))
    assert good.passed and good.checks[0].claimed_comparison is not None


def test_bad_sources_and_claims_name_the_field(engine: NetworkEngine) -> None:
    with pytest.raises(InvalidInput, match="unknown source 'W2'") as error:
        check_network(seed_problem(), engine=engine, sources=["W1", "W2"])
    assert error.value.loc == ("sources", 1)
    with pytest.raises(InvalidInput, match=r"shape \[2\], the source has \[2, 4\]") as error:
        check_network(seed_problem(), engine=engine, options=CheckOptions(claimed={"W1": np.zeros(2)}))
    assert error.value.loc == ("claimed", "W1")
    with pytest.raises(InvalidInput, match="unknown source 'features'") as error:
        check_network(
            seed_problem(), engine=engine, sources=["W1"], options=CheckOptions(claimed={"features": np.zeros(3)})
        )
    assert error.value.loc == ("claimed", "features")


def test_finite_difference_cap(engine: NetworkEngine) -> None:
    with pytest.raises(LimitExceeded, match=r"perturb 11 elements .* cap of 10") as error:
        check_network(seed_problem(), engine=engine, options=CheckOptions(max_fd_elements=10))
    assert error.value.loc == ("sources",)
    few = check_network(seed_problem(), engine=engine, sources=["W1"], options=CheckOptions(max_fd_elements=8))
    assert few.perturbed_elements == 8


def test_epsilon_below_float32_spacing_is_rejected(engine: NetworkEngine) -> None:
    with pytest.raises(InvalidInput, match=r"vanishes against features\[0\] = 76 in float32") as error:
        check_network(seed_problem("float32"), engine=engine, options=CheckOptions(epsilon=1e-6))
    assert error.value.loc == ("epsilon",)


def test_float32_check_with_a_coarser_epsilon(engine: NetworkEngine) -> None:
    result = check_network(seed_problem("float32"), engine=engine, options=CheckOptions(epsilon=1e-3))
    a = softmax(WEIGHTS @ X_B)
    assert result.dtype == "float32" and result.checks[0].numerical.dtype == np.float32
    # ε·x_B moves z by up to 0.12: the truncation error of central differences is about 1e-3 relative here
    np.testing.assert_allclose(result.checks[0].numerical, np.outer(a - [0.0, 1.0], X_B), rtol=3e-3)
    assert not any("float32 finite differences" in note for note in result.notes)
    noisy = check_network(seed_problem("float32"), engine=engine, sources=["W1"], options=CheckOptions(epsilon=1e-5))
    assert any("float32 finite differences" in note for note in noisy.notes)


def test_hundred_by_hundred_weights_are_fast(engine: NetworkEngine) -> None:
    rng = np.random.default_rng(5)
    weights = rng.normal(size=(100, 100)) * 0.1
    problem = prepare_network(
        rng.normal(size=99), labels=7, weights=[weights], activations=["softmax"], dtype="float64"
    )
    check_network(problem, engine=engine, sources=["W1"])  # traces the engine's function for this structure
    started = time.perf_counter()
    result = check_network(problem, engine=engine, sources=["W1"])
    elapsed = time.perf_counter() - started
    assert result.passed and result.perturbed_elements == 10_000
    assert elapsed < 2.0, elapsed
    # the few elements far below the largest carry finite-difference rounding; a note explains the band
    if result.verdict != "excellent":
        assert any("rounding error" in note for note in result.notes)


# ------------------------------------------------------------------------------------------ tapes


def seed_inputs(**overrides: TapeInput) -> dict[str, TapeInput]:
    inputs = {
        "x": TapeInput(FEATURES.copy()),
        "y": TapeInput(np.array(1, dtype=np.int32)),
        "W": TapeInput(WEIGHTS.copy(), variable=True),
    }
    inputs.update(overrides)
    return inputs


def test_seed_program_check(engine: NetworkEngine) -> None:
    result = check_tape(
        TapeCheck(inputs=seed_inputs(), program=SEED_PROGRAM, gradient=ComputeRequest("gradient", "L", ("W",)))
    )
    a = softmax(WEIGHTS @ X_B)
    (check,) = result.checks
    np.testing.assert_allclose(check.autodiff, np.outer(a - [0.0, 1.0], X_B), rtol=1e-12)
    np.testing.assert_allclose(check.numerical, np.outer(a - [0.0, 1.0], X_B), rtol=1e-7)
    assert result.passed and result.verdict == "excellent" and result.perturbed_elements == 8


def test_unwatched_constant_source_is_reported(engine: NetworkEngine) -> None:
    result = check_tape(
        TapeCheck(inputs=seed_inputs(), program=SEED_PROGRAM, gradient=ComputeRequest("gradient", "L", ("W", "x")))
    )
    x_check = result.checks[1]
    np.testing.assert_array_equal(x_check.autodiff, np.zeros(3))
    a = softmax(WEIGHTS @ X_B)
    np.testing.assert_allclose(x_check.numerical, (a - [0.0, 1.0]) @ WEIGHTS[:, :3], rtol=1e-6)
    assert not result.passed
    assert any("returned None for 'x'" in note for note in result.notes)
    watched = check_tape(
        TapeCheck(
            inputs=seed_inputs(),
            program=SEED_PROGRAM,
            gradient=ComputeRequest("gradient", "L", ("W", "x")),
            watch=["x"],
        )
    )
    assert watched.passed


def test_non_scalar_target_with_output_gradients() -> None:
    weights = np.array([2.0, -1.0, 0.5])
    program = "s = tf.math.sin(u) * v\n"
    gradient = ComputeRequest("gradient", "s", ("u", "v"), output_gradients=weights)
    u, v = np.array([0.3, 1.2, -0.7]), np.array([1.5, -0.5, 2.0])
    result = check_tape(
        TapeCheck(
            inputs={"u": TapeInput(u), "v": TapeInput(v)},
            program=program,
            gradient=gradient,
            watch=["u", "v"],
            persistent=False,
        )
    )
    np.testing.assert_allclose(result.checks[0].numerical, weights * np.cos(u) * v, rtol=1e-8)
    np.testing.assert_allclose(result.checks[1].numerical, weights * np.sin(u), rtol=1e-8)
    assert result.passed


def test_tape_errors_point_into_the_tape_body() -> None:
    gradient = ComputeRequest("gradient", "L", ("z",))
    with pytest.raises(InvalidInput, match="'z' is not an input") as error:
        check_tape(TapeCheck(inputs=seed_inputs(), program=SEED_PROGRAM, gradient=gradient))
    assert error.value.loc == ("tape", "compute", 0, "sources", 0)
    with pytest.raises(ProgramError) as program_error:
        check_tape(
            TapeCheck(
                inputs=seed_inputs(), program="L = tf.undefined(W)", gradient=ComputeRequest("gradient", "L", ("W",))
            )
        )
    assert program_error.value.loc[:2] == ("tape", "program")
    with pytest.raises(InvalidInput, match="only float inputs") as error:
        check_tape(
            TapeCheck(inputs=seed_inputs(), program=SEED_PROGRAM, gradient=ComputeRequest("gradient", "L", ("y",)))
        )
    assert error.value.loc == ("tape", "compute", 0, "sources", 0)


def test_tape_cap_is_lower_than_the_network_cap() -> None:
    big = TapeInput(np.ones(TAPE_FD_MAX_ELEMENTS + 1))
    program = "L = tf.reduce_sum(b * b)"
    with pytest.raises(LimitExceeded, match=f"cap of {TAPE_FD_MAX_ELEMENTS:,} for a tape program"):
        check_tape(
            TapeCheck(inputs={"b": big}, program=program, gradient=ComputeRequest("gradient", "L", ("b",)), watch=["b"])
        )
    with pytest.raises(LimitExceeded, match=r"cap of 5 \(TAPESERVE_MAX_FD_ELEMENTS\)"):
        check_tape(
            TapeCheck(
                inputs={"b": TapeInput(np.ones(6))},
                program=program,
                gradient=ComputeRequest("gradient", "L", ("b",)),
                watch=["b"],
            ),
            CheckOptions(max_fd_elements=5),
        )


def test_located_under_places_compute_locations_under_a_prefix() -> None:
    with pytest.raises(InvalidInput) as error, located_under("tape"):
        raise InvalidInput("bad", ("program", "line 1", "col 0"))
    assert error.value.loc == ("tape", "program", "line 1", "col 0")
    with pytest.raises(InvalidInput) as error, located_under("network"):
        raise InvalidInput("bad", ())
    assert error.value.loc == ("network",)
