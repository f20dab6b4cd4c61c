"""The packed rows a compiled network function takes and gives: every array of one request flattened into one
row (R, P) in, every output into one row (R, Q) out. numpy only.

One input and one output tensor keep the per-call Python overhead of conversion and argument binding far
below that of one tensor per array.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.compute.networks.problem import Array, NetworkProblem, NetworkSpec

Entries = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class Slot:
    """One array's place in a packed row: one request's values, flattened, in the row's `columns`."""

    name: str
    shape: tuple[int, ...]
    columns: slice

    @property
    def size(self) -> int:
        return int(self.columns.stop - self.columns.start)

    @property
    def offset(self) -> int:
        return int(self.columns.start)


def _slots(entries: Entries) -> tuple[tuple[Slot, ...], int]:
    slots: list[Slot] = []
    offset = 0
    for name, shape in entries:
        size = math.prod(shape)
        slots.append(Slot(name, shape, slice(offset, offset + size)))
        offset += size
    return tuple(slots), offset


def input_entries(spec: NetworkSpec) -> Entries:
    """Name and per-request shape of every input, in the order they are packed."""
    return [
        ("features", (spec.batch, spec.inputs)),
        ("targets", (spec.batch, spec.layer_shapes[-1][0])),
        *((f"W{i + 1}", shape) for i, shape in enumerate(spec.layer_shapes)),
        ("alphas", (len(spec.layer_shapes),)),
        ("mask", (spec.batch,)),
    ]


def _layer_entries(spec: NetworkSpec, layer: int, units: int, columns: int) -> Entries:
    batch = spec.batch
    entries: Entries = []
    if "intermediates" in spec.includes:
        entries += [(f"x_B{layer}", (batch, columns)), (f"z{layer}", (batch, units)), (f"a{layer}", (batch, units))]
    if "local_gradients" in spec.includes:
        if layer == 1:
            entries.append(("grad loss/predictions", (batch, spec.layer_shapes[-1][0])))
        entries += [(f"grad a{layer}/z{layer}", (batch, units)), (f"grad z{layer}/W{layer}", (units, columns))]
    if "jacobians" in spec.includes:
        entries += [
            (f"jacobian a{layer}/z{layer}", (batch, units, units)),
            (f"jacobian z{layer}/W{layer}", (batch, units, units, columns)),
        ]
    return entries


def output_entries(spec: NetworkSpec) -> Entries:
    """Name and per-request shape of every output, in the order they are packed."""
    batch = spec.batch
    entries: Entries = [
        ("loss", (batch,) if spec.reduction == "none" else ()),
        ("predictions", (batch, spec.layer_shapes[-1][0])),
        *((f"dL/dW{i + 1}", shape) for i, shape in enumerate(spec.layer_shapes)),
    ]
    if "input_gradients" in spec.includes:
        entries.append(("dL/dfeatures", (batch, spec.inputs)))
    for i, (units, columns) in enumerate(spec.layer_shapes):
        entries += _layer_entries(spec, i + 1, units, columns)
    return entries


class Layout:
    """Where each array of a spec sits in the packed input and output rows."""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec
        self.inputs, self.input_size = _slots(input_entries(spec))
        self.outputs, self.output_size = _slots(output_entries(spec))

    def pack(self, problems: Sequence[NetworkProblem], rows: int) -> Array:
        """(rows, P): one row per problem, then zero rows up to `rows`."""
        packed = np.empty((rows, self.input_size), dtype=self.spec.dtype)
        requests = len(problems)
        packed[requests:] = 0
        if all(problem.samples == self.spec.batch for problem in problems):
            self._pack_whole(packed[:requests], problems)
        else:
            for r, problem in enumerate(problems):
                self._pack_padded(packed[r], problem)
        return packed

    def _pack_whole(self, head: Array, problems: Sequence[NetworkProblem]) -> None:
        """No padding (one sample, or a full power-of-two batch: the common case): one stacking copy per slot
        for all requests instead of ten small copies per request."""
        features, targets, *weights, alphas, mask = self.inputs
        requests = len(problems)
        for slot, arrays in (
            (features, [problem.features for problem in problems]),
            (targets, [problem.targets for problem in problems]),
            *((slot, [problem.weights[i] for problem in problems]) for i, slot in enumerate(weights)),
            (alphas, [problem.alphas for problem in problems]),
        ):
            head[:, slot.columns] = np.asarray(arrays).reshape(requests, slot.size)
        head[:, mask.columns] = 1

    def _pack_padded(self, row: Array, problem: NetworkProblem) -> None:
        """One request's row; padded samples repeat its last real one (finite wherever the real ones are)
        and are masked out."""
        features, targets, *weights, alphas, mask = self.inputs
        batch, samples = self.spec.batch, problem.samples
        padded_features = row[features.columns].reshape(batch, -1)
        padded_features[:samples] = problem.features
        padded_features[samples:] = problem.features[-1]
        padded_targets = row[targets.columns].reshape(batch, -1)
        padded_targets[:samples] = problem.targets
        padded_targets[samples:] = problem.targets[-1]
        row[mask.offset : mask.offset + samples] = 1
        row[mask.offset + samples : mask.offset + batch] = 0
        for slot, w in zip(weights, problem.weights, strict=True):
            row[slot.columns] = w.reshape(-1)
        row[alphas.columns] = problem.alphas

    def unpack(self, result: Array) -> dict[str, Array]:
        """Every output by name from the packed (R, Q) rows, with the request axis first."""
        return {slot.name: result[:, slot.columns].reshape(-1, *slot.shape) for slot in self.outputs}
