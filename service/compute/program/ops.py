"""The whole op table and its lookups: by plain name, by TensorFlow name, and the dtypes a program may name.

Only functions listed here are ever called; every one is pure tensor maths (no files, network,
Python callbacks, sessions, randomness or state). Add a function to `ops_maths`, `ops_tensors` or `ops_nn`.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from service.compute.program.ops_maths import MATHS
from service.compute.program.ops_nn import NN
from service.compute.program.ops_tensors import TENSORS
from service.compute.program.opspec import OpSpec

OPS: tuple[OpSpec, ...] = (*MATHS, *TENSORS, *NN)

OPS_BY_NAME: dict[str, OpSpec] = {alias: op for op in OPS for alias in (op.name, *op.aliases)}
OPS_BY_TF_NAME: dict[str, OpSpec] = {tf_name: op for op in OPS for tf_name in op.tf_names}

DTYPE_NAMES: dict[str, tf.DType] = {
    "float32": tf.float32,
    "float64": tf.float64,
    "int32": tf.int32,
    "int64": tf.int64,
    "bool": tf.bool,
}

DTYPES: dict[str, tf.DType] = {
    f"{prefix}.{name}": dtype for prefix in ("tf", "tf.dtypes") for name, dtype in DTYPE_NAMES.items()
}
"""The dtype constants a program may name."""


@dataclass(frozen=True, kw_only=True)
class OpInfo:
    """One function as GET /v1/ops lists it."""

    name: str
    tf_names: tuple[str, ...]
    signature: str
    summary: str


def list_ops() -> list[OpInfo]:
    """The program language's functions, in table order, for GET /v1/ops."""
    return [
        OpInfo(
            name=op.name,
            tf_names=op.tf_names,
            signature=op.signature,
            summary=op.summary + (f" Also callable as {', '.join(op.aliases)}." if op.aliases else ""),
        )
        for op in OPS
    ]
