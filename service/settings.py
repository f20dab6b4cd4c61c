"""The one settings object: every knob of the service, read from `TAPESERVE_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of one tapeserve process (API.md §8). Every field is optional."""

    model_config = SettingsConfigDict(env_prefix="TAPESERVE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    """Interface the HTTP server binds to."""

    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port the HTTP server listens on."""

    device: str = "auto"
    """`auto` (first GPU, else CPU), `cpu`, `gpu`, `gpu:N`, or a TensorFlow device string like `/CPU:1`."""

    device_fallback: Literal["none", "cpu"] = "none"
    """`cpu`: start on the CPU when the requested GPU is absent instead of refusing to start."""

    cpu_logical_devices: int = Field(default=1, ge=1, le=16)
    """Split the physical CPU into this many logical devices (lets GPU-style pinning run on a CPU host)."""

    api_keys: SecretStr = SecretStr("")
    """Comma-separated API keys; empty leaves the API open. Secret: never shown in reprs or logs."""

    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    """Largest request body accepted (413 beyond)."""

    max_elements: int = Field(default=4_194_304, ge=1)
    """Largest tensor, in elements, a request may send or a computation may create (422 beyond)."""

    timeout_s: float = Field(default=30.0, gt=0)
    """Deadline of one request, queueing included (504 beyond)."""

    queue_limit: int = Field(default=256, ge=1)
    """Jobs waiting for the worker at most (429 beyond)."""

    drain_grace_s: float = Field(default=5.0, ge=0, le=300)
    """After SIGTERM, how long `/readyz` answers 503 `draining` while new connections are still accepted (so that
    balancers notice) before the listener closes and requests in flight finish."""

    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    """Log level of the service's own logs."""

    access_log: bool = True
    """One JSON log line per request at info level."""

    log_flush_s: float = Field(default=0.25, ge=0)
    """Info lines (the access log) are written in batches at least this often; warnings and errors at once,
    after everything before them. 0 writes every line as it comes (slower under load)."""

    heap_keep_mb: int = Field(default=128, ge=0, le=1024)
    """Freed memory the C heap keeps for the next request instead of returning it to the kernel (glibc only;
    `service/heap.py`): a large request then reuses pages rather than faulting in fresh ones. 0 leaves glibc's
    defaults."""

    batch_window_ms: float = Field(default=1.0, ge=0)
    """How long the worker waits to merge concurrent compatible requests; 0 disables micro-batching."""

    max_batch_requests: int = Field(default=64, ge=1)
    """Most requests merged into one compiled call."""

    function_cache_size: int = Field(default=128, ge=1)
    """Compiled functions kept per kind of computation, and per served model version (least recently used
    dropped)."""

    max_fd_elements: int = Field(default=20_000, ge=1)
    """Most elements a gradient check perturbs by finite differences (422 beyond)."""

    xla: bool = True
    """Compile network functions, and served Keras models' bucketed functions, with XLA (jit_compile): about 3x
    faster per call here (10x on a 65,536-instance model gradient), slower to compile."""

    opentelemetry: bool = False
    """FastAPI's native OpenTelemetry spans and metrics, sent to the process's configured OpenTelemetry providers.
    Off by default: `/metrics` and the JSON logs cover the service, and checking for providers costs ~4 µs a
    request."""

    warmup: bool = True
    """Trace the seed network at start-up so the first request is fast (`/readyz` waits for it)."""

    model_dir: str = "models"
    """The model repository (TF Serving's layout `<dir>/<name>/<version>/`), relative to the working directory;
    the repository ships an example there. A directory that does not exist serves no models."""

    model_versions: Literal["latest", "all"] = "latest"
    """`latest`: serve each model's highest version only, as TF Serving does; `all`: serve every version."""

    model_poll_s: float = Field(default=2.0, ge=0)
    """How often the model repository is read again; 0 reads it once, at start."""

    allow_unsafe_ops: bool = False
    """Serve SavedModels whose serving functions hold ops that reach outside the computation (files, network,
    Python callbacks, printing); refused by default, with the op named in the version's status."""

    @field_validator("log_level", "model_versions", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def api_key_list(self) -> tuple[str, ...]:
        """The configured API keys, blanks dropped."""
        return tuple(key.strip() for key in self.api_keys.get_secret_value().split(",") if key.strip())
