"""Service endpoints: health, readiness, info."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from schemas.models import ModelSummary


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "starting", "draining"]


class Limits(BaseModel):
    max_body_bytes: int = Field(description="TAPESERVE_MAX_BODY_BYTES")
    max_elements: int = Field(description="TAPESERVE_MAX_ELEMENTS: per tensor and per intermediate.")
    max_rank: int
    timeout_s: float = Field(description="TAPESERVE_TIMEOUT_S: deadline of one request.")
    queue_limit: int = Field(description="TAPESERVE_QUEUE_LIMIT: jobs waiting at most.")
    max_fd_elements: int = Field(description="Elements a gradient check perturbs at most.")


class FunctionCache(BaseModel):
    hits: int
    misses: int
    traces: int = Field(description="Times a compiled function was traced (retraces included).")
    size: int


class Info(BaseModel):
    service: str = "tapeserve"
    version: str
    tensorflow: str = Field(description="TensorFlow version.")
    device: str = Field(description="The pinned device every computation runs on.")
    visible_devices: list[str] = Field(description="Logical devices TensorFlow sees.")
    ready: bool
    limits: Limits
    function_cache: FunctionCache
    batching: dict[str, Annotated[float, Field(title="Float")] | Annotated[int, Field(title="Integer")]] = Field(
        description="Micro-batching settings and counters."
    )
    models: list[ModelSummary] = Field(
        default_factory=list, description="The served models (as GET /v1/models lists them)."
    )
