"""The floor plus the least a served model's `:predict` must do beside it, to bound what the floor's ratio can be.

The reference floor (`bench/reference_app.py`) parses the predict body and answers canned bytes on the
event loop. tapeserve's house (ARCHITECTURE.md) runs TensorFlow in one worker thread pinned to the device,
so every computation is handed from the event loop to that thread and back. This app is the floor's route
with that hand-off and nothing else of tapeserve's: no middleware, no access line, no deadlines, no
problem+json path. Jobs queue to one thread, which takes every job waiting, answers them all, and wakes the
event loop once for the lot (the cheapest hand-off there is: one wake-up per merged batch).

With `BENCH_HANDOFF_MODEL` naming a `.keras` file, the thread also does the computation: the instances
become one float32 array, one `tf.function` call of the model answers the merged batch, and each request's
rows are rendered with orjson. Without it, the thread answers tapeserve's canned bytes, so the hand-off's
cost is measured alone. With `BENCH_HANDOFF_INLINE=1` as well, there is no thread: the route calls the
model on the event loop, one request a call. Served with the reference floor's server settings.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Response

from bench.reference_app import canned
from schemas.models import PredictRequest

app = FastAPI(title="floor plus the worker hand-off")
Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[bytes]", Any]
_jobs: queue.SimpleQueue[Job] = queue.SimpleQueue()
_ready = threading.Event()


def _answerer() -> Callable[[Sequence[Any]], list[bytes]]:
    """What the thread does with a merged batch of `instances` lists: canned bytes, or the model's answers."""
    path = os.environ.get("BENCH_HANDOFF_MODEL")
    if not path:
        return lambda batch: [canned("PREDICT")] * len(batch)
    import keras
    import numpy as np
    import tensorflow as tf

    model = keras.saving.load_model(path)
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def answer(batch: Sequence[Any]) -> list[bytes]:
        arrays = [np.asarray(instances, dtype=np.float32) for instances in batch]
        outputs = call(tf.constant(np.concatenate(arrays))).numpy()
        answers, start = [], 0
        for array in arrays:
            rows = outputs[start : start + len(array)]
            answers.append(orjson.dumps({"predictions": rows}, option=orjson.OPT_SERIALIZE_NUMPY))
            start += len(array)
        return answers

    return answer


def _resolve(futures: list[asyncio.Future[bytes]], answers: list[bytes]) -> None:
    for future, answer in zip(futures, answers, strict=True):
        if not future.done():
            future.set_result(answer)


def _thread() -> None:
    answer = _answerer()
    _ready.set()
    while True:
        batch = [_jobs.get()]
        while True:
            try:
                batch.append(_jobs.get_nowait())
            except queue.Empty:
                break
        answers = answer([instances for _, _, instances in batch])
        batch[0][0].call_soon_threadsafe(_resolve, [future for _, future, _ in batch], answers)


INLINE = os.environ.get("BENCH_HANDOFF_INLINE") == "1"
"""No thread at all: the route calls the model on the event loop, one request a call (no merging)."""
if INLINE:
    _inline = _answerer()
    _ready.set()
else:
    threading.Thread(target=_thread, name="handoff", daemon=True).start()


@app.post("/v1/models/diabetes:predict")
async def predict(body: PredictRequest) -> Response:
    if INLINE:
        return Response(_inline([body.instances])[0], media_type="application/json")
    loop = asyncio.get_running_loop()
    future: asyncio.Future[bytes] = loop.create_future()
    _jobs.put((loop, future, body.instances))
    return Response(await future, media_type="application/json")


@app.get("/readyz")
async def readyz() -> Response:
    return Response(status_code=200 if _ready.is_set() else 503)
