"""PNG answers: the figures already rendered, kept by query with their ETags."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable

PLOT_CACHE_SIZE = 32
"""PNGs kept (about 80 kB each for the seed's four panels)."""


def etag(png: bytes) -> str:
    """The ETag of a PNG: identical figures have identical bytes."""
    return f'"{hashlib.sha256(png).hexdigest()[:32]}"'


class PlotCache:
    """Finished PNGs in a small LRU, with their ETags: identical queries give identical bytes. Used on the
    event loop only (no lock)."""

    def __init__(self, size: int = PLOT_CACHE_SIZE) -> None:
        self._entries: OrderedDict[Hashable, tuple[bytes, str]] = OrderedDict()
        self._size = size
        self.renders = 0
        """PNGs stored: each one a render."""

    def get(self, key: Hashable) -> tuple[bytes, str] | None:
        """(png, etag) of an earlier identical query."""
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def store(self, key: Hashable, png: bytes) -> tuple[bytes, str]:
        """Keep a fresh render; returns (png, etag)."""
        self.renders += 1
        entry = (png, etag(png))
        self._entries[key] = entry
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return entry
