"""`POST /v1/networks/explanations` (API.md §10): which feature drove a network's prediction, and by how much."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from schemas.activations import Theme
from schemas.networks import MAX_LAYERS, SEED_FEATURES, SEED_WEIGHTS, Layer
from schemas.tensors import ResponseEncoding, TensorIn, TensorOut
from service.vocabulary import (
    DEFAULT_SAMPLES,
    DEFAULT_STEPS,
    MAX_SAMPLES,
    MAX_STEPS,
    BiasName,
    FloatDType,
    IntegrationName,
    MethodName,
)

NumberOrName = Annotated[float, Field(title="Number")] | Annotated[str, Field(title="NonFinite")]
"""A number, or a non-finite one as its JSON string; members titled for client generators."""

MAX_PANELS = 16
"""Instances an `Accept: image/png` answer draws at most (one panel each)."""

SEED_FEATURE_NAMES = ["heart rate (BPM)", "blood pressure (mm Hg)", "temperature (°C)"]
SEED_EXPLANATION_REQUEST: dict[str, Any] = {
    "features": SEED_FEATURES,
    "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}],
    "feature_names": SEED_FEATURE_NAMES,
    "method": "integrated_gradients",
    "steps": 50,
    "integration": "riemann_trapezoid",
}


class ExplainFields(BaseModel):
    """The §10 fields shared by every explanation request (networks here; served models build on them)."""

    method: MethodName = Field(
        default="integrated_gradients",
        description="integrated_gradients: (x − b) ⊙ Σₖ wₖ ∂F/∂x(b + αₖ(x − b)); saliency: ∂F/∂x (absolute by "
        "default); gradient_x_input: x ⊙ ∂F/∂x; smoothgrad: the mean ∂F/∂x over `samples` noisy copies "
        "x + N(0, σ²). F is the explained class's output.",
    )
    class_index: (
        Annotated[StrictInt, Field(title="Class")] | Annotated[list[StrictInt], Field(title="Classes")] | None
    ) = Field(
        default=None,
        description="The class to explain: one int for every instance or one per instance. Default: each instance's "
        "predicted class (argmax); a one-unit output uses that unit (class 0).",
    )
    baseline: TensorIn | None = Field(
        default=None,
        description="Integrated gradients' starting point b: one instance's shape (used for every instance) or one "
        "per instance. Default: zeros.",
    )
    steps: int = Field(
        default=DEFAULT_STEPS,
        ge=1,
        le=MAX_STEPS,
        description=f"Gradient evaluations of integrated gradients, 1…{MAX_STEPS} (2…{MAX_STEPS} for "
        "riemann_trapezoid). All instances × steps run as one compiled call.",
    )
    integration: IntegrationName = Field(
        default="riemann_trapezoid",
        description="Rule on [0, 1] for m steps: left αₖ = k/m (k = 0…m−1), right k/m (k = 1…m), middle (k+½)/m, "
        "all wₖ = 1/m; trapezoid αₖ = k/(m−1), wₖ = 1/(m−1) halved at both ends; gausslegendre the m-point "
        "Gauss–Legendre nodes and weights mapped from [−1, 1].",
    )
    samples: int = Field(
        default=DEFAULT_SAMPLES, ge=1, le=MAX_SAMPLES, description=f"Noisy copies for smoothgrad, 1…{MAX_SAMPLES}."
    )
    noise_stddev: TensorIn | None = Field(
        default=None,
        description="SmoothGrad's σ: a number, or a Tensor of one instance's shape (σ per feature). Default: "
        "0.15 × (max − min) of each instance's own values. 0 gives the signed saliency.",
    )
    seed: int = Field(
        default=0,
        ge=0,
        le=2**63 - 1,
        description="SmoothGrad's noise: numpy's default_rng(seed) standard normal draws of shape (instances, "
        "samples, *instance shape), times σ. The same seed gives the same answer.",
    )
    absolute: bool | None = Field(
        default=None,
        description="|∂F/∂x| (Simonyan et al.) or the signed gradient. Default true for saliency, false otherwise; "
        "only saliency and smoothgrad take it (the other methods' attributions are signed).",
    )
    theme: Theme = Field(
        default="dark",
        description="Colours of the `Accept: image/png` answer: dark (the seed's style, as the activation plot) "
        "or light.",
    )
    response_encoding: ResponseEncoding = Field(
        default="nested", description="nested: values as JSON arrays; b64: every tensor as base64 bytes."
    )


class NetworkExplanationRequest(ExplainFields):
    """A §2 dense network (features, layers, bias, dtype) and what to explain of its prediction."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_EXPLANATION_REQUEST]})

    features: TensorIn = Field(description="Shape (n,) for one instance or (instances, n).")
    layers: list[Layer] = Field(
        min_length=1, max_length=MAX_LAYERS, description="Layers 1..L, as in /v1/networks/gradients."
    )
    bias: BiasName = Field(
        default="augmented", description="augmented: each layer input gets a constant 1 appended (x_B = [x; 1])."
    )
    dtype: FloatDType = Field(default="float32", description="Compute precision.")
    feature_names: list[str] | None = Field(
        default=None,
        max_length=4096,
        description="One name per feature, echoed in the answer and used as the bar labels of the PNG (default x1…xn).",
    )


class InstanceExplanation(BaseModel):
    """One instance's attributions and, for integrated gradients, the completeness check."""

    instance: int = Field(description="Index of the instance, 0-based.")
    class_index: int = Field(description="The explained class.")
    prediction: NumberOrName = Field(description="F(x): the explained class's output at the instance.")
    attributions: dict[str, TensorOut] = Field(description="Input name → attributions of its shape (`features`).")
    baseline_prediction: NumberOrName | None = Field(default=None, description="F(b) (integrated gradients).")
    convergence_delta: NumberOrName | None = Field(
        default=None,
        description="Σ attributions − (F(x) − F(b)) (integrated gradients): how far the integral's approximation is "
        "from the completeness axiom; it shrinks as steps grow.",
    )


class ExplanationResponse(BaseModel):
    """KServe's `:explain` shape: the predictions, then one explanation per instance."""

    device: str = Field(description="The TensorFlow device the computation ran on.")
    method: MethodName
    dtype: FloatDType
    predictions: TensorOut = Field(description="The network's outputs at the instances.")
    feature_names: list[str] | None = Field(default=None, description="The request's feature names, echoed.")
    explanations: list[InstanceExplanation]
