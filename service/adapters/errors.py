"""The one place compute locations become HTTP locations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.compute.errors import ComputeError


@contextmanager
def located(*prefix: str | int) -> Iterator[None]:
    """Compute errors raised inside are re-raised with HTTP locations ("body", *prefix, *error.loc)."""
    try:
        yield
    except ComputeError as error:
        error.loc = ("body", *prefix, *error.loc)
        raise
