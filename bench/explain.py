"""`make bench-explain`: explanations of a posted network and of the example served model, side by side in one run.

* Small requests: one instance, integrated gradients with 50 steps, against /v1/networks/gradients on the same
  network (sequential requests over one kept-alive connection, alternating, medians).
* Bulk: integrated gradients, 50 steps × 1,024 instances in one request, end to end (the JSON body's bytes
  sent, the answer's bytes received: the client's encoding of the body is left out), against (a) an in-process
  loop written as TensorFlow's integrated-gradients tutorial writes it (a loop over instances, batches of
  interpolation steps) and (b) the same computation as one batched in-process `tf.function`.

Networks: the seed's softmax layer (3 → 2) and a 3 → 64 → 64 → 2 tanh network; and the repository's example
model `diabetes` through `:explain` (small requests against its `:gradients`, bulk against the same in-process
references on the model loaded in the bench's process). Run it with no other benchmark beside it.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.__main__ import RESULTS, serve, tapeserve_command
from schemas.networks import SEED_FEATURES, SEED_WEIGHTS

STEPS = 50
INSTANCES = 1024
rng = np.random.default_rng(0)
MLP = [rng.normal(size=(64, 4)) * 0.05, rng.normal(size=(64, 65)) * 0.2, rng.normal(size=(2, 65)) * 0.2]
NETWORKS: dict[str, tuple[list[np.ndarray], list[str]]] = {
    "seed softmax 3→2": ([np.array(SEED_WEIGHTS)], ["softmax"]),
    "tanh 3→64→64→2": (MLP, ["tanh", "tanh", "softmax"]),
}
EXAMPLE = "served diabetes (norm → 8 relu → 2)"
EXAMPLE_MODEL = "models/diabetes/1/model.keras"
MODEL_PATH = "/v1/models/diabetes"
PATIENTS = np.column_stack(
    [rng.normal(76, 10, INSTANCES), rng.normal(120, 15, INSTANCES), rng.normal(37.0, 0.5, INSTANCES)]
)


def body(weights: Sequence[np.ndarray], activations: Sequence[str], features: Any) -> dict[str, Any]:
    layers = [{"weights": w.tolist(), "activation": a} for w, a in zip(weights, activations, strict=True)]
    return {"features": features, "layers": layers}


def timed(client: httpx.Client, path: str, document: dict[str, Any] | bytes) -> float:
    """Seconds for one POST; a document given as bytes is sent as they are (the client's JSON encoding of a
    large body is then not in the time)."""
    if isinstance(document, bytes):
        started = time.perf_counter()
        response = client.post(path, content=document, headers={"Content-Type": "application/json"})
    else:
        started = time.perf_counter()
        response = client.post(path, json=document)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"{path}: {response.status_code} {response.text[:300]}")
    return elapsed


def alternate(
    client: httpx.Client, first: tuple[str, dict[str, Any]], second: tuple[str, dict[str, Any]]
) -> tuple[float, float]:
    """Median latencies of two requests sent in turn, after warming both."""
    for _ in range(20):  # warm both paths (compiles, caches)
        timed(client, *first)
        timed(client, *second)
    firsts, seconds = [], []
    for _ in range(300):
        firsts.append(timed(client, *first))
        seconds.append(timed(client, *second))
    return statistics.median(firsts), statistics.median(seconds)


def small_requests(
    client: httpx.Client, weights: Sequence[np.ndarray], activations: Sequence[str]
) -> tuple[float, float]:
    explain = {**body(weights, activations, SEED_FEATURES), "steps": STEPS}
    gradients = {**body(weights, activations, SEED_FEATURES), "labels": 1}
    return alternate(client, ("/v1/networks/explanations", explain), ("/v1/networks/gradients", gradients))


def forward_fn(weights: Sequence[np.ndarray], activations: Sequence[str]) -> Callable[[Any], Any]:
    import tensorflow as tf

    acts = {"softmax": tf.nn.softmax, "tanh": tf.math.tanh}
    matrices = [tf.constant(w, tf.float32) for w in weights]

    def forward(x: Any) -> Any:
        for w, name in zip(matrices, activations, strict=True):
            x = acts[name](tf.linalg.matmul(tf.concat([x, tf.ones_like(x[:, :1])], 1), w, transpose_b=True))
        return x

    return forward


def tutorial_loop(forward: Callable[[Any], Any], features: np.ndarray, batch: int = 32) -> np.ndarray:
    """TensorFlow's integrated-gradients tutorial, generalised to many instances: one at a time, interpolation
    steps in batches, gradients concatenated, the trapezoid rule, scaled by x − b (b = 0)."""
    import tensorflow as tf

    @tf.function  # type: ignore[untyped-decorator]
    def compute_gradients(images: Any, target: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(images)
            probs = tf.gather(forward(images), target, axis=1)
        return tape.gradient(probs, images)

    alphas = tf.linspace(0.0, 1.0, STEPS)
    results = []
    for row in features:
        x = tf.constant(row, tf.float32)
        target = int(tf.argmax(forward(x[None])[0]))
        gradient_batches = []
        for start in range(0, STEPS, batch):
            alpha = alphas[start : start + batch]
            interpolated = alpha[:, None] * x[None]
            gradient_batches.append(compute_gradients(interpolated, tf.constant(target)))
        gradients = tf.concat(gradient_batches, axis=0)
        integral = tf.reduce_mean((gradients[:-1] + gradients[1:]) / 2.0, axis=0)
        results.append((x * integral).numpy())
    return np.stack(results)


def batched_function(forward: Callable[[Any], Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The same computation as one batched tf.function: every instance × step in one gradient call."""
    import tensorflow as tf

    alphas = tf.linspace(0.0, 1.0, STEPS)
    weights = tf.concat([[0.5], tf.ones(STEPS - 2), [0.5]], 0) / (STEPS - 1)

    @tf.function(jit_compile=True)  # type: ignore[untyped-decorator]
    def explain(x: Any) -> Any:
        target = tf.argmax(forward(x), axis=1, output_type=tf.int32)
        points = tf.reshape(alphas[None, :, None] * x[:, None, :], (-1, x.shape[1]))
        with tf.GradientTape() as tape:
            tape.watch(points)
            selected = tf.gather(forward(points), tf.repeat(target, STEPS), axis=1, batch_dims=1)
        gradients = tf.reshape(tape.gradient(selected, points), (-1, STEPS, x.shape[1]))
        return x * tf.reduce_sum(gradients * weights[None, :, None], axis=1)

    return lambda features: explain(tf.constant(features, tf.float32)).numpy()


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bulk(
    client: httpx.Client, path: str, document: dict[str, Any], forward: Callable[[Any], Any], answer_key: str
) -> dict[str, float]:
    """The service's answer to `document` at `path` (attributions under `answer_key`), checked against the
    in-process references, then timed against them."""
    import base64

    batched = batched_function(forward)
    served = client.post(path, json=document).json()
    first = served["explanations"][0]["attributions"][answer_key]
    reference = batched(PATIENTS[:1])
    check = np.frombuffer(base64.b64decode(first["b64"]), np.float32)
    np.testing.assert_allclose(check, reference[0], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(tutorial_loop(forward, PATIENTS[:2])[0], reference[0], rtol=2e-3, atol=1e-5)
    # alternating rounds, medians: the machine's other load hits both sides alike; the body is encoded once,
    # as a client holding its instances as JSON sends them (bytes in, bytes out)
    encoded = json.dumps(document).encode()
    service, in_process = [], []
    for _ in range(7):
        service.append(timed(client, path, encoded))
        in_process.append(best_of(1, lambda: batched(PATIENTS)))
    return {
        "service": statistics.median(service),
        "tutorial loop": best_of(1, lambda: tutorial_loop(forward, PATIENTS)),
        "one tf.function": statistics.median(in_process),
    }


def network_bulk(client: httpx.Client, name: str) -> dict[str, float]:
    weights, activations = NETWORKS[name]
    document = {**body(weights, activations, PATIENTS.tolist()), "steps": STEPS, "response_encoding": "b64"}
    return bulk(client, "/v1/networks/explanations", document, forward_fn(weights, activations), "features")


def model_bulk(client: httpx.Client) -> dict[str, float]:
    """The example model: `:explain` of 1,024 patients against the same references on the model in process."""
    import keras

    model = keras.saving.load_model(EXAMPLE_MODEL)
    document = {"instances": PATIENTS.tolist(), "steps": STEPS, "response_encoding": "b64"}
    return bulk(client, f"{MODEL_PATH}:explain", document, lambda x: model(x, training=False), "vitals")


def model_small_requests(client: httpx.Client) -> tuple[float, float]:
    """One patient: `:explain` (IG, 50 steps) against `:gradients` of the explained class, alternating."""
    explain = {"instances": [SEED_FEATURES], "steps": STEPS}
    gradients = {"instances": [SEED_FEATURES], "class_index": 1}
    return alternate(client, (f"{MODEL_PATH}:explain", explain), (f"{MODEL_PATH}:gradients", gradients))


def bulk_lines(label: str, times: dict[str, float]) -> list[str]:
    head = f"| IG {STEPS} steps × {INSTANCES:,} instances, end to end vs"
    served, loop, function = times["service"], times["tutorial loop"], times["one tf.function"]
    return [
        f"{head} tutorial loop | {label} | {served * 1e3:.1f} ms | {loop * 1e3:.0f} ms | {loop / served:.0f}× faster |",
        f"{head} one tf.function | {label} | {served * 1e3:.1f} ms | {function * 1e3:.1f} ms | "
        f"{served / function:.2f}× its time |",
    ]


def main() -> int:
    lines = ["| measurement | network | tapeserve | comparison | ratio |", "|---|---|---|---|---|"]
    with (
        tempfile.TemporaryDirectory() as logs,
        serve("tapeserve", tapeserve_command(), {}, Path(logs)) as server,
        httpx.Client(base_url=server.base, timeout=120) as client,
    ):
        for name, (weights, activations) in NETWORKS.items():
            explained, plain = small_requests(client, weights, activations)
            lines.append(
                f"| 1 instance, IG {STEPS} steps vs /v1/networks/gradients (median latency) | {name} | "
                f"{explained * 1e3:.2f} ms | {plain * 1e3:.2f} ms | {explained / plain:.2f}× |"
            )
        explained, plain = model_small_requests(client)
        lines.append(
            f"| 1 instance, IG {STEPS} steps vs the model's :gradients (median latency) | {EXAMPLE} | "
            f"{explained * 1e3:.2f} ms | {plain * 1e3:.2f} ms | {explained / plain:.2f}× |"
        )
        for name in NETWORKS:
            lines.extend(bulk_lines(name, network_bulk(client, name)))
        lines.extend(bulk_lines(EXAMPLE, model_bulk(client)))
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "explain.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
