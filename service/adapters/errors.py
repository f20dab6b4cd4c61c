"""The one place compute locations become HTTP locations."""

from __future__ import annotations

from contextlib import AbstractContextManager

from service.compute.errors import located_under


def located(*prefix: str | int) -> AbstractContextManager[None]:
    """Compute errors raised inside are re-raised with HTTP locations ("body", *prefix, *error.loc)."""
    return located_under("body", *prefix)
