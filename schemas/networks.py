"""`POST /v1/networks/gradients` (API.md §2): dense networks on patient samples."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from schemas.rules import exactly_one
from schemas.tensors import LIMIT_ERROR, ResponseEncoding, TensorIn, TensorOut, declared_shape
from service.vocabulary import ActivationName, BiasName, FloatDType, IncludeName, LossName, ReductionName

MAX_LAYERS = 64
"""Layers of one network (what compiling that many costs: README, Performance)."""
MAX_LAYERS_WITH_LOCAL_GRADIENTS = 8
"""Layers of a network that asks for local_gradients or jacobians: each layer's tape.gradient and
batch_jacobian walk back through every layer before it, so compiling grows with the square of the depth
(README, Performance)."""
MAX_JACOBIAN_ROWS = 1024
"""Samples × units of any layer of a request that asks for jacobians: batch_jacobian differentiates each of
the layer's samples × units outputs (vectorised over them), and compiling that grows with their square
(README, Performance)."""
MAX_TENSOR_ELEMENTS = 4_194_304
"""Elements of any one tensor the network makes (z and a of a layer, a Jacobian): the default
TAPESERVE_MAX_ELEMENTS, which bounds the tensors a request sends."""
MAX_NETWORK_ELEMENTS = 16_777_216
"""Elements of every layer's z and Jacobians together: the computation's working set and the response."""
EXPENSIVE_INCLUDES = ("local_gradients", "jacobians")

SEED_FEATURES = [76.0, 120.0, 37.5]
"""The seed's diabetic patient: heart rate 76 BPM, blood pressure 120 mm Hg, temperature 37.5 °C."""
SEED_WEIGHTS = [[0.01, -0.02, 0.03, 0.01], [-0.01, 0.02, -0.015, 0.02]]

SEED_REQUEST: dict[str, Any] = {
    "features": SEED_FEATURES,
    "labels": 1,
    "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}],
    "include": ["intermediates", "local_gradients", "jacobians", "input_gradients"],
}


class Layer(BaseModel):
    """One dense layer: z = W·x_B (x_B = [x; 1] with bias augmented), a = activation(z)."""

    model_config = ConfigDict(extra="forbid")

    weights: TensorIn = Field(
        description="W, shape (units, inputs + 1) with bias augmented (last column multiplies the appended 1), "
        "(units, inputs) with bias none."
    )
    activation: ActivationName = Field(description="Activation applied to z. softmax/log_softmax act per sample.")
    alpha: float | None = Field(
        default=None,
        allow_inf_nan=False,
        description="Negative-side slope of leaky_relu (default 0.01, the seed's; tf.nn.leaky_relu's own is 0.2). "
        "Only valid with leaky_relu.",
    )


class NetworkRequest(BaseModel):
    """A stack of dense layers applied to one sample or a batch, with a loss and what to report."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_REQUEST]})

    features: TensorIn = Field(description="Shape (n,) for one sample or (batch, n).")
    labels: Annotated[StrictInt, Field(title="Label")] | Annotated[list[StrictInt], Field(title="Labels")] | None = (
        Field(
            default=None,
            description="Class index per sample (one int for rank-1 features). For a one-hot or probability row "
            "use `targets`. Exactly one of labels, targets.",
        )
    )
    targets: TensorIn | None = Field(
        default=None,
        description="One-hot / probability / regression rows, same shape as predictions. Exactly one of labels, "
        "targets.",
    )
    layers: list[Layer] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        description=f"Layers 1..L, applied in order: at most {MAX_LAYERS} ({MAX_LAYERS_WITH_LOCAL_GRADIENTS} with "
        f"local_gradients or jacobians). Each layer's z = W·x_B holds samples × units elements, at most "
        f"{MAX_TENSOR_ELEMENTS:,}; every layer's z and Jacobians together at most {MAX_NETWORK_ELEMENTS:,}.",
    )
    bias: BiasName = Field(
        default="augmented",
        description="augmented: each layer input gets a constant 1 appended (x_B = [x; 1]).",
    )
    loss: LossName = Field(
        default="cross_entropy",
        description="On the last layer's output as is (no clipping): CE = −Σₖ yₖ log ŷₖ; BCE = −meanₖ[y log ŷ + "
        "(1−y) log(1−ŷ)]; MSE = meanₖ (ŷ−y)².",
    )
    reduction: ReductionName = Field(
        default="sum",
        description="Over samples. none: a per-sample loss vector (its gradients are those of the sum).",
    )
    dtype: FloatDType = Field(default="float32", description="Compute precision.")
    include: list[IncludeName] = Field(
        default_factory=list,
        max_length=4,
        description=f"Extra outputs. With local_gradients or jacobians, at most {MAX_LAYERS_WITH_LOCAL_GRADIENTS} "
        f"layers; with jacobians, samples × units of each layer at most {MAX_JACOBIAN_ROWS:,} and each Jacobian "
        f"(samples × units × units × columns for dz/dW) at most {MAX_TENSOR_ELEMENTS:,} elements.",
    )
    response_encoding: ResponseEncoding = Field(
        default="nested", description="nested: values as JSON arrays; b64: every tensor as base64 bytes."
    )

    @field_validator("layers")
    @classmethod
    def _bounded_layers(cls, layers: list[Layer], info: ValidationInfo) -> list[Layer]:
        # z and a of every layer live through the backward pass: samples × units each, bounded before compiling
        samples = _samples(info.data.get("features"))
        if samples is None:
            return layers
        total = 0
        for number, units, _ in _layer_shapes(layers):
            made = samples * units
            if made > MAX_TENSOR_ELEMENTS:
                raise _limit(
                    f"layer {number}'s z would hold {samples:,} samples × {units:,} units = {made:,} elements, "
                    f"above the limit of {MAX_TENSOR_ELEMENTS:,}; send fewer samples per request"
                )
            total += made
        if total > MAX_NETWORK_ELEMENTS:
            raise _limit(
                f"the layers' z would hold {total:,} elements together, above the limit of {MAX_NETWORK_ELEMENTS:,}; "
                "send fewer samples or fewer units"
            )
        return layers

    @field_validator("include")
    @classmethod
    def _bounded_includes(cls, include: list[str], info: ValidationInfo) -> list[str]:
        asked = [name for name in EXPENSIVE_INCLUDES if name in include]
        layers = info.data.get("layers")
        if not asked or layers is None:
            return include
        if len(layers) > MAX_LAYERS_WITH_LOCAL_GRADIENTS:
            raise _limit(
                f"{' and '.join(asked)} need a network of at most {MAX_LAYERS_WITH_LOCAL_GRADIENTS} layers, got "
                f"{len(layers)}: compiling them grows with the square of the depth"
            )
        samples = _samples(info.data.get("features"))
        if samples is None or "jacobians" not in include:
            return include
        total = 0
        for number, units, columns in _layer_shapes(layers):
            if samples * units > MAX_JACOBIAN_ROWS:
                raise _limit(
                    f"layer {number}'s Jacobians would differentiate {samples:,} samples × {units:,} units = "
                    f"{samples * units:,} outputs, above the limit of {MAX_JACOBIAN_ROWS:,}: their cost grows with "
                    "the square of that; drop jacobians or send fewer samples"
                )
            jacobian = samples * units * units * columns
            if jacobian > MAX_TENSOR_ELEMENTS:
                raise _limit(
                    f"layer {number}'s Jacobian dz/dW would hold {samples:,} × {units:,} × {units:,} × {columns:,} = "
                    f"{jacobian:,} elements, above the limit of {MAX_TENSOR_ELEMENTS:,}; drop jacobians or send "
                    "fewer samples or units"
                )
            total += samples * units * (1 + units + units * columns)
        if total > MAX_NETWORK_ELEMENTS:
            raise _limit(
                f"the layers' z and Jacobians would hold {total:,} elements together, above the limit of "
                f"{MAX_NETWORK_ELEMENTS:,}; drop jacobians or send fewer samples or units"
            )
        return include

    _labels_or_targets = exactly_one("labels", "targets", "exactly one of labels and targets is required")


def _limit(message: str) -> PydanticCustomError:
    return PydanticCustomError(LIMIT_ERROR, message)


def _samples(features: Any) -> int | None:
    """Samples the features declare (1 for one sample); None when the codec will reject their shape."""
    shape = declared_shape(features)
    if shape is None or len(shape) not in (1, 2):
        return None
    return shape[0] if len(shape) == 2 else 1


def _layer_shapes(layers: list[Layer]) -> list[tuple[int, int, int]]:
    """(layer number, units, columns) of every layer whose weights declare a matrix shape."""
    shapes = []
    for number, layer in enumerate(layers, start=1):
        shape = declared_shape(layer.weights)
        if shape is not None and len(shape) == 2:
            shapes.append((number, shape[0], shape[1]))
    return shapes


LayerNumber = Annotated[int, Field(description="Layer number, 1-based.")]


class LayerGradient(BaseModel):
    layer: LayerNumber
    weights: TensorOut = Field(description="dL/dWᵢ, same shape as Wᵢ.")


class Intermediate(BaseModel):
    layer: LayerNumber
    inputs: TensorOut = Field(description="The layer's input x_B = [x; 1] (x with bias none).")
    z: TensorOut = Field(description="zᵢ = Wᵢ x_B.")
    a: TensorOut = Field(description="aᵢ = activation(zᵢ).")


class NamedGradient(BaseModel):
    target: str = Field(description="Differentiated tensor: loss, a1, z1, ...")
    source: str = Field(description="With respect to: predictions, z1, W1, ...")
    value: TensorOut


class NetworkResponse(BaseModel):
    """Loss, predictions and dL/dWᵢ, plus whatever `include` asked for."""

    device: str = Field(description="The TensorFlow device the computation ran on.")
    dtype: FloatDType
    loss: TensorOut = Field(description="Scalar for sum/mean; per-sample vector for none.")
    predictions: TensorOut = Field(description="The last layer's output a_L.")
    gradients: list[LayerGradient]
    input_gradients: TensorOut | None = Field(default=None, description="dL/dfeatures, same shape as features.")
    intermediates: list[Intermediate] | None = None
    local_gradients: list[NamedGradient] | None = Field(
        default=None,
        description="What tape.gradient(target, source) returns on a persistent tape: for a non-scalar target, the "
        "gradient of its sum (shape = source's shape). For softmax d(Σa)/dz is 0.",
    )
    jacobians: list[NamedGradient] | None = Field(
        default=None,
        description="Full Jacobians, shape = target shape + source shape; per sample for a batch.",
    )
