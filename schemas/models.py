"""Served models (API.md §9): TensorFlow Serving's REST bodies — the model list, status, metadata and predict.

The documents keep TF Serving's field names and string-typed numbers (`"version": "1"`, `"size": "-1"`), so
that TF Serving's clients read them unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, SkipValidation, WithJsonSchema, model_validator

from schemas.explain import SEED_FEATURE_NAMES, ExplainFields, ExplanationResponse
from schemas.rules import exactly_one
from schemas.tensors import TensorIn, TensorOut
from service.vocabulary import EncodingName, LossName, ReductionName
from service.vocabulary import VersionState as State

SEED_INSTANCE = [76.0, 120.0, 37.5]
"""The seed's patient: heart rate 76 BPM, systolic blood pressure 120 mm Hg, temperature 37.5 °C."""
DEFAULT_SIGNATURE = "serving_default"
MAX_INSTANCES = 1_048_576
"""The most instances one row-format request holds."""

PlainValues = Annotated[
    Any,
    WithJsonSchema(
        {
            "title": "PlainValues",
            "description": 'A JSON number, or nested arrays of numbers; non-finite values as "NaN", '
            '"Infinity", "-Infinity".',
            "anyOf": [
                {"type": "number", "title": "Number"},
                {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"], "title": "NonFinite"},
                {"type": "array", "title": "Nested", "items": {}},
            ],
        }
    ),
]

NamedTensors = Annotated[dict[str, TensorIn], Field(title="NamedTensors")]
NamedBaselines = Annotated[dict[str, TensorIn], Field(title="NamedBaselines")]
NamedStddevs = Annotated[dict[str, TensorIn], Field(title="NamedStddevs")]
ClassIndex = Annotated[int, Field(strict=True)]
"""A JSON integer: a boolean, a fraction or a string is not a class (API.md §1)."""
ClassChoice = (
    Annotated[ClassIndex, Field(title="OneClass")] | Annotated[list[ClassIndex], Field(title="ClassPerInstance")]
)
"""One class k for every instance, or one per instance."""
OutputName = Annotated[str | None, Field(max_length=256, description="The output; required with several.")]
"""Which of the signature's outputs a verb works on."""
ResponseTensors = Annotated[EncodingName, Field(description="Response tensors: nested or b64.")]
"""How the verbs write the tensors of their answers."""


class NamedValues(RootModel[dict[str, Any]]):
    """Output name → its values (a number, or nested arrays; non-finite values as strings)."""


Predicted = (
    Annotated[float, Field(title="PredictedNumber")]
    | Annotated[Literal["NaN", "Infinity", "-Infinity"], Field(title="PredictedNonFinite")]
    | Annotated[list[Any], Field(title="PredictedNested")]
    | NamedValues
)
"""A number, nested arrays (non-finite values as strings), or an object of output name → such values. Answers
are rendered as they are, not through this type: it documents them."""


# ---------------------------------------------------------------------------------------------- list, status


class ModelSummary(BaseModel):
    name: str = Field(description="The model's folder name in the repository.")
    versions: list[str] = Field(description="Its AVAILABLE versions, ascending, as TF Serving writes them.")
    ready: bool = Field(description="Whether at least one version is AVAILABLE.")


class ModelList(BaseModel):
    """Every model the repository holds."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"models": [{"name": "diabetes", "versions": ["1"], "ready": True}]}]}
    )

    models: list[ModelSummary]


class VersionStatusDetail(BaseModel):
    error_code: str = Field(description='TensorFlow\'s canonical error code: "OK", or why the version is not served.')
    error_message: str = Field(description="Empty when OK; otherwise what went wrong.")


class ModelVersionStatus(BaseModel):
    version: str = Field(description="The version, a positive integer written as a string.")
    state: State = Field(description="START, LOADING, AVAILABLE (serving), UNLOADING (draining), END.")
    status: VersionStatusDetail


class ModelStatus(BaseModel):
    """TF Serving's GetModelStatusResponse: the versions of a model, highest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version_status": [
                        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                    ]
                }
            ]
        }
    )

    model_version_status: list[ModelVersionStatus]


# ---------------------------------------------------------------------------------------------- metadata


class Dim(BaseModel):
    size: str = Field(description='The dimension\'s size as a string; "-1" when any size is taken.')
    name: str = ""


class TensorShape(BaseModel):
    dim: list[Dim]
    unknown_rank: bool = Field(description="True when the rank is not known (dim is then empty).")


class TensorInfoDoc(BaseModel):
    dtype: str = Field(description="TensorFlow's DataType name: DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64...")
    tensor_shape: TensorShape
    name: str = Field(description="The tensor's name in the graph.")


class SignatureDef(BaseModel):
    inputs: dict[str, TensorInfoDoc]
    outputs: dict[str, TensorInfoDoc]
    method_name: str = Field(description='"tensorflow/serving/predict"')


class SignatureDefMap(BaseModel):
    signature_def: dict[str, SignatureDef]


class ModelMetadataBody(BaseModel):
    signature_def: SignatureDefMap


class ModelSpec(BaseModel):
    name: str
    signature_name: str = Field(description="Empty in a metadata answer, as TF Serving has it.")
    version: str


class ModelMetadata(BaseModel):
    """TF Serving's GetModelMetadataResponse for `signature_def`."""

    model_spec: ModelSpec
    metadata: ModelMetadataBody


# ---------------------------------------------------------------------------------------------- predict


Instance = SkipValidation[
    Annotated[float, Field(title="InstanceNumber")]
    | Annotated[list[Any], Field(title="InstanceNested")]
    | Annotated[NamedValues, Field(title="InstanceByName")]
]
"""One instance: the value of the only input, or an object of input name → value. Documented here, checked by
the adapter against the signature (with the codec's exact locations)."""


class PredictRequest(BaseModel):
    """TF Serving's predict: exactly one of `instances` (row format) or `inputs` (columnar format)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"instances": [[76.0, 120.0, 37.5]]},
                {"signature_name": DEFAULT_SIGNATURE, "inputs": {"vitals": [[76.0, 120.0, 37.5]]}},
            ]
        },
    )

    signature_name: str = Field(
        default=DEFAULT_SIGNATURE, min_length=1, max_length=256, description="The signature to run."
    )
    instances: list[Instance] | None = Field(
        default=None,
        max_length=MAX_INSTANCES,
        description="Row format: one entry per instance — the value of the only input, or an object of input "
        "name → value. Values are JSON numbers and nested arrays, as TF Serving takes them.",
    )
    inputs: TensorIn | NamedTensors | None = Field(
        default=None,
        description="Columnar format: the batched value of the only input, or an object of input name → batched "
        "value; a value may also be any Tensor form ({shape, data}, {shape, dtype, b64}).",
    )

    _one_format = exactly_one(
        "instances", "inputs", "send exactly one of instances (row format) or inputs (columnar format)"
    )


class PredictResponse(BaseModel):
    """`predictions` answers `instances` (one entry per instance, objects when there are several outputs);
    `outputs` answers `inputs` (a bare value for one output, else an object of output name → value)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"predictions": [[0.48843524, 0.51156473]]}]},
    )

    predictions: list[Predicted] | None = Field(
        default=None, description="Per instance: its values, or an object of output name → values."
    )
    outputs: Predicted | None = Field(
        default=None, description="The batched values of the only output, or an object of output name → values."
    )


# ---------------------------------------------------------------------------------------------- :gradients


class ModelLoss(BaseModel):
    """A loss on the chosen output, as §2's: `targets` shaped like the output, or `labels` (a class index per
    instance, one-hot over the output's last axis)."""

    model_config = ConfigDict(extra="forbid")

    kind: LossName = Field(
        default="cross_entropy", description="cross_entropy, binary_cross_entropy, mean_squared_error"
    )
    labels: TensorIn | None = Field(default=None, description="One class index per instance.")
    targets: TensorIn | None = Field(default=None, description="A Tensor shaped like the output.")
    reduction: ReductionName = Field(default="sum", description="Over the instances: sum, mean, or none.")

    _one_kind_of_target = exactly_one("labels", "targets", "send exactly one of labels or targets")


class GradientsRequest(PredictRequest):
    """`tape.gradient(target, sources)` on the served model: the target is built from one output (as is, one
    class per instance, a cotangent, or a loss), the sources are inputs and/or the trainable variables."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [[76.0, 120.0, 37.5]], "class_index": 1}]},
    )

    output: OutputName = None
    class_index: ClassChoice | None = Field(
        default=None, description="The target is output[..., k]: one k, or one per instance."
    )
    output_gradients: TensorIn | None = Field(default=None, description="A cotangent shaped like the output.")
    loss: ModelLoss | None = Field(default=None, description="A loss on the output.")
    sources: list[str] = Field(
        default=["inputs"], min_length=1, max_length=1024, description='"inputs", input names, and/or "variables".'
    )
    unconnected: Literal["none", "zero"] = Field(default="none", description="Unconnected gradients: null or zeros.")
    response_encoding: ResponseTensors = "nested"

    @model_validator(mode="after")
    def _one_target(self) -> GradientsRequest:
        chosen = [name for name in ("class_index", "output_gradients", "loss") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"send at most one of class_index, output_gradients, loss (got {', '.join(chosen)})")
        return self


class VariableGradient(BaseModel):
    name: str = Field(description="Keras 3's variable.path (e.g. dense/kernel), or variable.name.")
    value: TensorOut | None


class GradientsResponse(BaseModel):
    model_spec: ModelSpec
    device: str
    outputs: dict[str, TensorOut]
    loss: TensorOut | None = None
    input_gradients: dict[str, TensorOut | None]
    variable_gradients: list[VariableGradient]


# ---------------------------------------------------------------------------------------------- :jacobian


class JacobianRequest(PredictRequest):
    """Per-instance Jacobians of an output with respect to an input (the tape's `batch_jacobian`), bounded by
    TAPESERVE_MAX_ELEMENTS before they are computed."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"instances": [[76.0, 120.0, 37.5]]}]},
    )

    output: OutputName = None
    input: str | None = Field(default=None, max_length=256, description="The input; required with several.")
    class_index: ClassChoice | None = Field(
        default=None, description="Only row k of each Jacobian: (batch, *input_shape)."
    )
    response_encoding: ResponseTensors = "nested"


class JacobianResponse(BaseModel):
    model_spec: ModelSpec
    device: str
    outputs: dict[str, TensorOut]
    jacobian: TensorOut = Field(description="(batch, *output_shape, *input_shape), or (batch, *input_shape).")


# ---------------------------------------------------------------------------------------------- :explain


class ExplainRequest(PredictRequest, ExplainFields):
    """Attributions of the served model's prediction (API.md §10): F is the selected class of `output`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "instances": [list(SEED_INSTANCE)],
                    "feature_names": list(SEED_FEATURE_NAMES),
                    "method": "integrated_gradients",
                    "steps": 50,
                }
            ]
        },
    )

    output: OutputName = None
    baseline: TensorIn | NamedBaselines | None = Field(
        default=None,
        description="Integrated gradients' starting point b: a Tensor of one instance's shape (for every "
        "instance) or one per instance; with several inputs an object of input name → such a Tensor (an input "
        "left out starts at zeros). Default: zeros.",
    )
    noise_stddev: TensorIn | NamedStddevs | None = Field(
        default=None,
        description="SmoothGrad's σ: a number or a Tensor of one instance's shape; with several inputs also an "
        "object of input name → such a value. Default: 0.15 × (max − min) of each instance's own values.",
    )
    feature_names: list[str] | None = Field(
        default=None,
        max_length=4096,
        description="One name per attributed value (every input's values flattened, in the signature's input "
        "order), echoed in the answer and used as the PNG's bar labels (default: input[index]).",
    )


class ModelExplanationResponse(ExplanationResponse):
    """KServe's `:explain` answer with the served model's `model_spec`; attributions by input name."""

    model_spec: ModelSpec
