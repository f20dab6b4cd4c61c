"""`python -m bench.bulk_bound`: what a nested-JSON bulk `:gradients` request costs at the least, in one
process with no HTTP: the bulk body read by simdjson straight into one numpy buffer (no check of its
shape), the example model's forward pass and input gradient under one XLA-compiled `tf.function` (as a
served bucket of this size is), and orjson writing the answer's two nested arrays, with the C heap kept as
the server keeps it (`service/heap.py`). Prints the medians in
milliseconds as one JSON object; `bench.models` runs it beside the served bulk requests, so that their
figures can be read against this bound.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from statistics import median
from typing import Any

import keras
import numpy as np
import orjson
import simdjson
import tensorflow as tf

from bench.models import BULK, EXAMPLE_MODEL, bulk_bodies
from service.heap import keep_freed_memory
from service.settings import Settings

REPEATS = 15


def timed(step: Callable[[], Any]) -> float:
    """The median milliseconds of `step` over `REPEATS` calls, after one call to warm it up."""
    step()
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return median(times) * 1000


def main() -> int:
    keep_freed_memory(Settings().heap_keep_mb)
    body = bulk_bodies()["nested"]
    model = keras.saving.load_model(EXAMPLE_MODEL)

    def read() -> np.ndarray:
        rows: Any = simdjson.Parser().parse(body)["instances"]  # type: ignore[index]
        return np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64).reshape(BULK, -1)

    vitals = tf.constant(read().astype(np.float32))

    @tf.function(jit_compile=True)  # type: ignore[untyped-decorator]  # as the served bulk buckets are
    def tape(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as gradient_tape:
            gradient_tape.watch(x)
            probabilities = model(x, training=False)
            target = probabilities[:, 1]
        return probabilities, gradient_tape.gradient(target, x)

    probabilities, gradients = (value.numpy() for value in tape(vitals))

    def render() -> bytes:
        tensors = {"probabilities": probabilities, "vitals": gradients}
        document = {
            name: {"shape": list(value.shape), "dtype": "float32", "values": value} for name, value in tensors.items()
        }
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)

    steps = {
        "read": timed(read),
        "tape": timed(lambda: [value.numpy() for value in tape(vitals)]),
        "render": timed(render),
    }
    json.dump({**steps, "total": sum(steps.values())}, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
