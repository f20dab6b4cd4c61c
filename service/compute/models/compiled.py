"""Compiled functions of one served version: one per verb, signature, options and bucketed batch size, in a
bounded least-recently-used cache that goes with the version.

A verb's graph is `build(padded)`: a function of (inputs, extras) -> (rows, whole), where `inputs` are the
signature's inputs and `extras` the verb's own tensors, both with one row per instance, `rows` the outputs with
one row per instance and `whole` the others. Two ways to run it:

* bucketed (`rows` given): for a version whose instances are independent (see `engine.mergeable`), every array
  is padded to a power-of-two number of rows, at least `floor_rows`, and the graph is traced once per bucket
  with static shapes (large buckets XLA-compiled, see XLA_ELEMENTS), so batches of 5-8 or 33-64 rows share
  one function and no request traces for a batch size its bucket has seen. Inputs are padded with copies of their
  last row (finite where the real rows are), extras with zeros, so a verb weighs padded rows out by its extras;
  `rows` outputs are cut back to the real rows.
* exact (`rows` None): the arrays as they are, through one `tf.function(reduce_retracing=True)` that takes any
  batch size after its second shape (a SavedModel's function may reduce across its batch: no padding).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from service.compute.buckets import next_power_of_two, power_of_two_at_most
from service.compute.fastpath import structured_call
from service.compute.lru import LruCache

Arrays = dict[str, np.ndarray]
Graph = Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]
Build = Callable[[bool], Graph]
Key = tuple[Hashable, ...]
"""`build(padded)` -> the verb's graph; `padded` says whether extras weigh padded rows out."""

PAD_ELEMENTS = 1024
"""Input elements a bucket may hold at least: small requests of a small model pad up to this (one function
for every merged burst of them), large instances do not pad beyond their next power of two."""
MAX_FLOOR_ROWS = 64
"""The smallest bucket holds at most this many rows (the worker merges at most 64 requests by default)."""
XLA_ELEMENTS = 1 << 16
"""Buckets of at least this many input elements are XLA-compiled (where the cache allows it): there XLA's fused
kernels are several times faster than TensorFlow's (a 65,536-instance gradient of the example model ~10x) and
its compile time (about a second) pays off. Smaller buckets run TensorFlow's own kernels, which also keeps
their answers those of the model called in process (XLA's transcendental functions round differently, by a
few units in the last place)."""


def floor_rows(row_elements: int) -> int:
    """The smallest bucket for instances of `row_elements` input elements: a power of two."""
    most = max(1, min(MAX_FLOOR_ROWS, PAD_ELEMENTS // max(row_elements, 1)))
    return power_of_two_at_most(most)


def bucket_rows(rows: int, row_elements: int) -> int:
    """Rows to run `rows` instances as: the next power of two, at least `floor_rows(row_elements)`."""
    return max(floor_rows(row_elements), next_power_of_two(rows))


def _padded(array: np.ndarray, rows: int, repeat: bool) -> np.ndarray:
    if array.shape[0] == rows:
        return array
    padded = np.empty((rows, *array.shape[1:]), dtype=array.dtype)
    real = array.shape[0]
    padded[:real] = array
    padded[real:] = array[-1] if repeat and real else 0
    return padded


class _Bucketed:
    """One graph traced for one bucket's static shapes; XLA-compiled if allowed, and traced again without XLA
    when XLA cannot compile it (its first call fails under XLA and succeeds without)."""

    def __init__(self, graph: Graph, specs: tuple[dict[str, Any], dict[str, Any]], jit: bool) -> None:
        self.graph, self.specs, self.jit = graph, specs, jit
        self.verified = False
        self.concrete = tf.function(graph, jit_compile=jit).get_concrete_function(*specs)
        self.call: Callable[..., Any] = self.concrete
        """How calls after the first run: the function's op itself where `fastpath` applies."""

    def __call__(self, inputs: dict[str, Any], extras: dict[str, Any]) -> Any:
        if self.verified:
            return self.call(inputs, extras)
        try:
            result = self.concrete(inputs, extras)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError):
            if not self.jit:
                raise
            self.jit = False
            self.concrete = tf.function(self.graph).get_concrete_function(*self.specs)
            result = self.concrete(inputs, extras)
        self.verified = True
        self.call = structured_call(self.concrete) or self.concrete
        return result


class FunctionCache(LruCache[Key, Any]):
    """Compiled functions of one version by key, the least recently used dropped beyond `size`; `xla` says
    whether bucketed functions are XLA-compiled. Safe to use from the loader and the worker threads."""

    def __init__(self, size: int = 128, xla: bool = False) -> None:
        super().__init__(size)
        self.xla = xla

    def compiled(self) -> list[Key]:
        """The keys held, least recently used first."""
        return self.keys()


def _numpy(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: None if value is None else np.asarray(value) for name, value in values.items()}


def run_graph(
    cache: FunctionCache,
    key: Key,
    build: Build,
    *,
    inputs: Arrays,
    extras: Arrays,
    rows: int | None,
    xla: bool = True,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(rows, whole) of the verb's graph as numpy, bucketed when `rows` (the real instances) is given, exact
    otherwise (see the module docstring); `xla` False keeps this graph off XLA whatever the cache allows."""
    if rows is None:
        function = cache.get((*key, None), lambda: tf.function(build(False), reduce_retracing=True))
        per_row, whole = function(_tensors(inputs), _tensors(extras))
        return _numpy(per_row), _numpy(whole)
    row_elements = sum(math.prod(value.shape[1:]) for value in inputs.values())
    size = bucket_rows(rows, row_elements)
    padded_inputs = {name: _padded(value, size, repeat=True) for name, value in inputs.items()}
    padded_extras = {name: _padded(value, size, repeat=False) for name, value in extras.items()}

    def make() -> _Bucketed:
        specs = tuple(
            {name: tf.TensorSpec(value.shape, tf.as_dtype(value.dtype)) for name, value in arrays.items()}
            for arrays in (padded_inputs, padded_extras)
        )
        return _Bucketed(build(True), (specs[0], specs[1]), cache.xla and xla and size * row_elements >= XLA_ELEMENTS)

    shapes = tuple(
        (name, value.dtype.str, value.shape[1:]) for arrays in (inputs, extras) for name, value in arrays.items()
    )
    function = cache.get((*key, shapes, size), make)
    per_row, whole = function(_tensors(padded_inputs), _tensors(padded_extras))
    return {name: None if value is None else np.asarray(value)[:rows] for name, value in per_row.items()}, _numpy(whole)


def _tensors(arrays: Arrays) -> dict[str, Any]:
    return {name: tf.constant(value) for name, value in arrays.items()}
