"""`POST /v1/networks/gradients` (API.md §2): dense networks on patient samples."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from schemas.tensors import FloatDType, ResponseEncoding, TensorIn, TensorOut

ActivationName = Literal[
    "linear",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "softplus",
    "swish",
    "softmax",
    "log_softmax",
]
LossName = Literal["cross_entropy", "binary_cross_entropy", "mean_squared_error"]
ReductionName = Literal["sum", "mean", "none"]
IncludeName = Literal["intermediates", "local_gradients", "jacobians", "input_gradients"]

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
    labels: StrictInt | list[StrictInt] | None = Field(
        default=None,
        description="Class index per sample (one int for rank-1 features). For a one-hot or probability row "
        "use `targets`. Exactly one of labels, targets.",
    )
    targets: TensorIn | None = Field(
        default=None,
        description="One-hot / probability / regression rows, same shape as predictions. Exactly one of labels, "
        "targets.",
    )
    layers: list[Layer] = Field(min_length=1, max_length=64, description="Layers 1..L, applied in order.")
    bias: Literal["augmented", "none"] = Field(
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
    include: list[IncludeName] = Field(default_factory=list, max_length=4, description="Extra outputs.")
    response_encoding: ResponseEncoding = Field(
        default="nested", description="nested: values as JSON arrays; b64: every tensor as base64 bytes."
    )

    @model_validator(mode="after")
    def _labels_or_targets(self) -> NetworkRequest:
        if (self.labels is None) == (self.targets is None):
            raise ValueError("exactly one of labels and targets is required")
        return self


class LayerGradient(BaseModel):
    layer: int = Field(description="Layer number, 1-based.")
    weights: TensorOut = Field(description="dL/dWᵢ, same shape as Wᵢ.")


class Intermediate(BaseModel):
    layer: int = Field(description="Layer number, 1-based.")
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
