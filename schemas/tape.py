"""`POST /v1/tape` (API.md §3): any small differentiable program on a GradientTape; `GET /v1/ops`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.tensors import DType, ResponseEncoding, TensorIn, TensorOut
from service.vocabulary import FloatDType

ComputeKind = Literal["gradient", "jacobian", "batch_jacobian", "hessian", "jvp"]

SEED_PROGRAM = (
    "xB = tf.concat([x, 1.0*tf.ones(1)], axis=0)\n"
    "z = tf.linalg.matvec(W, xB)\n"
    "a = tf.nn.softmax(z)\n"
    "yhat = a\n"
    "L = tf.reduce_sum(-tf.one_hot(indices=y, depth=2)*tf.math.log(yhat))\n"
    "L.numpy()"
)
SEED_TAPE_REQUEST: dict[str, Any] = {
    "inputs": {
        "x": {"value": [76.0, 120.0, 37.5]},
        "y": {"value": 1, "dtype": "int32"},
        "W": {"value": [[0.01, -0.02, 0.03, 0.01], [-0.01, 0.02, -0.015, 0.02]], "variable": True},
    },
    "program": SEED_PROGRAM,
    "persistent": True,
    "compute": [
        {"kind": "gradient", "target": "L", "sources": ["yhat"]},
        {"kind": "gradient", "target": "a", "sources": ["z"]},
        {"kind": "jacobian", "target": "a", "sources": ["z"]},
        {"kind": "gradient", "target": "L", "sources": ["W"]},
    ],
    "outputs": ["L", "z"],
}


class TapeInputModel(BaseModel):
    """One named input of the program: a constant, or a tf.Variable."""

    model_config = ConfigDict(extra="forbid")

    value: TensorIn = Field(description="The tensor.")
    dtype: DType | None = Field(
        default=None,
        description="Element type. Default: the request's float dtype for numbers with a fraction, int32 for "
        "whole numbers written without one (as tf.constant would).",
    )
    variable: bool = Field(default=False, description="A tf.Variable (watched automatically when trainable).")
    trainable: bool = Field(default=True, description="tf.Variable(trainable=...); false is not watched.")


class ComputeEntry(BaseModel):
    """One thing to compute from the tape, as its TensorFlow call would."""

    model_config = ConfigDict(extra="forbid")

    kind: ComputeKind = Field(
        description="gradient: tape.gradient; jacobian: tape.jacobian; batch_jacobian: tape.batch_jacobian "
        "(one source); hessian: nested tapes (scalar target; one d²T/ds² block per source); jvp: "
        "tf.autodiff.ForwardAccumulator (Σ Jᵢ·tangentᵢ, target-shaped)."
    )
    target: str = Field(description="Name of the differentiated tensor.")
    sources: list[str] = Field(min_length=1, max_length=64, description="Names to differentiate with respect to.")
    output_gradients: TensorIn | None = Field(
        default=None, description="gradient only: the upstream gradient (target-shaped), as in tape.gradient."
    )
    unconnected: Literal["none", "zero"] = Field(
        default="none", description="A source the target does not depend on: null (none) or zeros (zero)."
    )
    tangents: list[TensorIn] | None = Field(default=None, description="jvp only: one tangent per source.")

    @model_validator(mode="after")
    def _consistent(self) -> ComputeEntry:
        if self.kind == "batch_jacobian" and len(self.sources) != 1:
            raise ValueError("batch_jacobian takes exactly one source")
        if self.kind == "jvp" and (self.tangents is None or len(self.tangents) != len(self.sources)):
            raise ValueError("jvp needs one tangent per source")
        if self.kind != "jvp" and self.tangents is not None:
            raise ValueError("tangents are for jvp only")
        if self.kind != "gradient" and self.output_gradients is not None:
            raise ValueError("output_gradients are for gradient only")
        return self


class TapeRequest(BaseModel):
    """Inputs, a program run on a GradientTape, and what to compute from the tape."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEED_TAPE_REQUEST]})

    inputs: dict[str, TapeInputModel] = Field(default_factory=dict, description="Named inputs of the program.")
    program: str = Field(
        description="TensorFlow-flavoured Python syntax: assignments and expression statements over whitelisted "
        "functions (GET /v1/ops). At most 20,000 characters, 500 statements, nesting depth 50."
    )
    watch: list[str] = Field(
        default_factory=list,
        description="Input names to tape.watch before the program runs; an integer one is watched with "
        "TensorFlow's warning (in the response's `warnings`).",
    )
    persistent: bool = Field(default=False, description="A persistent tape answers any number of compute entries.")
    watch_accessed_variables: bool = Field(default=True, description="As tf.GradientTape's argument.")
    compute: list[ComputeEntry] = Field(default_factory=list, max_length=64, description="In order.")
    outputs: list[str] | None = Field(
        default=None, description="Names whose values to return; default every name the program assigns."
    )
    dtype: FloatDType = Field(default="float32", description="The float type of `float` and of Python floats.")
    response_encoding: ResponseEncoding = Field(default="nested", description="nested or b64 tensors.")


TARGET_WARNING = (
    "The dtype of the target tensor must be floating (e.g. tf.float32) when calling GradientTape.gradient, got tf.int32"
)
WATCH_WARNING = "The dtype of the watched tensor must be floating (e.g. tf.float32), got tf.int32"


class ComputeResultModel(BaseModel):
    kind: ComputeKind
    target: str
    sources: list[str]
    values: list[TensorOut | None] = Field(
        description="One per source (jvp: one); null for unconnected (none), and, as TensorFlow answers, for an "
        "integer (or bool) target or source."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What TensorFlow warns about this entry, in its own words: a target or source whose dtype is "
        "not floating (its value is then null, as tape.gradient returns None), a jvp source that is not floating "
        "(ForwardAccumulator's warning), and a jvp target that is not (TensorFlow is silent there; the same "
        "words name ForwardAccumulator.jvp). Empty when there is nothing to say.",
        examples=[[TARGET_WARNING]],
    )


class TapeResponse(BaseModel):
    """`{"device", "values": {name: Tensor}, "results": [{"kind", "target", "sources", "values": [Tensor | null],
    "warnings": [str]}], "warnings": [str]}`, results in the order of `compute`; `warnings` carry TensorFlow's
    own words for integer targets, sources and watches."""

    device: str = Field(description="The TensorFlow device the program ran on.")
    values: dict[str, TensorOut] = Field(description="The requested outputs.")
    results: list[ComputeResultModel] = Field(description="In the order of compute.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What TensorFlow warns while the program runs, in its own words: watching a tensor whose dtype "
        "is not floating (the request's `watch` or the program's `<tape>.watch(...)`); it is watched anyway, "
        "and gradients by it are null. Empty when there is nothing to say.",
        examples=[[WATCH_WARNING]],
    )


class OpModel(BaseModel):
    name: str = Field(description="Plain name, callable as is.")
    tf_names: list[str] = Field(description="TensorFlow names it is also callable by (tf.nn.softmax, ...).")
    signature: str
    summary: str


class OpsResponse(BaseModel):
    ops: list[OpModel]
    constants: list[str] = Field(description="Names usable as dtypes.")
