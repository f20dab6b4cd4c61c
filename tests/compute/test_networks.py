"""Dense networks: every output against a plain GradientTape written here, or numpy closed forms."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest
import tensorflow as tf

from service.compute.errors import InvalidInput
from service.compute.networks import NetworkProblem, NetworkResult, prepare_network, seed_problem
from service.compute.networks.engine import NetworkEngine
from service.compute.networks.problem import INCLUDES, FloatDType, Loss, Reduction

Array = npt.NDArray[Any]

SEED_X = np.array([76.0, 120.0, 37.5])
SEED_Y = np.array([0.0, 1.0])  # diabetic: class 1
SEED_W = np.array([[0.01, -0.02, 0.03, 0.01], [-0.01, 0.02, -0.015, 0.02]])
ALL = tuple(INCLUDES)
TIGHT = 1e-12

REFERENCE_ACTIVATIONS: dict[str, Callable[[Any, float], Any]] = {
    "linear": lambda z, alpha: z,
    "sigmoid": lambda z, alpha: 1.0 / (1.0 + tf.exp(-z)),
    "tanh": lambda z, alpha: tf.math.tanh(z),
    "relu": lambda z, alpha: tf.nn.relu(z),
    # the seed's LReLU; tf.nn.leaky_relu would round alpha to a float32 attribute even in float64
    "leaky_relu": lambda z, alpha: tf.maximum(alpha * z, z),
    "elu": lambda z, alpha: tf.nn.elu(z),
    "selu": lambda z, alpha: tf.nn.selu(z),
    "gelu": lambda z, alpha: tf.nn.gelu(z, approximate=False),
    "softplus": lambda z, alpha: tf.math.softplus(z),
    "swish": lambda z, alpha: z * tf.math.sigmoid(z),
    "softmax": lambda z, alpha: tf.nn.softmax(z, axis=-1),
    "log_softmax": lambda z, alpha: tf.nn.log_softmax(z, axis=-1),
}


@pytest.fixture(scope="module")
def engine() -> Iterator[NetworkEngine]:
    yield NetworkEngine()


def reference(
    features: Array,
    targets: Array,
    weights: Sequence[Array],
    activations: Sequence[str],
    *,
    alphas: Sequence[float] | None = None,
    bias: str = "augmented",
    loss: str = "cross_entropy",
    reduction: str = "sum",
    dtype: str = "float32",
) -> dict[str, Any]:
    """The network on one plain persistent GradientTape, without a request axis or batch_jacobian."""
    alphas = alphas or [0.01] * len(weights)
    x = tf.constant(features, dtype=dtype)
    y = tf.constant(targets, dtype=dtype)
    ws = [tf.Variable(w, dtype=dtype) for w in weights]
    single = x.shape.rank == 1
    layers: list[dict[str, Any]] = []
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        inputs = x
        for w, name, alpha in zip(ws, activations, alphas, strict=True):
            ones = tf.ones((*inputs.shape[:-1], 1), dtype=dtype)
            x_b = tf.concat([inputs, ones], axis=-1) if bias == "augmented" else inputs
            z = tf.linalg.matvec(w, x_b) if single else tf.matmul(x_b, w, transpose_b=True)
            a = REFERENCE_ACTIVATIONS[name](z, alpha)
            layers.append({"inputs": x_b, "z": z, "a": a})
            inputs = a
        y_hat = inputs
        if loss == "cross_entropy":
            per_sample = tf.reduce_sum(-y * tf.math.log(y_hat), axis=-1)
        elif loss == "binary_cross_entropy":
            per_sample = -tf.reduce_mean(y * tf.math.log(y_hat) + (1 - y) * tf.math.log(1 - y_hat), axis=-1)
        else:
            per_sample = tf.reduce_mean((y_hat - y) ** 2, axis=-1)
        total = {"sum": tf.reduce_sum, "mean": tf.reduce_mean, "none": tf.identity}[reduction](per_sample)
    local = [("loss", "predictions", tape.gradient(total, y_hat))]
    jacobians = []
    for i, (w, layer) in enumerate(zip(ws, layers, strict=True)):
        local.append((f"a{i + 1}", f"z{i + 1}", tape.gradient(layer["a"], layer["z"])))
        local.append((f"z{i + 1}", f"W{i + 1}", tape.gradient(layer["z"], w)))
        a_by_z = tape.jacobian(layer["a"], layer["z"])
        if not single:  # (B, u, B, u) -> the per-sample blocks on the diagonal
            batch = a_by_z.shape[0]
            a_by_z = tf.stack([a_by_z[b, :, b, :] for b in range(batch)])
        jacobians.append((f"a{i + 1}", f"z{i + 1}", a_by_z))
        jacobians.append((f"z{i + 1}", f"W{i + 1}", tape.jacobian(layer["z"], w)))
    result = {
        "loss": total.numpy(),
        "predictions": y_hat.numpy(),
        "weight_gradients": [g.numpy() for g in tape.gradient(total, ws)],
        "input_gradients": tape.gradient(total, x).numpy(),
        "intermediates": [{key: value.numpy() for key, value in layer.items()} for layer in layers],
        "local_gradients": [(t, s, v.numpy()) for t, s, v in local],
        "jacobians": [(t, s, v.numpy()) for t, s, v in jacobians],
    }
    del tape
    return result


def assert_matches(result: NetworkResult, expected: dict[str, Any], rtol: float, atol: float) -> None:
    def close(actual: Array | None, wanted: Array, what: str) -> None:
        assert actual is not None, what
        assert actual.shape == wanted.shape, f"{what}: shape {actual.shape} != {wanted.shape}"
        np.testing.assert_allclose(actual, wanted, rtol=rtol, atol=atol, err_msg=what)

    close(result.loss, expected["loss"], "loss")
    close(result.predictions, expected["predictions"], "predictions")
    assert len(result.weight_gradients) == len(expected["weight_gradients"])
    for i, (got, wanted) in enumerate(zip(result.weight_gradients, expected["weight_gradients"], strict=True)):
        close(got, wanted, f"dL/dW{i + 1}")
    close(result.input_gradients, expected["input_gradients"], "dL/dfeatures")
    assert result.intermediates is not None
    for i, (got_layer, wanted_layer) in enumerate(zip(result.intermediates, expected["intermediates"], strict=True)):
        for key in ("inputs", "z", "a"):
            close(got_layer[key], wanted_layer[key], f"layer {i + 1} {key}")
    for group in ("local_gradients", "jacobians"):
        got_entries = getattr(result, group)
        assert got_entries is not None
        assert [(t, s) for t, s, _ in got_entries] == [(t, s) for t, s, _ in expected[group]]
        for (target, source, got), (_, _, wanted) in zip(got_entries, expected[group], strict=True):
            close(got, wanted, f"{group} {target} <- {source}")


def softmax(z: Array) -> Array:
    shifted = np.exp(z - z.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


# --- the seed's case -------------------------------------------------------------------------


def test_seed_case_matches_a_plain_tape(engine: NetworkEngine) -> None:
    problem = prepare_network(SEED_X, labels=1, weights=[SEED_W], activations=["softmax"], includes=ALL)
    result = engine.run([problem])[0]
    expected = reference(SEED_X, SEED_Y, [SEED_W], ["softmax"])
    assert_matches(result, expected, rtol=1e-5, atol=1e-6)
    assert result.loss.dtype == np.float32
    assert result.loss.shape == ()
    # the seed's puzzle: d(Σa)/dz of a softmax is zero
    assert result.local_gradients is not None
    np.testing.assert_allclose(result.local_gradients[1][2], [0.0, 0.0], atol=1e-6)
    assert result.jacobians is not None
    assert result.jacobians[0][2].shape == (2, 2)
    assert result.jacobians[1][2].shape == (2, 2, 4)


def test_seed_weight_gradient_is_the_closed_form(engine: NetworkEngine) -> None:
    result = engine.run([seed_problem()])[0]
    x_b = np.append(SEED_X, 1.0)
    a = softmax(SEED_W @ x_b)
    np.testing.assert_allclose(result.weight_gradients[0], np.outer(a - SEED_Y, x_b), rtol=1e-5)
    np.testing.assert_allclose(result.loss, -np.log(a[1]), rtol=1e-5)


def test_float64_seed_matches_numpy_closed_forms_to_1e12(engine: NetworkEngine) -> None:
    problem = prepare_network(
        SEED_X, labels=1, weights=[SEED_W], activations=["softmax"], dtype="float64", includes=ALL
    )
    result = engine.run([problem])[0]
    x_b = np.append(SEED_X, 1.0)
    z = SEED_W @ x_b
    a = softmax(z)
    assert result.loss.dtype == np.float64
    np.testing.assert_allclose(result.loss, -np.log(a[1]), rtol=TIGHT, atol=TIGHT)
    np.testing.assert_allclose(result.predictions, a, rtol=TIGHT, atol=TIGHT)
    np.testing.assert_allclose(result.weight_gradients[0], np.outer(a - SEED_Y, x_b), rtol=TIGHT, atol=TIGHT)
    assert result.input_gradients is not None
    np.testing.assert_allclose(result.input_gradients, SEED_W[:, :3].T @ (a - SEED_Y), rtol=TIGHT, atol=TIGHT)
    assert result.intermediates is not None
    np.testing.assert_allclose(result.intermediates[0]["inputs"], x_b, rtol=TIGHT, atol=TIGHT)
    np.testing.assert_allclose(result.intermediates[0]["z"], z, rtol=TIGHT, atol=TIGHT)
    assert result.local_gradients is not None
    (_, _, loss_by_y_hat), (_, _, a_by_z), (_, _, z_by_w) = result.local_gradients
    np.testing.assert_allclose(loss_by_y_hat, -SEED_Y / a, rtol=TIGHT, atol=TIGHT)
    np.testing.assert_allclose(a_by_z, [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(z_by_w, np.tile(x_b, (2, 1)), rtol=TIGHT, atol=TIGHT)
    assert result.jacobians is not None
    softmax_jacobian = np.diag(a) - np.outer(a, a)
    np.testing.assert_allclose(result.jacobians[0][2], softmax_jacobian, rtol=TIGHT, atol=TIGHT)
    z_by_w_jacobian = np.einsum("ij,c->ijc", np.eye(2), x_b)
    np.testing.assert_allclose(result.jacobians[1][2], z_by_w_jacobian, rtol=TIGHT, atol=TIGHT)


# --- batches, reductions, labels, bias -------------------------------------------------------


def two_layer_batch(rng: np.random.Generator) -> tuple[Array, Array, list[Array]]:
    features = rng.normal(size=(5, 3))
    labels = np.array([0, 2, 1, 2, 0])
    weights = [0.5 * rng.normal(size=(4, 4)), 0.5 * rng.normal(size=(3, 5))]
    return features, labels, weights


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_two_layer_tanh_softmax_batch_matches_a_plain_tape(engine: NetworkEngine, reduction: Reduction) -> None:
    features, labels, weights = two_layer_batch(np.random.default_rng(2))
    problem = prepare_network(
        features,
        labels=labels.tolist(),
        weights=weights,
        activations=["tanh", "softmax"],
        reduction=reduction,
        dtype="float64",
        includes=ALL,
    )
    result = engine.run([problem])[0]
    expected = reference(
        features, np.eye(3)[labels], weights, ["tanh", "softmax"], reduction=reduction, dtype="float64"
    )
    assert_matches(result, expected, rtol=1e-10, atol=1e-12)
    assert result.loss.shape == ((5,) if reduction == "none" else ())
    assert result.jacobians is not None
    assert [j.shape for _, _, j in result.jacobians] == [(5, 4, 4), (5, 4, 4, 4), (5, 3, 3), (5, 3, 3, 5)]


def test_float32_batch_matches_a_plain_tape(engine: NetworkEngine) -> None:
    features, labels, weights = two_layer_batch(np.random.default_rng(3))
    problem = prepare_network(
        features, labels=labels.tolist(), weights=weights, activations=["tanh", "softmax"], includes=ALL
    )
    expected = reference(features, np.eye(3)[labels], weights, ["tanh", "softmax"])
    assert_matches(engine.run([problem])[0], expected, rtol=1e-5, atol=1e-6)


def test_targets_and_equivalent_labels_give_identical_results(engine: NetworkEngine) -> None:
    features, labels, weights = two_layer_batch(np.random.default_rng(4))
    common: dict[str, Any] = {"weights": weights, "activations": ["tanh", "softmax"], "includes": ALL}
    by_labels = prepare_network(features, labels=labels.tolist(), **common)
    by_targets = prepare_network(features, targets=np.eye(3)[labels], **common)
    assert by_labels.spec == by_targets.spec
    first, second = engine.run([by_labels])[0], engine.run([by_targets])[0]
    np.testing.assert_array_equal(first.loss, second.loss)
    np.testing.assert_array_equal(first.weight_gradients[1], second.weight_gradients[1])
    assert first.input_gradients is not None
    assert second.input_gradients is not None
    np.testing.assert_array_equal(first.input_gradients, second.input_gradients)


def test_labels_of_a_one_unit_layer_are_the_target_value(engine: NetworkEngine) -> None:
    features = np.array([[0.5, -1.0], [1.5, 2.0], [0.0, 0.3]])
    weights = [np.array([[0.4, -0.3, 0.1]])]
    common: dict[str, Any] = {"weights": weights, "activations": ["sigmoid"], "loss": "binary_cross_entropy"}
    by_labels = engine.run([prepare_network(features, labels=[1, 0, 1], **common)])[0]
    by_targets = engine.run([prepare_network(features, targets=np.array([[1.0], [0.0], [1.0]]), **common)])[0]
    np.testing.assert_array_equal(by_labels.loss, by_targets.loss)
    np.testing.assert_array_equal(by_labels.weight_gradients[0], by_targets.weight_gradients[0])


def test_bias_none_matches_a_plain_tape(engine: NetworkEngine) -> None:
    rng = np.random.default_rng(5)
    features = rng.normal(size=(4, 3))
    weights = [rng.normal(size=(5, 3)), rng.normal(size=(2, 5))]
    targets = softmax(rng.normal(size=(4, 2)))  # probability rows
    problem = prepare_network(
        features,
        targets=targets,
        weights=weights,
        activations=["relu", "softmax"],
        bias="none",
        dtype="float64",
        includes=ALL,
    )
    result = engine.run([problem])[0]
    expected = reference(features, targets, weights, ["relu", "softmax"], bias="none", dtype="float64")
    assert_matches(result, expected, rtol=1e-10, atol=1e-12)
    assert result.intermediates is not None
    assert result.intermediates[0]["inputs"].shape == (4, 3)
    assert result.jacobians is not None
    assert result.jacobians[1][2].shape == (4, 5, 5, 3)


def test_single_sample_with_reduction_none_has_a_scalar_loss(engine: NetworkEngine) -> None:
    problem = prepare_network(SEED_X, labels=1, weights=[SEED_W], activations=["softmax"], reduction="none")
    result = engine.run([problem])[0]
    assert result.loss.shape == ()
    assert result.predictions.shape == (2,)
    assert result.input_gradients is None
    assert result.intermediates is None
    assert result.local_gradients is None
    assert result.jacobians is None
    np.testing.assert_allclose(result.loss, -np.log(softmax(SEED_W @ np.append(SEED_X, 1.0))[1]), rtol=1e-5)


# --- activations and losses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("activation", "alpha"),
    [(name, None) for name in REFERENCE_ACTIVATIONS] + [("leaky_relu", 0.3)],
)
def test_each_activation_matches_a_plain_tape(engine: NetworkEngine, activation: str, alpha: float | None) -> None:
    # the zero sample with a zero bias puts z exactly on the kink of relu and leaky_relu
    features = np.array([[0.7, -1.2, 2.0], [0.0, 0.0, 0.0], [-1.5, 0.4, -0.3], [2.5, 1.0, -2.0]])
    weights = [np.array([[0.5, -0.4, 0.3, 0.0], [-0.6, 0.2, -0.1, 0.0], [0.3, 0.8, -0.5, 0.1]])]
    targets = np.array([[0.2, -0.1, 0.4], [0.0, 0.5, -0.3], [0.1, 0.1, 0.1], [-0.2, 0.3, 0.6]])
    problem = prepare_network(
        features,
        targets=targets,
        weights=weights,
        activations=[activation],
        alphas=[alpha],
        loss="mean_squared_error",
        dtype="float64",
        includes=ALL,
    )
    assert problem.spec.activations == (activation,)
    expected = reference(
        features,
        targets,
        weights,
        [activation],
        alphas=[0.01 if alpha is None else alpha],
        loss="mean_squared_error",
        dtype="float64",
    )
    assert_matches(engine.run([problem])[0], expected, rtol=1e-10, atol=1e-12)


def test_leaky_relu_default_alpha_is_the_seeds_001(engine: NetworkEngine) -> None:
    problem = prepare_network(
        np.array([-2.0]), targets=np.array([0.0]), weights=[np.array([[1.0, 0.0]])], activations=["leaky_relu"],
        loss="mean_squared_error", includes=["local_gradients"],
    )  # fmt: skip
    result = engine.run([problem])[0]
    np.testing.assert_allclose(result.predictions, [-0.02], rtol=1e-6)
    assert result.local_gradients is not None
    np.testing.assert_allclose(result.local_gradients[1][2], [0.01], rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_binary_cross_entropy_matches_numpy(engine: NetworkEngine, reduction: Reduction) -> None:
    rng = np.random.default_rng(6)
    features = rng.normal(size=(6, 3))
    weights = [rng.normal(size=(2, 4))]
    targets = rng.uniform(size=(6, 2))
    problem = prepare_network(
        features,
        targets=targets,
        weights=weights,
        activations=["sigmoid"],
        loss="binary_cross_entropy",
        reduction=reduction,
        dtype="float64",
        includes=["input_gradients"],
    )
    result = engine.run([problem])[0]
    x_b = np.hstack([features, np.ones((6, 1))])
    a = 1.0 / (1.0 + np.exp(-(x_b @ weights[0].T)))
    per_sample = -np.mean(targets * np.log(a) + (1 - targets) * np.log(1 - a), axis=1)
    scale = 1.0 if reduction == "sum" else 1.0 / 6
    dz = scale * (a - targets) / 2  # sigmoid + BCE: dL/dz = (a − y) / k per sample
    np.testing.assert_allclose(result.loss, scale * per_sample.sum(), rtol=1e-12)
    np.testing.assert_allclose(result.weight_gradients[0], dz.T @ x_b, rtol=1e-12, atol=1e-14)
    assert result.input_gradients is not None
    np.testing.assert_allclose(result.input_gradients, dz @ weights[0][:, :3], rtol=1e-12, atol=1e-14)


def test_mean_squared_error_matches_numpy(engine: NetworkEngine) -> None:
    rng = np.random.default_rng(7)
    features = rng.normal(size=(4, 2))
    weights = [rng.normal(size=(3, 3))]
    targets = rng.normal(size=(4, 3))
    problem = prepare_network(
        features,
        targets=targets,
        weights=weights,
        activations=["linear"],
        loss="mean_squared_error",
        reduction="none",
        dtype="float64",
    )
    result = engine.run([problem])[0]
    x_b = np.hstack([features, np.ones((4, 1))])
    z = x_b @ weights[0].T
    np.testing.assert_allclose(result.loss, np.mean((z - targets) ** 2, axis=1), rtol=1e-12)
    # reduction none: the gradient of the per-sample vector is that of its sum
    np.testing.assert_allclose(result.weight_gradients[0], (2 * (z - targets) / 3).T @ x_b, rtol=1e-12)


def test_log_of_zero_gives_an_infinite_loss(engine: NetworkEngine) -> None:
    weights = [np.array([[10.0, 0.0, 0.0, 0.0], [-10.0, 0.0, 0.0, 0.0]])]  # z = ±760: softmax [1, 0]
    problem = prepare_network(SEED_X, labels=1, weights=weights, activations=["softmax"])
    result = engine.run([problem])[0]
    assert result.predictions[1] == 0.0
    assert np.isposinf(result.loss)


# --- merging requests and the function cache ------------------------------------------------


def merge_problems(rng: np.random.Generator, samples: Sequence[int] = (3, 3, 3)) -> list[NetworkProblem]:
    """Three requests of one structure (their sample counts share the bucket of 4)."""
    return [
        prepare_network(
            rng.normal(size=(count, 3)),
            labels=rng.integers(0, 2, size=count).tolist(),
            weights=[rng.normal(size=(4, 4)), rng.normal(size=(2, 5))],
            activations=["leaky_relu", "softmax"],
            alphas=[alpha, None],
            includes=ALL,
        )
        for alpha, count in zip((0.05, 0.2, None), samples, strict=True)
    ]


def flatten_result(result: NetworkResult) -> list[Array]:
    assert result.input_gradients is not None
    arrays = [result.loss, result.predictions, *result.weight_gradients, result.input_gradients]
    arrays += [layer[key] for layer in result.intermediates or [] for key in ("inputs", "z", "a")]
    arrays += [value for _, _, value in result.local_gradients or []]
    arrays += [value for _, _, value in result.jacobians or []]
    return arrays


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("samples", [(3, 3, 3), (4, 4, 4), (4, 3, 4)], ids=["padded", "full", "mixed"])
def test_merged_requests_equal_each_request_alone(jit_compile: bool, samples: tuple[int, int, int]) -> None:
    engine = NetworkEngine(jit_compile=jit_compile)
    problems = merge_problems(np.random.default_rng(8), samples)
    alone = [engine.run([problem])[0] for problem in problems]
    merged = engine.run(problems)
    assert engine.stats()["traces"] == 1
    for single, together in zip(alone, merged, strict=True):
        for a, b in zip(flatten_result(single), flatten_result(together), strict=True):
            assert a.shape == b.shape
            np.testing.assert_array_max_ulp(a, b, maxulp=1)
    # the merged answers are the right ones, not merely consistent
    expected = reference(
        problems[1].features, problems[1].targets, problems[1].weights, ["leaky_relu", "softmax"], alphas=[0.2, 0.01]
    )
    assert_matches(merged[1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", sorted(REFERENCE_ACTIVATIONS))
def test_merged_requests_equal_each_request_alone_bit_for_bit(activation: str) -> None:
    # odd unit counts and sample counts put each request's values at every offset of a SIMD packet, and a
    # request alone multiplies a batch of one matrix pair: neither may change a single bit
    engine = NetworkEngine()
    rng = np.random.default_rng(21)
    for loss, last, dtype in (
        ("cross_entropy", "softmax", "float32"),
        ("binary_cross_entropy", "sigmoid", "float64"),
        ("mean_squared_error", "tanh", "float32"),
    ):
        problems = [
            prepare_network(
                rng.normal(size=(samples, 3)),
                targets=rng.uniform(0.1, 0.9, size=(samples, 3)),
                weights=[rng.normal(size=(5, 4)), rng.normal(size=(3, 6))],
                activations=[activation, last],
                alphas=[0.1 * samples if activation == "leaky_relu" else None, None],
                loss=cast(Loss, loss),
                reduction="mean",
                dtype=cast(FloatDType, dtype),
                includes=ALL,
            )
            for samples in (7, 5, 8)
        ]
        alone = [engine.run([problem])[0] for problem in problems]
        merged = engine.run(problems)
        for single, together in zip(alone, merged, strict=True):
            for a, b in zip(flatten_result(single), flatten_result(together), strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{activation} {loss} {dtype}")


def test_one_trace_serves_any_number_of_requests() -> None:
    engine = NetworkEngine()
    engine.run([seed_problem()])
    engine.run([seed_problem() for _ in range(3)])
    assert engine.stats() == {"hits": 1, "misses": 1, "traces": 1, "size": 1}


def test_run_refuses_problems_of_different_specs(engine: NetworkEngine) -> None:
    with pytest.raises(ValueError, match="share one NetworkSpec"):
        engine.run([seed_problem(), seed_problem(dtype="float64")])


def test_lru_evicts_the_least_recently_used_spec() -> None:
    engine = NetworkEngine(cache_size=2)
    first, second, third = (seed_problem(includes=inc) for inc in ([], ["input_gradients"], ["intermediates"]))
    engine.run([first])
    engine.run([second])
    engine.run([first])  # first is now the most recently used
    engine.run([third])  # evicts second
    assert engine.stats() == {"hits": 1, "misses": 3, "traces": 3, "size": 2}
    engine.run([first])
    assert engine.stats() == {"hits": 2, "misses": 3, "traces": 3, "size": 2}
    engine.run([second])
    assert engine.stats() == {"hits": 2, "misses": 4, "traces": 4, "size": 2}


def test_warmup_traces_the_seed_case() -> None:
    engine = NetworkEngine()
    engine.warmup()
    traced = engine.stats()["traces"]
    assert traced >= 1
    engine.run([seed_problem()])
    assert engine.stats()["traces"] == traced
    assert engine.stats()["hits"] >= 1


# --- validation ------------------------------------------------------------------------------


def seed_request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "features": SEED_X,
        "labels": 1,
        "weights": [SEED_W],
        "activations": ["softmax"],
    }
    request.update(changes)
    return request


def two_layer_request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "features": np.ones((2, 2)),
        "labels": [0, 1],
        "weights": [np.ones((3, 3)), np.ones((2, 4))],
        "activations": ["tanh", "softmax"],
    }
    request.update(changes)
    return request


INVALID: list[tuple[str, dict[str, Any], tuple[str | int, ...], list[str]]] = [
    ("scalar features", seed_request(features=np.array(3.0)), ("features",), ["rank 0"]),
    ("rank-3 features", seed_request(features=np.ones((1, 1, 3))), ("features",), ["rank 3"]),
    ("no features", seed_request(features=np.ones((1, 0))), ("features",), ["at least one feature"]),
    ("no samples", seed_request(features=np.ones((0, 3)), labels=[]), ("features",), ["no samples"]),
    ("text features", seed_request(features=np.array(["a", "b"])), ("features",), ["numbers"]),
    ("NaN feature", seed_request(features=np.array([1.0, np.nan, 2.0])), ("features", 1), ["finite"]),
    (
        "float32 overflow",
        seed_request(features=np.array([[1.0, 2.0, 3.0], [4.0, 1e39, 5.0]]), labels=[0, 1]),
        ("features", 1, 1),
        ["overflows float32", "float64"],
    ),
    ("no layers", seed_request(weights=[], activations=[]), ("layers",), ["at least one layer"]),
    ("vector weights", seed_request(weights=[np.ones(4)]), ("layers", 0, "weights"), ["matrix", "rank 1"]),
    ("no units", seed_request(weights=[np.ones((0, 4))]), ("layers", 0, "weights"), ["at least one unit"]),
    (
        "first layer columns",
        seed_request(weights=[np.ones((2, 3))]),
        ("layers", 0, "weights"),
        ["layer 1 expects 3 inputs", "3 features", "+ 1 bias column = 4 columns, got 3"],
    ),
    (
        "second layer columns",
        two_layer_request(features=np.ones((2, 2)), weights=[np.ones((3, 3)), np.ones((2, 5))]),
        ("layers", 1, "weights"),
        ["layer 2 expects 3 inputs", "3 units of layer 1", "+ 1 bias column = 4 columns, got 5"],
    ),
    (
        "bias none columns",
        seed_request(bias="none"),
        ("layers", 0, "weights"),
        ["layer 1 expects 3 inputs", "= 3 columns", "bias none", "got 4"],
    ),
    (
        "infinite weight",
        seed_request(weights=[np.array([[0.1, 0.2, 0.3, 0.4], [0.5, np.inf, 0.7, 0.8]])]),
        ("layers", 0, "weights", 1, 1),
        ["finite"],
    ),
    (
        "unknown activation",
        two_layer_request(activations=["tanh", "softmaxx"]),
        ("layers", 1, "activation"),
        ["'softmaxx'", "layer 2", "leaky_relu"],
    ),
    (
        "alpha on softmax",
        seed_request(alphas=[0.1]),
        ("layers", 0, "alpha"),
        ["leaky_relu only", "softmax"],
    ),
    (
        "infinite alpha",
        seed_request(activations=["leaky_relu"], alphas=[float("inf")], targets=np.zeros(2), labels=None),
        ("layers", 0, "alpha"),
        ["finite"],
    ),
    ("labels and targets", seed_request(targets=SEED_Y), (), ["exactly one of labels", "targets"]),
    ("neither labels nor targets", seed_request(labels=None), (), ["exactly one of labels", "targets"]),
    (
        "one-hot row as labels",
        seed_request(labels=[0, 1]),
        ("labels",),
        ["2 labels for 1 sample", "one class index per sample", "use targets"],
    ),
    (
        "one label for a batch",
        two_layer_request(labels=1),
        ("labels",),
        ["1 label for 2 samples", "use targets"],
    ),
    (
        "one-hot rows as nested labels",
        two_layer_request(labels=[[1, 0], [0, 1]]),
        ("labels",),
        ["int or a list of ints", "use targets"],
    ),
    ("class out of range", two_layer_request(labels=[0, 2]), ("labels", 1), ["label 2", "0 to 1"]),
    ("negative class", seed_request(labels=-1), ("labels",), ["label -1"]),
    ("fractional label", two_layer_request(labels=[0, 0.5]), ("labels", 1), ["whole numbers"]),
    ("boolean label", seed_request(labels=True), ("labels",), ["boolean"]),
    (
        "one-unit label",
        seed_request(weights=[np.ones((1, 4))], activations=["sigmoid"], labels=2),
        ("labels",),
        ["1 unit", "0 or 1"],
    ),
    (
        "targets shape",
        seed_request(labels=None, targets=np.array([[0.0, 1.0]])),
        ("targets",),
        ["predictions' shape (2,)", "got (1, 2)"],
    ),
    (
        "class indices as targets",
        two_layer_request(labels=None, targets=np.array([0, 1])),
        ("targets",),
        ["(2, 2)", "use labels"],
    ),
    (
        "NaN target",
        seed_request(labels=None, targets=np.array([np.nan, 1.0])),
        ("targets", 0),
        ["finite"],
    ),
    ("dtype", seed_request(dtype="float16"), ("dtype",), ["'float16'", "float32"]),
    ("bias", seed_request(bias="prepended"), ("bias",), ["'prepended'", "augmented"]),
    ("loss", seed_request(loss="hinge"), ("loss",), ["'hinge'", "cross_entropy"]),
    ("reduction", seed_request(reduction="max"), ("reduction",), ["'max'", "mean"]),
    ("include", seed_request(includes=["hessians"]), ("include",), ["'hessians'", "jacobians"]),
]


@pytest.mark.parametrize(("request_", "loc", "fragments"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_input_names_its_location(
    request_: dict[str, Any], loc: tuple[str | int, ...], fragments: list[str]
) -> None:
    features = request_.pop("features")
    with pytest.raises(InvalidInput) as raised:
        prepare_network(features, **request_)
    assert raised.value.loc == loc
    for fragment in fragments:
        assert fragment in raised.value.message


def test_integer_features_are_cast_to_the_compute_dtype() -> None:
    problem = prepare_network(np.array([76, 120, 37]), labels=1, weights=[SEED_W], activations=["softmax"])
    assert problem.features.dtype == np.float32
    assert problem.features.shape == (1, 3)
    assert problem.targets.tolist() == [[0.0, 1.0]]
    assert problem.spec.single
    assert problem.spec.batch == 1


def test_batches_of_one_power_of_two_bucket_share_a_trace_and_merge() -> None:
    engine = NetworkEngine()
    rng = np.random.default_rng(11)
    weights = [0.5 * rng.normal(size=(3, 4))]
    problems = []
    for samples in (5, 6, 7, 8):
        features = rng.normal(size=(samples, 3))
        labels = rng.integers(0, 3, size=samples)
        problems.append(
            prepare_network(
                features,
                labels=labels.tolist(),
                weights=weights,
                activations=["softmax"],
                reduction="mean",
                dtype="float64",
                includes=ALL,
            )
        )
    assert {problem.spec for problem in problems} == {problems[0].spec}
    assert problems[0].spec.batch == 8
    results = engine.run(problems)
    assert engine.stats()["traces"] == 1
    for problem, result in zip(problems, results, strict=True):
        expected = reference(
            problem.features, problem.targets, list(problem.weights), ["softmax"], reduction="mean", dtype="float64"
        )
        assert_matches(result, expected, rtol=1e-10, atol=1e-12)
        assert result.predictions.shape == (problem.samples, 3)


def test_padding_does_not_turn_an_infinite_loss_into_nan(engine: NetworkEngine) -> None:
    # the last sample's labelled class gets probability exactly 0, and it is the row the padding repeats
    features = np.array([[1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
    weights = [np.array([[40.0, 40.0, 0.0], [-40.0, -40.0, 0.0]])]
    problem = prepare_network(features, labels=[0, 0, 1], weights=weights, activations=["softmax"], dtype="float32")
    assert problem.spec.batch == 4
    result = engine.run([problem])[0]
    assert result.loss == np.inf


def test_results_say_whether_they_are_all_finite(engine: NetworkEngine) -> None:
    assert engine.run([seed_problem()])[0].finite
    # a softmax driven to an exact 0 for the labelled class: log 0 = -inf, an infinite loss
    saturated = prepare_network(
        np.array([1000.0, 0.0, 0.0]),
        labels=1,
        weights=[np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])],
        activations=["softmax"],
    )
    merged = engine.run([seed_problem(includes=()), saturated])
    assert np.isinf(merged[1].loss) and not merged[1].finite
    assert not merged[0].finite  # one check per merged call: a neighbour's infinity makes encoders check each


def test_requests_of_one_structure_share_one_spec_object() -> None:
    first, second = seed_problem(includes=()), seed_problem(includes=())
    assert first.spec is second.spec  # merging and the function cache compare specs by identity first
    assert seed_problem(includes=("jacobians",)).spec is not first.spec
