"""One hostile request and the exact answer it must get: the case type of the hostile-input campaigns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = "application/json"


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the exact answer it must get."""

    name: str
    method: str
    path: str
    status: int
    slug: str
    body: bytes | None = None
    content_type: str | None = JSON
    loc: tuple[str | int, ...] | None = None
    """A location the problem's errors must hold (a longer one under it also counts: union members add a part)."""
    says: str | None = None
    """Words the detail must contain."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Further members the problem must carry with these values (line, column, compute_index)."""
