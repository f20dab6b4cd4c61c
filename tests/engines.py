"""Engines the tests register with a worker: plain Python callables, so a test can hold a lane busy, fail
on purpose or watch merging; and a small TensorFlow engine that merges."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from service.worker import Engine, EngineContext, Worker

CALLS = "tests.engines:calls"
MERGING = "tests.engines:merging"


class Calls:
    """The job is a callable; its result is what the call returns. Never merged."""

    def merge_key(self, job: Callable[[], Any]) -> None:
        return None

    def run(self, jobs: Sequence[Callable[[], Any]]) -> list[Any]:
        return [job() for job in jobs]


def calls(context: EngineContext) -> Engine:
    return Calls()


@dataclass(frozen=True)
class Merged:
    """A job of the merging engine: `function([item, ...])` over the items of one key waiting together."""

    key: Hashable
    item: Any
    function: Callable[[Sequence[Any]], Sequence[Any]]


class Merging:
    def merge_key(self, job: Merged) -> Hashable:
        return job.key

    def run(self, jobs: Sequence[Merged]) -> Sequence[Any]:
        return jobs[0].function([job.item for job in jobs])


def merging(context: EngineContext) -> Engine:
    return Merging()


def with_calls(worker: Worker) -> Worker:
    """`worker`, with the calls engine registered in its main lane (as "calls")."""
    worker.register("calls", CALLS)
    return worker


SQUARES = "tests.engines:squares"


class Squares:
    """A small real engine: the tape's gradient of Σx² (that is, 2x) for float64 arrays, jobs of one shape
    stacked into one TensorFlow call and split back. Counts its calls and the threads they ran in."""

    def __init__(self) -> None:
        self.call_sizes: list[int] = []
        self.threads: set[str] = set()

    def merge_key(self, job: np.ndarray) -> Hashable:
        return job.shape

    def run(self, jobs: Sequence[np.ndarray]) -> list[np.ndarray]:
        self.call_sizes.append(len(jobs))
        self.threads.add(threading.current_thread().name)
        x = tf.constant(np.stack(jobs))
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(x * x)
        return list(tape.gradient(total, x).numpy())

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.call_sizes), "jobs": sum(self.call_sizes)}


def squares(context: EngineContext) -> Engine:
    return Squares()
