"""`POST /v1/gradient-check` (API.md §5): autodiff, central finite differences and a claimed gradient, compared."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.models import SEED_INSTANCE, GradientsRequest
from schemas.networks import SEED_FEATURES, SEED_WEIGHTS, NetworkRequest
from schemas.tape import SEED_PROGRAM, TapeRequest
from schemas.tensors import ResponseEncoding, TensorIn, TensorOut
from service.vocabulary import FloatDType

Verdict = Literal["excellent", "acceptable", "suspicious", "wrong"]
JSONFloat = (
    Annotated[float, Field(title="Finite")]
    | Annotated[Literal["NaN", "Infinity", "-Infinity"], Field(title="NonFinite")]
)
"""A number, or a non-finite one written as the protobuf JSON strings (API.md §1)."""

SEED_NETWORK_CHECK: dict[str, Any] = {
    "network": {
        "features": SEED_FEATURES,
        "labels": 1,
        "layers": [{"weights": SEED_WEIGHTS, "activation": "softmax"}],
    },
    "claimed": {"W1": [[12.74, 20.116, 6.2862, 0.16763], [-12.74, -20.116, -6.2862, -0.16763]]},
    "rtol": 1e-4,
}
SEED_TAPE_CHECK: dict[str, Any] = {
    "tape": {
        "inputs": {
            "x": {"value": SEED_FEATURES},
            "y": {"value": 1, "dtype": "int32"},
            "W": {"value": SEED_WEIGHTS, "variable": True},
        },
        "program": SEED_PROGRAM,
        "compute": [{"kind": "gradient", "target": "L", "sources": ["W"]}],
    }
}

SEED_MODEL_CHECK: dict[str, Any] = {
    "model": {"name": "diabetes", "instances": [SEED_INSTANCE], "class_index": 1, "sources": ["inputs", "variables"]}
}


class ModelGradientsCheck(GradientsRequest):
    """A served model's `:gradients` body, with the model (and optionally its version) it goes to."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_MODEL_CHECK["model"]]})

    name: str = Field(min_length=1, max_length=256, description="The model's folder name in the repository.")
    version: int | None = Field(
        default=None, ge=1, le=10**18, description="A version; default: the highest available one."
    )


class GradientCheckRequest(BaseModel):
    """A network or a tape program whose gradients to check, and how strictly."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [SEED_NETWORK_CHECK, SEED_TAPE_CHECK, SEED_MODEL_CHECK]}
    )

    network: NetworkRequest | None = Field(
        default=None,
        description="A POST /v1/networks/gradients body; its include and response_encoding do not apply, and its "
        "dtype is replaced by the check's. Exactly one of network, tape.",
    )
    tape: TapeRequest | None = Field(
        default=None,
        description="A POST /v1/tape body with exactly one compute entry, of kind gradient, whose sources are "
        "float inputs; its outputs and response_encoding do not apply, and its dtype is replaced by the check's.",
    )
    model: ModelGradientsCheck | None = Field(
        default=None,
        description="A served model's :gradients body plus its name (and version): its input gradients (and "
        "the trainable variables' with sources [\"variables\"]) are checked in the model's own dtype; its "
        "response_encoding does not apply.",
    )
    sources: list[str] | None = Field(
        default=None,
        description="Network only: which of W1, W2, …, features to check. Default: every weight matrix and the "
        "features. For a tape the sources are those of its gradient entry, for a model those of its body.",
    )
    claimed: dict[str, TensorIn] | None = Field(
        default=None,
        description="Your own gradients, source name → Tensor of the source's shape; each is compared with autodiff. "
        "A model's sources are its input names and its variables' names (as :gradients names them).",
    )
    epsilon: float = Field(
        default=1e-6,
        gt=0,
        le=1,
        allow_inf_nan=False,
        description="Step of the central differences (L(θ + ε) − L(θ − ε)) / 2ε, for every element θ of a source. "
        "For a float32 model the default is 1e-3.",
    )
    dtype: FloatDType = Field(
        default="float64",
        description="Precision of autodiff and finite differences; float32 inputs are cast up (a note says so). A "
        "model is checked in its own dtype (a different one is a 422).",
    )
    rtol: float = Field(
        default=1e-5,
        ge=0,
        allow_inf_nan=False,
        description="|a − b| ≤ atol + rtol·|b| passes. For a float32 model the default is 1e-2.",
    )
    atol: float = Field(
        default=1e-8,
        ge=0,
        allow_inf_nan=False,
        description="|a − b| ≤ atol + rtol·|b| passes. For a float32 model the default is 1e-3.",
    )
    response_encoding: ResponseEncoding = Field(
        default="nested", description="nested: values as JSON arrays; b64: every tensor as base64 bytes."
    )

    @model_validator(mode="after")
    def _network_tape_or_model(self) -> GradientCheckRequest:
        if self.network is not None and self.tape is not None and self.model is None:
            raise ValueError("send exactly one of network and tape")
        if sum(part is not None for part in (self.network, self.tape, self.model)) != 1:
            raise ValueError("send exactly one of network, tape and model")
        if self.tape is not None and self.sources is not None:
            raise ValueError("sources applies to a network; a tape's sources are those of its gradient entry")
        if self.model is not None and self.sources is not None:
            raise ValueError("sources applies to a network; a model's sources are those of its body")
        return self


class Comparison(BaseModel):
    max_abs_error: JSONFloat = Field(description="Largest |a − b|.")
    max_rel_error: JSONFloat = Field(description="Largest |a − b| / max(|a|, |b|), 0 where both are 0.")
    worst_index: list[int] = Field(description="Index of the largest absolute error; [] for a scalar.")
    passed: bool = Field(description="|a − b| ≤ atol + rtol·|b| everywhere (np.allclose), b the reference.")


class ClaimedComparison(Comparison):
    """The claimed gradient (a) against autodiff (b)."""

    value: TensorOut = Field(description="The claimed gradient, in the check's dtype.")


class SourceCheck(Comparison):
    """One source: autodiff (a) against finite differences (b), and the claim against autodiff."""

    source: str = Field(description="W1, W2, …, features for a network; an input name for a tape.")
    autodiff: TensorOut = Field(description="dL/dsource from TensorFlow's tape.")
    numerical: TensorOut = Field(description="dL/dsource from central finite differences.")
    claimed: ClaimedComparison | None = Field(default=None, description="Present when a claim was sent.")


class GradientCheckResponse(BaseModel):
    """200 whether or not the gradients pass."""

    device: str = Field(description="The TensorFlow device the computation ran on.")
    passed: bool = Field(description="Every comparison (autodiff–numerical, claimed–autodiff) passed.")
    dtype: FloatDType
    epsilon: float
    rtol: float
    atol: float
    max_rel_error: JSONFloat = Field(description="The worst relative error of every comparison.")
    verdict: Verdict = Field(
        description="Band of max_rel_error: ≤ 1e-7 excellent, ≤ 1e-4 acceptable, ≤ 1e-2 suspicious, above: wrong."
    )
    perturbed_elements: int = Field(description="Elements perturbed by finite differences (two evaluations each).")
    checks: list[SourceCheck]
    notes: list[str] = Field(
        description="What was cast or replaced, kinks met, and the worst comparison in a sentence."
    )
