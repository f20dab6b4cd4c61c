"""The network engine: compiled functions by `NetworkSpec` in a bounded LRU cache; any number of problems of one
spec merged into one call with a leading request axis R, and the answer split back per request."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from service.compute.buckets import next_power_of_two
from service.compute.fastpath import fastest_call
from service.compute.lru import LruCache
from service.compute.networks.graph import trace
from service.compute.networks.packing import Layout
from service.compute.networks.prepare import seed_problem
from service.compute.networks.problem import INCLUDES, Array, NetworkProblem, NetworkResult, NetworkSpec


class _CompiledNetwork:
    """The concrete function of one spec, called on packed rows."""

    def __init__(self, spec: NetworkSpec, on_trace: Callable[[], None], jit_compile: bool) -> None:
        self.spec = spec
        self.jit_compile = jit_compile
        self.compiled_rows: set[int] = set()
        """Request counts XLA has compiled this function for."""
        self.layout = Layout(spec)
        self.concrete = trace(self.layout, on_trace, jit_compile)
        self._call = fastest_call(self.concrete, spec.dtype)

    def _rows(self, requests: int) -> int:
        """How many request rows to run: XLA compiles once per shape, so pad R (zero rows, answers dropped)
        to the smallest size already compiled, else to the next power of two."""
        if not self.jit_compile:
            return requests
        compiled = [rows for rows in self.compiled_rows if rows >= requests]
        rows = min(compiled) if compiled else next_power_of_two(requests)
        self.compiled_rows.add(rows)
        return rows

    def __call__(self, problems: Sequence[NetworkProblem]) -> tuple[dict[str, Array], bool]:
        """Every output by name, with the request axis first; and whether all of them are finite."""
        result = self._call(self.layout.pack(problems, self._rows(len(problems))))
        # one check for the whole batch (padding rows included: they repeat real rows or are zero rows)
        return self.layout.unpack(result), bool(np.isfinite(result).all())


def _split(spec: NetworkSpec, out: dict[str, Array], r: int, samples: int, finite: bool) -> NetworkResult:
    """Request r's answer from the merged outputs: padded samples cut off, the batch axis dropped for one sample."""

    def sample(name: str) -> Array:
        values: Array = out[name][r, 0] if spec.single else out[name][r, :samples]
        return values

    layers = range(1, len(spec.layer_shapes) + 1)
    result = NetworkResult(
        loss=sample("loss") if spec.reduction == "none" else out["loss"][r, ...],
        predictions=sample("predictions"),
        weight_gradients=[out[f"dL/dW{i}"][r] for i in layers],
        finite=finite,
    )
    if "input_gradients" in spec.includes:
        result.input_gradients = sample("dL/dfeatures")
    if "intermediates" in spec.includes:
        result.intermediates = [
            {"inputs": sample(f"x_B{i}"), "z": sample(f"z{i}"), "a": sample(f"a{i}")} for i in layers
        ]
    if "local_gradients" in spec.includes:
        local = [("loss", "predictions", sample("grad loss/predictions"))]
        for i in layers:
            local.append((f"a{i}", f"z{i}", sample(f"grad a{i}/z{i}")))
            local.append((f"z{i}", f"W{i}", out[f"grad z{i}/W{i}"][r]))
        result.local_gradients = local
    if "jacobians" in spec.includes:
        jacobians = []
        for i in layers:
            jacobians.append((f"a{i}", f"z{i}", sample(f"jacobian a{i}/z{i}")))
            jacobians.append((f"z{i}", f"W{i}", sample(f"jacobian z{i}/W{i}")))
        result.jacobians = jacobians
    return result


class NetworkEngine:
    """Compiled network functions, one per `NetworkSpec`, in a bounded LRU cache.

    Runs in the caller's thread and device context (`with tf.device(...)` around `run`); it picks no
    device itself.
    """

    def __init__(self, cache_size: int = 128, jit_compile: bool = False) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._jit_compile = jit_compile
        self._functions: LruCache[NetworkSpec, _CompiledNetwork] = LruCache(cache_size)
        self._traces = 0

    def _count_trace(self) -> None:
        self._traces += 1

    def _compiled(self, spec: NetworkSpec) -> _CompiledNetwork:
        # traced under the cache's lock: concurrent first requests of one spec trace once
        return self._functions.get(spec, lambda: _CompiledNetwork(spec, self._count_trace, self._jit_compile))

    def run(self, problems: Sequence[NetworkProblem]) -> list[NetworkResult]:
        """Compute every problem (all of one spec) in one compiled call; results in the order given."""
        if not problems:
            raise ValueError("run needs at least one problem")
        spec = problems[0].spec
        if any(problem.spec != spec for problem in problems[1:]):
            raise ValueError("problems merged into one run must share one NetworkSpec")
        outputs, finite = self._compiled(spec)(problems)
        return [_split(spec, outputs, r, problem.samples, finite) for r, problem in enumerate(problems)]

    def stats(self) -> dict[str, int]:
        """Cache hits and misses, functions traced, and functions held."""
        functions = self._functions
        return {"hits": functions.hits, "misses": functions.misses, "traces": self._traces, "size": len(functions)}

    def warmup(self, merged_sizes: Sequence[int] = ()) -> None:
        """Trace and run the seed's case, with every include and with none, so first requests are fast;
        with XLA, also compile the seed without includes for each merged request count in `merged_sizes`."""
        self.run([seed_problem(includes=INCLUDES)])
        self.run([seed_problem(includes=())])
        if self._jit_compile:
            for size in merged_sizes:
                self.run([seed_problem(includes=()) for _ in range(size)])
