"""Served models: TF Serving's request bodies -> engine jobs (checked against the signature), results and
repository states -> TF Serving's answers (API.md §9)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

from schemas.models import MAX_INSTANCES, ExplainRequest, GradientsRequest, JacobianRequest, PredictRequest
from service import codec
from service.adapters.errors import located
from service.adapters.explain import encode_attributions, explain_options
from service.compute.explain.prepare import attribution_inputs, evaluation
from service.compute.models.engine import ExplainJob, GradientsJob, JacobianJob, Outputs, PredictJob, mergeable
from service.compute.models.spec import FLOAT_DTYPES, GradientRequest, SignatureInfo, TargetKind, TensorInfo
from service.errors import Loc, ModelNotFound, ValidationFailed, format_loc
from service.models import Lease, ModelRepository, VersionStatus

VERSION_LOC = ("path", "version")
_TENSOR_KEYS = frozenset({"shape", "data", "dtype", "b64"})
_TF_DTYPES = {
    "float16": "DT_HALF",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "bfloat16": "DT_BFLOAT16",
    "complex64": "DT_COMPLEX64",
    "complex128": "DT_COMPLEX128",
}
ARRAYS: Mapping[str, codec.ArrayField] = {
    "instances": codec.ArrayField("if", tensor=False, max_rows=MAX_INSTANCES),
    "inputs": codec.ArrayField("if"),
}
"""The fields of a large model body read straight into numpy (see `codec.parse`): row-format instances that
are the values of a single input, and the columnar value of a single input, sent as nested arrays."""
Decoded = Mapping[str, np.ndarray]
"""The `ARRAYS` fields the parser read straight into numpy, by name (their place in the body holds a stand-in)."""
NOTHING_DECODED: Decoded = MappingProxyType({})


def parse_version(raw: str) -> int:
    """A version from the path: a positive integer (422 naming the path parameter otherwise; 404 for 0)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise ValidationFailed.at(VERSION_LOC, f"a version is a positive integer, got {raw[:40]!r}")
    number = int(raw)
    if number == 0:
        raise ModelNotFound("Versions are positive integers: there is no version 0.")
    return number


# ---------------------------------------------------------------------------------------------- answers


def model_list(repository: ModelRepository) -> dict[str, Any]:
    return {
        "models": [
            {"name": name, "versions": [str(number) for number in versions], "ready": bool(versions)}
            for name, versions in repository.listing()
        ]
    }


def model_status(versions: list[VersionStatus]) -> dict[str, Any]:
    return {
        "model_version_status": [
            {
                "version": str(found.version),
                "state": found.state,
                "status": {"error_code": found.error_code, "error_message": found.error_message},
            }
            for found in versions
        ]
    }


def tf_dtype(dtype: str) -> str:
    """TensorFlow's DataType enum name of a numpy dtype name (float32 -> DT_FLOAT, int64 -> DT_INT64)."""
    return _TF_DTYPES.get(dtype, "DT_" + dtype.upper())


def _tensor_info(info: TensorInfo) -> dict[str, Any]:
    dims = (
        [] if info.shape is None else [{"size": str(-1 if size is None else size), "name": ""} for size in info.shape]
    )
    return {
        "dtype": tf_dtype(info.dtype),
        "tensor_shape": {"dim": dims, "unknown_rank": info.shape is None},
        "name": info.tensor_name,
    }


def model_metadata(lease: Lease) -> dict[str, Any]:
    """TF Serving's metadata answer: every signature's inputs and outputs as its `signature_def` JSON."""
    signatures = {
        name: {
            "inputs": {key: _tensor_info(info) for key, info in signature.inputs.items()},
            "outputs": {key: _tensor_info(info) for key, info in signature.outputs.items()},
            "method_name": signature.method_name,
        }
        for name, signature in sorted(lease.signatures.items())
    }
    return {
        "model_spec": {"name": lease.name, "signature_name": "", "version": str(lease.number)},
        "metadata": {"signature_def": {"signature_def": signatures}},
    }


# ---------------------------------------------------------------------------------------------- predict


def _describe(info: TensorInfo) -> str:
    shape = "unknown rank" if info.shape is None else str([-1 if size is None else size for size in info.shape])
    return f"input {info.name!r} (shape {shape}, {info.dtype})"


def _signature(body: PredictRequest, lease: Lease) -> SignatureInfo:
    found = lease.signatures.get(body.signature_name)
    if found is None:
        known = ", ".join(sorted(lease.signatures)) or "none"
        raise ValidationFailed.at(
            ("body", "signature_name"),
            f"version {lease.number} of {lease.name!r} has no signature {body.signature_name!r} (it has: {known})",
        )
    return found


def _check_shape(info: TensorInfo, array: np.ndarray, loc: Loc, per_instance: bool) -> None:
    if info.shape is None:
        return
    expected = info.shape[1:] if per_instance else info.shape
    shape = array.shape[1:] if per_instance else array.shape
    fits = len(shape) == len(expected) and all(
        want is None or want == got for want, got in zip(expected, shape, strict=True)
    )
    if per_instance and not info.batched:
        fits = False
    if not fits:
        what = "each instance of" if per_instance else ""
        wanted = [-1 if size is None else size for size in expected]
        hint = "" if info.batched or not per_instance else " (it has no batch dimension: send it with inputs)"
        raise ValidationFailed.at(
            loc,
            f"{what + ' ' if what else ''}{_describe(info)} must have shape {wanted}{hint}; got {list(shape)}",
        )


def _decode(info: TensorInfo, value: Any, loc: Loc, max_elements: int) -> np.ndarray:
    """`value` as the input's dtype; a value that does not fit it is a 422 naming the input."""
    try:
        return codec.decode(value, loc, max_elements=max_elements, dtype=info.dtype)
    except ValidationFailed as error:
        raise _about(error, info) from None


def _about(error: ValidationFailed, info: TensorInfo) -> ValidationFailed:
    """The same error, its messages saying which input (with the signature's shape and dtype) it concerns."""
    errors = [{**item, "msg": f"{_describe(info)}: {item['msg']}"} for item in error.errors or []]
    first = errors[0] if errors else {"loc": ["body"], "msg": f"{_describe(info)}: {error.detail}"}
    return type(error)(f"{format_loc(first['loc'])}: {first['msg']}", errors=errors or None)


def _relocated(error: ValidationFailed, name: str) -> ValidationFailed:
    """An error found in the stacked values of one named input, placed in its instance object:
    ("body", "instances", i, ...) -> ("body", "instances", i, name, ...)."""
    errors = []
    for item in error.errors or []:
        loc = list(item["loc"])
        if len(loc) >= 3:
            loc = [*loc[:3], name, *loc[3:]]
        errors.append({**item, "loc": loc})
    if not errors:
        return error
    return type(error)(f"{format_loc(errors[0]['loc'])}: {errors[0]['msg']}", errors=errors)


def _rows(signature: SignatureInfo, instances: list[Any] | np.ndarray, max_elements: int) -> dict[str, np.ndarray]:
    """Row format: one value per instance (a single input), or one object of named values per instance; an
    array the parser read holds values, no objects."""
    loc: Loc = ("body", "instances")
    if not len(instances):
        raise ValidationFailed.at(loc, "instances must hold at least one instance")
    names = list(signature.inputs)
    named = [] if isinstance(instances, np.ndarray) else [isinstance(instance, dict) for instance in instances]
    if any(named) and not all(named):
        index = named.index(not named[0])
        raise ValidationFailed.at((*loc, index), "instances must all be objects of named inputs, or all values")
    if not any(named):
        if len(names) != 1:
            raise ValidationFailed.at(
                (*loc, 0), f"the signature has inputs {', '.join(map(repr, names))}: each instance names them"
            )
        info = signature.inputs[names[0]]
        array = _decode(info, instances, loc, max_elements)
        _check_shape(info, array, loc, per_instance=True)
        return {names[0]: array}
    for index, instance in enumerate(instances):
        unknown = sorted(set(instance) - set(names))
        if unknown:
            raise ValidationFailed.at((*loc, index, unknown[0]), f"the signature has no input {unknown[0]!r}")
        missing = [name for name in names if name not in instance]
        if missing:
            raise ValidationFailed.at((*loc, index, missing[0]), f"missing {_describe(signature.inputs[missing[0]])}")
    arrays = {}
    for name, info in signature.inputs.items():
        try:
            arrays[name] = _decode(info, [instance[name] for instance in instances], loc, max_elements)
        except ValidationFailed as error:
            raise _relocated(error, name) from None
        _check_shape(info, arrays[name], loc, per_instance=True)
    return arrays


def _columns(signature: SignatureInfo, inputs: Any, max_elements: int) -> dict[str, np.ndarray]:
    """Columnar format: the batched value of the only input, or an object of named batched values."""
    loc: Loc = ("body", "inputs")
    names = list(signature.inputs)
    is_tensor_object = isinstance(inputs, dict) and "shape" in inputs and set(inputs) <= _TENSOR_KEYS
    if not isinstance(inputs, dict) or (is_tensor_object and not set(inputs) & set(names)):
        if len(names) != 1:
            raise ValidationFailed.at(
                loc, f"the signature has inputs {', '.join(map(repr, names))}: inputs must be an object naming them"
            )
        inputs = {names[0]: inputs}
        value_loc: dict[str, Loc] = {names[0]: loc}
    else:
        unknown = sorted(set(inputs) - set(names))
        if unknown:
            raise ValidationFailed.at((*loc, unknown[0]), f"the signature has no input {unknown[0]!r}")
        missing = [name for name in names if name not in inputs]
        if missing:
            raise ValidationFailed.at((*loc, missing[0]), f"missing {_describe(signature.inputs[missing[0]])}")
        value_loc = {name: (*loc, name) for name in names}
    arrays = {}
    for name, info in signature.inputs.items():
        arrays[name] = _decode(info, inputs[name], value_loc[name], max_elements)
        _check_shape(info, arrays[name], value_loc[name], per_instance=False)
    return arrays


def _inputs(
    body: PredictRequest, signature: SignatureInfo, max_elements: int, decoded: Decoded
) -> tuple[dict[str, np.ndarray], Loc]:
    if body.instances is not None:
        return _rows(signature, decoded.get("instances", body.instances), max_elements), ("body", "instances")
    return _columns(signature, decoded.get("inputs", body.inputs), max_elements), ("body", "inputs")


def decode_predict(
    body: PredictRequest, lease: Lease, max_elements: int, decoded: Decoded = NOTHING_DECODED
) -> PredictJob:
    """The engine's job for a predict body, every input checked against the signature (422 naming it);
    `decoded` holds the `ARRAYS` fields the parser read straight into numpy (so do the other verbs')."""
    signature = _signature(body, lease)
    inputs, loc = _inputs(body, signature, max_elements, decoded)
    batch = mergeable(lease.served, signature, inputs)
    return PredictJob(served=lease.served, signature=signature.name, inputs=inputs, batch=batch, loc=tuple(loc))


def encode_predict(body: PredictRequest, outputs: Outputs, decoded: Decoded = NOTHING_DECODED) -> dict[str, Any]:
    """TF Serving's answer: `predictions` (per instance) for row requests, `outputs` for columnar ones."""
    names = sorted(outputs)
    if body.inputs is not None:
        if len(names) == 1:
            return {"outputs": codec.plain_values(outputs[names[0]])}
        return {"outputs": {name: codec.plain_values(outputs[name]) for name in names}}
    count = len(decoded.get("instances", body.instances or []))
    for name in names:
        value = outputs[name]
        if value.ndim == 0 or value.shape[0] != count:
            raise ValidationFailed.at(
                ("body", "instances"),
                f"output {name!r} has shape {list(value.shape)}, not one entry per instance ({count}): "
                "send the request with inputs (columnar format)",
            )
    if len(names) == 1:
        return {"predictions": codec.plain_values(outputs[names[0]])}
    columns = {name: codec.plain_values(outputs[name]) for name in names}
    return {"predictions": [{name: columns[name][index] for name in names} for index in range(count)]}


# ---------------------------------------------------------------------------------------------- :gradients


def _output(body: GradientsRequest | JacobianRequest | ExplainRequest, signature: SignatureInfo) -> TensorInfo:
    names = list(signature.outputs)
    if body.output is None:
        if len(names) != 1:
            raise ValidationFailed.at(
                ("body", "output"), f"the signature has outputs {', '.join(map(repr, names))}: name one"
            )
        return signature.outputs[names[0]]
    if body.output not in signature.outputs:
        raise ValidationFailed.at(
            ("body", "output"), f"the signature has no output {body.output!r} (it has: {', '.join(names)})"
        )
    return signature.outputs[body.output]


def _differentiable(info: TensorInfo, loc: Loc, what: str) -> None:
    """A 422 at `loc` for an integer output or input, which has no derivative."""
    if info.dtype not in FLOAT_DTYPES:
        raise ValidationFailed.at(loc, f"{what} {info.name!r} is {info.dtype}, which has no derivative")


def _sources(body: GradientsRequest, signature: SignatureInfo) -> tuple[tuple[str, ...], bool]:
    names: list[str] = []
    variables = False
    for index, source in enumerate(body.sources):
        if source == "variables":
            variables = True
        elif source == "inputs":
            names.extend(name for name in signature.inputs if name not in names)
        elif source in signature.inputs:
            names.extend([source] if source not in names else [])
        else:
            raise ValidationFailed.at(
                ("body", "sources", index),
                f'{source!r} is neither "inputs", "variables" nor an input ({", ".join(signature.inputs)})',
            )
    return tuple(names), variables


def _classes(value: Any, batch: int, output: TensorInfo, loc: Loc, max_elements: int) -> np.ndarray:
    classes = codec.decode(value, loc, max_elements=max_elements, dtype="int64")
    if classes.ndim == 0:
        classes = np.full(batch, classes, dtype=np.int64)
    if classes.shape != (batch,):
        raise ValidationFailed.at(
            loc, f"one class index per instance: expected {batch}, got shape {list(classes.shape)}"
        )
    depth = output.shape[-1] if output.shape else None
    if classes.size and (classes.min() < 0 or (depth is not None and classes.max() >= depth)):
        raise ValidationFailed.at(loc, f"class indices must lie in [0, {depth}) for output {output.name!r}")
    return classes.astype(np.int32)


def _like_output(value: Any, output: TensorInfo, batch: int, loc: Loc, max_elements: int) -> np.ndarray:
    """A tensor shaped like the output (its batch size that of the inputs), in the output's dtype."""
    array = codec.decode(value, loc, max_elements=max_elements, dtype=output.dtype)
    if output.shape is not None:
        wanted = [batch, *output.shape[1:]] if output.batched else list(output.shape)
        fits = len(wanted) == array.ndim and all(w is None or w == s for w, s in zip(wanted, array.shape, strict=True))
        if not fits:
            shown = [-1 if size is None else size for size in wanted]
            raise ValidationFailed.at(
                loc, f"must be shaped like output {output.name!r}: {shown}; got {list(array.shape)}"
            )
    return array


def _extra(body: GradientsRequest, output: TensorInfo, batch: int, max_elements: int) -> tuple[TargetKind, Any, Any]:
    """(the target's kind, the tensor it needs, the loss spec)."""
    if body.class_index is not None:
        return "class_index", _classes(body.class_index, batch, output, ("body", "class_index"), max_elements), None
    if body.output_gradients is not None:
        gradients = _like_output(body.output_gradients, output, batch, ("body", "output_gradients"), max_elements)
        return "output_gradients", gradients, None
    if body.loss is None:
        return "output", None, None
    if body.loss.targets is not None:
        targets = _like_output(body.loss.targets, output, batch, ("body", "loss", "targets"), max_elements)
        return "loss", targets, body.loss
    depth = output.shape[-1] if output.shape else None
    if depth is None:
        raise ValidationFailed.at(
            ("body", "loss", "labels"), f"output {output.name!r} has no known class axis: send targets"
        )
    classes = _classes(body.loss.labels, batch, output, ("body", "loss", "labels"), max_elements)
    return "loss", np.eye(depth, dtype=output.dtype)[classes], body.loss


def _differentiated(
    body: GradientsRequest | JacobianRequest | ExplainRequest, lease: Lease, max_elements: int, decoded: Decoded
) -> tuple[SignatureInfo, dict[str, np.ndarray], Loc, TensorInfo]:
    """What every differentiating verb reads first: the signature, its inputs, where they stand in the body,
    and the output, which must be a float (422 naming the field otherwise)."""
    signature = _signature(body, lease)
    inputs, loc = _inputs(body, signature, max_elements, decoded)
    output = _output(body, signature)
    _differentiable(output, ("body", "output"), "output")
    return signature, inputs, loc, output


def decode_gradients(
    body: GradientsRequest, lease: Lease, max_elements: int, decoded: Decoded = NOTHING_DECODED
) -> GradientsJob:
    """The engine's job for a `:gradients` body, checked against the signature (422 naming the field)."""
    signature, inputs, loc, output = _differentiated(body, lease, max_elements, decoded)
    sources, variables = _sources(body, signature)
    batch = next(iter(inputs.values())).shape[0] if inputs and next(iter(inputs.values())).ndim else 1
    kind, extra, loss = _extra(body, output, batch, max_elements)
    request = GradientRequest(
        output=output.name,
        sources=sources,
        kind=kind,
        loss=loss.kind if loss is not None else "cross_entropy",
        reduction=loss.reduction if loss is not None else "sum",
        variables=variables,
        unconnected=body.unconnected,
    )
    return GradientsJob(lease.served, signature.name, inputs, request, extra, loc=tuple(loc))


def encode_gradients(lease: Lease, job: GradientsJob, result: Any, device: str, encoding: Any) -> dict[str, Any]:
    def tensor(value: np.ndarray | None) -> dict[str, Any] | None:
        return None if value is None else codec.encode(value, encoding)

    document: dict[str, Any] = {
        "model_spec": {"name": lease.name, "version": str(lease.number), "signature_name": job.signature},
        "device": device,
        "outputs": {name: tensor(value) for name, value in sorted(result.outputs.items())},
    }
    if result.loss is not None:
        document["loss"] = tensor(result.loss)
    document["input_gradients"] = {name: tensor(value) for name, value in result.input_gradients.items()}
    document["variable_gradients"] = [
        {"name": name, "value": tensor(value)} for name, value in result.variable_gradients
    ]
    return document


# ---------------------------------------------------------------------------------------------- :jacobian


def _input(body: JacobianRequest, signature: SignatureInfo) -> str:
    names = list(signature.inputs)
    if body.input is None:
        if len(names) != 1:
            raise ValidationFailed.at(
                ("body", "input"), f"the signature has inputs {', '.join(map(repr, names))}: name one"
            )
        return names[0]
    if body.input not in signature.inputs:
        raise ValidationFailed.at(
            ("body", "input"), f"the signature has no input {body.input!r} (it has: {', '.join(names)})"
        )
    return body.input


def decode_jacobian(
    body: JacobianRequest, lease: Lease, max_elements: int, decoded: Decoded = NOTHING_DECODED
) -> JacobianJob:
    """The engine's job for a `:jacobian` body, checked against the signature (422 naming the field)."""
    signature, inputs, loc, output = _differentiated(body, lease, max_elements, decoded)
    source = _input(body, signature)
    _differentiable(signature.inputs[source], ("body", "input"), "input")
    batch = inputs[source].shape[0] if inputs[source].ndim else 1
    classes = None
    if body.class_index is not None:
        classes = _classes(body.class_index, batch, output, ("body", "class_index"), max_elements)
    return JacobianJob(lease.served, signature.name, inputs, output.name, source, classes, max_elements, tuple(loc))


def encode_jacobian(lease: Lease, job: JacobianJob, result: Any, device: str, encoding: Any) -> dict[str, Any]:
    outputs, found = result
    return {
        "model_spec": {"name": lease.name, "version": str(lease.number), "signature_name": job.signature},
        "device": device,
        "outputs": {name: codec.encode(value, encoding) for name, value in sorted(outputs.items())},
        "jacobian": codec.encode(found, encoding),
    }


# ---------------------------------------------------------------------------------------------- :explain


def _named(value: Any, names: list[str], field: str, max_elements: int, dtype: str) -> dict[str, np.ndarray | None]:
    """A per-input field: one Tensor for a single input, or an object of input name → Tensor."""
    loc: Loc = ("body", field)
    if value is None:
        return dict.fromkeys(names)
    is_tensor_object = isinstance(value, dict) and "shape" in value and set(value) <= _TENSOR_KEYS
    if not isinstance(value, dict) or is_tensor_object:
        if len(names) != 1 and not (field == "noise_stddev" and not isinstance(value, dict | list)):
            raise ValidationFailed.at(
                loc, f"the signature has inputs {', '.join(map(repr, names))}: {field} must be an object naming them"
            )
        decoded = codec.decode(value, loc, max_elements=max_elements, dtype=dtype)
        return dict.fromkeys(names, decoded)
    unknown = sorted(set(value) - set(names))
    if unknown:
        raise ValidationFailed.at((*loc, unknown[0]), f"the signature has no input {unknown[0]!r}")
    return {
        name: None
        if name not in value
        else codec.decode(value[name], (*loc, name), max_elements=max_elements, dtype=dtype)
        for name in names
    }


def _feature_names(body: ExplainRequest, inputs: dict[str, np.ndarray]) -> list[str]:
    """One label per attributed value: the request's, or input[index] (the input's name alone for a scalar)."""
    labels = [
        name if value.ndim == 1 else f"{name}[{', '.join(map(str, index))}]"
        for name, value in inputs.items()
        for index in np.ndindex(*value.shape[1:])
    ]
    if body.feature_names is not None and len(body.feature_names) != len(labels):
        raise ValidationFailed.at(
            ("body", "feature_names"), f"{len(body.feature_names)} feature names for {len(labels)} attributed values"
        )
    return labels if body.feature_names is None else list(body.feature_names)


def decode_explain(
    body: ExplainRequest, lease: Lease, max_elements: int, decoded: Decoded = NOTHING_DECODED
) -> tuple[ExplainJob, list[str]]:
    """The engine's job for an `:explain` body (and the bar labels), checked against the signature and §10."""
    signature, inputs, loc, output = _differentiated(body, lease, max_elements, decoded)
    if output.shape is not None and (not output.batched or len(output.shape) > 2):
        raise ValidationFailed.at(
            ("body", "output"), f"output {output.name!r} must be (batch,) or (batch, classes) to be explained"
        )
    for info in signature.inputs.values():
        _differentiable(info, (*loc, info.name), "input")
    dtypes = {value.dtype.name for value in inputs.values()}
    if len(dtypes) != 1:
        raise ValidationFailed.at(loc, f"the inputs have dtypes {sorted(dtypes)}: an explanation needs one")
    (dtype,) = dtypes
    names = list(inputs)
    with located():
        evaluated = evaluation(explain_options(body), dtype)
        units = output.shape[-1] if output.shape is not None and len(output.shape) == 2 else 1
        attribution = attribution_inputs(
            inputs,
            evaluated,
            single=False,
            units=units if units is not None else 1 << 31,
            class_index=body.class_index,
            baseline=_named(body.baseline, names, "baseline", max_elements, dtype),
            noise_stddev=_named(body.noise_stddev, names, "noise_stddev", max_elements, "float64"),
            seed=body.seed,
            max_elements=max_elements,
        )
    job = ExplainJob(
        lease.served, signature.name, inputs, output.name, evaluated, attribution, max_elements, tuple(loc)
    )
    return job, _feature_names(body, inputs)


def encode_explain(lease: Lease, job: ExplainJob, result: Any, device: str, body: ExplainRequest) -> dict[str, Any]:
    """KServe's `:explain` answer with the version's `model_spec`; attributions by input name."""
    document = {
        "model_spec": {"name": lease.name, "version": str(lease.number), "signature_name": job.signature},
        **encode_attributions(
            result,
            list(job.inputs),
            method=job.evaluation.method,
            device=device,
            dtype=next(iter(job.inputs.values())).dtype.name,
            feature_names=body.feature_names,
            encoding=body.response_encoding,
        ),
    }
    return document
