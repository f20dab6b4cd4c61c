"""Loading one model version defensively: Keras v3 files with `safe_mode=True`, SavedModels scanned for ops that
reach outside the computation before TensorFlow loads them, numeric signatures only.

Runs in the repository's loader thread (TensorFlow is imported here, never on the event loop).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from service.compute.models.compiled import FunctionCache, Graph, run_graph
from service.compute.models.spec import (
    DEFAULT_SIGNATURE,
    FLOAT_DTYPES,
    SERVED_DTYPES,
    UNSAFE_OPS,
    LoadRefused,
    SignatureInfo,
    TensorInfo,
)

KERAS_FILE = "model.keras"
SAVED_MODEL_FILE = "saved_model.pb"
SignatureCall = Callable[[dict[str, Any]], dict[str, Any]]
"""A signature as a function: input name -> tensor in, output name -> tensor out (inference mode)."""

_CANONICAL_CODES = {
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


@dataclass(eq=False)
class ServedModel:
    """One loaded version: its signatures, their functions and the trainable variables they read."""

    kind: str
    """`keras` or `saved_model`."""
    signatures: dict[str, SignatureInfo]
    calls: dict[str, SignatureCall]
    variables: dict[str, list[tf.Variable]]
    variable_names: dict[str, list[str]]
    handle: Any
    """The Keras model or the loaded SavedModel object, kept alive with the version."""
    functions: FunctionCache = field(default_factory=FunctionCache)
    """Compiled functions of this version (dropped with it)."""

    def rows(self, signature: str, inputs: dict[str, np.ndarray]) -> int | None:
        """The batch size of `inputs` when its instances are independent (bucketed and merged), else None."""
        from service.compute.models.engine import mergeable  # noqa: PLC0415  (the engine imports this module)

        return mergeable(self, self.signatures[signature], inputs)

    def xla(self, signature: str) -> bool:
        """Whether the signature's bucketed functions may be XLA-compiled: float inputs only (an integer input
        indexes, and XLA clamps an index out of range where TensorFlow's kernels refuse it)."""
        return all(info.dtype in FLOAT_DTYPES for info in self.signatures[signature].inputs.values())

    def predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The signature's outputs on a batch, through the version's compiled functions."""
        call = self.calls[signature]

        def build(padded: bool) -> Graph:
            def graph(values: dict[str, Any], extras: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
                return call(values), {}

            return graph

        rows = self.rows(signature, inputs)
        outputs, _ = run_graph(
            self.functions, ("predict", signature), build, inputs=inputs, extras={}, rows=rows, xla=self.xla(signature)
        )
        return outputs


def warm_up(served: ServedModel, max_elements: int) -> None:
    """Run every verb's common form on zeros of each signature's input shapes (unknown dimensions 1), so the
    version's first request is as fast as its tenth: predict, the gradients of the only (or first) float
    output w.r.t. every float input (the function every target but a loss uses), its Jacobian w.r.t. the
    only input, and every explanation method with its defaults (`max_elements` is TAPESERVE_MAX_ELEMENTS,
    part of an explainer's key). A bucketed signature warms its smallest bucket (which every small request
    and merged burst of them runs as), an exact one two batch sizes (so its function takes any). A signature
    that fails to predict on zeros of its own shapes is a load error; the derivatives and explanations are
    warmed where they apply."""
    from service.compute.models.explained import warm_explanations  # noqa: PLC0415  (it imports this module)
    from service.compute.models.verbs import warm_derivatives  # noqa: PLC0415  (it imports this module)

    for name, signature in served.signatures.items():
        if any(info.shape is None for info in signature.inputs.values()):
            continue  # an unknown rank: no shape to warm up with
        for batch in WARM_UP_BATCHES if signature.batched else (1,):
            zeros = {
                key: np.zeros(
                    [
                        batch if index == 0 and signature.batched else (1 if size is None else size)
                        for index, size in enumerate(info.shape or ())
                    ],
                    dtype=info.dtype,
                )
                for key, info in signature.inputs.items()
            }
            try:
                served.predict(name, zeros)
            except Exception as error:
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                raise LoadRefused(
                    canonical_code(error), f"signature {name!r} fails on zeros of its input shapes: {first_line}"
                ) from error
            warm_derivatives(served, name, zeros)
            warm_explanations(served, name, zeros, max_elements)
            if served.rows(name, zeros) is not None:
                break  # one bucket holds both sizes


WARM_UP_BATCHES = (1, 2)
"""Batch sizes an exact batched signature runs once before its version serves: the second size makes the
compiled function take any batch size, so no request traces."""


def canonical_code(error: BaseException) -> str:
    """TensorFlow's canonical error code for a load failure (INVALID_ARGUMENT for anything not TensorFlow's)."""
    if isinstance(error, tf.errors.OpError):
        return _CANONICAL_CODES.get(error.error_code, "UNKNOWN")
    return "INVALID_ARGUMENT"


def load_version(
    folder: pathlib.Path, *, allow_unsafe_ops: bool = False, cache_size: int = 128, xla: bool = True
) -> ServedModel:
    """The model in a version folder; `LoadRefused` says why it cannot be served. Its compiled functions are
    kept in a cache of `cache_size`, bucketed ones XLA-compiled if `xla`."""
    try:
        if (folder / KERAS_FILE).is_file():
            served = _load_keras(folder / KERAS_FILE)
        elif (folder / SAVED_MODEL_FILE).is_file():
            served = _load_saved_model(folder, allow_unsafe_ops)
        else:
            served = None
    except LoadRefused:
        raise
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise LoadRefused(canonical_code(error), f"cannot load {folder.name}: {first_line}") from error
    if served is not None:
        served.functions = FunctionCache(cache_size, xla)
        return served
    raise LoadRefused("NOT_FOUND", f"{folder.name} holds neither {SAVED_MODEL_FILE} nor {KERAS_FILE}")


# ---------------------------------------------------------------------------------------------- Keras


def _load_keras(path: pathlib.Path) -> ServedModel:
    # safe_mode refuses Lambda layers and any other deserialised Python code
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    if not isinstance(model, keras.Model) or not model.inputs:
        raise LoadRefused("INVALID_ARGUMENT", f"{path.name} holds no built Keras model with inputs")
    input_names = [tensor.name for tensor in model.inputs]
    output_names = list(getattr(model, "output_names", None) or [model.layers[-1].name])
    inputs = {
        name: _info(name, str(tensor.dtype), tensor.shape, f"serving_default_{name}:0")
        for name, tensor in zip(input_names, model.inputs, strict=True)
    }
    outputs = {
        name: _info(name, str(tensor.dtype), tensor.shape, f"StatefulPartitionedCall:{index}")
        for index, (name, tensor) in enumerate(zip(output_names, model.outputs, strict=True))
    }
    signature = SignatureInfo(DEFAULT_SIGNATURE, inputs, outputs)
    _check_numeric(signature)

    def call(values: dict[str, Any]) -> dict[str, Any]:
        argument = values[input_names[0]] if len(input_names) == 1 else {name: values[name] for name in input_names}
        result = model(argument, training=False)
        if isinstance(result, dict):
            return {name: result[name] for name in output_names}
        if isinstance(result, list | tuple):
            return dict(zip(output_names, result, strict=True))
        return {output_names[0]: result}

    keras_variables = list(model.trainable_variables)
    return ServedModel(
        kind="keras",
        signatures={DEFAULT_SIGNATURE: signature},
        calls={DEFAULT_SIGNATURE: call},
        # the tf.Variable behind each Keras variable: what a tape watches
        variables={DEFAULT_SIGNATURE: [variable.value for variable in keras_variables]},
        variable_names={DEFAULT_SIGNATURE: [variable.path for variable in keras_variables]},
        handle=model,
    )


# ---------------------------------------------------------------------------------------------- SavedModel


def unsafe_ops(saved_model: saved_model_pb2.SavedModel) -> list[str]:
    """Ops of `UNSAFE_OPS` the serving signatures can run: the graph nodes their outputs depend on, and every
    node of every function those nodes call, nested calls (branches, loop bodies, partitioned calls) included."""
    found: set[str] = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        library = {function.signature.name: function for function in graph.library.function}
        nodes = {node.name: node for node in graph.node}
        pending = [
            tensor.name.split(":")[0].lstrip("^")
            for signature in meta_graph.signature_def.values()
            for tensor in signature.outputs.values()
        ]
        seen_nodes: set[str] = set()
        called: list[str] = []
        while pending:
            name = pending.pop()
            if name in seen_nodes or name not in nodes:
                continue
            seen_nodes.add(name)
            node = nodes[name]
            if node.op in UNSAFE_OPS:
                found.add(node.op)
            called.extend(_called_functions(node))
            pending.extend(source.split(":")[0].lstrip("^") for source in node.input)
        seen_functions: set[str] = set()
        while called:
            function_name = called.pop()
            if function_name in seen_functions or function_name not in library:
                continue
            seen_functions.add(function_name)
            for node in library[function_name].node_def:
                if node.op in UNSAFE_OPS:
                    found.add(node.op)
                called.extend(_called_functions(node))
                if node.op in library:  # a function called directly as an op
                    called.append(node.op)
    return sorted(found)


def _called_functions(node: Any) -> Iterator[str]:
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        yield from (function.name for function in value.list.func)


def _load_saved_model(folder: pathlib.Path, allow_unsafe_ops: bool) -> ServedModel:
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((folder / SAVED_MODEL_FILE).read_bytes())
    refused = unsafe_ops(proto)
    if refused and not allow_unsafe_ops:
        reaches = ", ".join(f"{op} ({UNSAFE_OPS[op]})" for op in refused)
        raise LoadRefused(
            "FAILED_PRECONDITION",
            f"the serving functions use ops that reach outside the computation: {reaches}; "
            "set TAPESERVE_ALLOW_UNSAFE_OPS=true to serve it anyway",
        )
    loaded = tf.saved_model.load(str(folder))
    if not loaded.signatures:
        raise LoadRefused("FAILED_PRECONDITION", "the SavedModel has no signatures to serve")
    signatures: dict[str, SignatureInfo] = {}
    calls: dict[str, SignatureCall] = {}
    variables: dict[str, list[tf.Variable]] = {}
    for name, function in loaded.signatures.items():
        signatures[name] = _saved_signature(name, function)
        calls[name] = _saved_call(function)
        variables[name] = list(function.trainable_variables)
    return ServedModel(
        kind="saved_model",
        signatures=signatures,
        calls=calls,
        variables=variables,
        variable_names={name: [variable.name for variable in found] for name, found in variables.items()},
        handle=loaded,
    )


def _saved_signature(name: str, function: Any) -> SignatureInfo:
    specs = function.structured_input_signature[1]
    inputs = {key: _info(key, spec.dtype.name, spec.shape, f"{name}_{key}:0") for key, spec in sorted(specs.items())}
    outputs = {
        key: _info(key, spec.dtype.name, spec.shape, f"StatefulPartitionedCall:{index}")
        for index, (key, spec) in enumerate(sorted(function.structured_outputs.items()))
    }
    signature = SignatureInfo(name, inputs, outputs)
    _check_numeric(signature)
    return signature


def _saved_call(function: Any) -> SignatureCall:
    def call(values: dict[str, Any]) -> dict[str, Any]:
        return dict(function(**values))

    return call


# ---------------------------------------------------------------------------------------------- shared


def _info(name: str, dtype: str, shape: Any, tensor_name: str) -> TensorInfo:
    dims = tf.TensorShape(shape)
    described = None if dims.rank is None else tuple(dims.as_list())
    return TensorInfo(name=name, dtype=tf.as_dtype(dtype).name, shape=described, tensor_name=tensor_name)


def _check_numeric(signature: SignatureInfo) -> None:
    """Only numeric signatures are served: the JSON tensors of the API have no strings."""
    for info in signature.inputs.values():
        if info.dtype == "string":
            raise LoadRefused(
                "FAILED_PRECONDITION",
                f"signature {signature.name!r}: input {info.name!r} is a string tensor; only numeric "
                f"signatures ({', '.join(SERVED_DTYPES)}) are served",
            )
        if info.dtype not in SERVED_DTYPES:
            raise LoadRefused(
                "FAILED_PRECONDITION",
                f"signature {signature.name!r}: input {info.name!r} has dtype {info.dtype}; "
                f"served inputs are {', '.join(SERVED_DTYPES)}",
            )
    for info in signature.outputs.values():
        if info.dtype == "string":
            raise LoadRefused(
                "FAILED_PRECONDITION", f"signature {signature.name!r}: output {info.name!r} is a string tensor"
            )
