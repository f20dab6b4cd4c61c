"""The tape language's limits, as named constants. Everything here is checked before TensorFlow allocates.

The element limit itself (`max_elements`) is the service's setting; the factors below scale it.
"""

from __future__ import annotations

MAX_PROGRAM_CHARS = 20_000
"""A program has at most this many characters."""

MAX_STATEMENTS = 500
"""A program has at most this many statements."""

MAX_DEPTH = 50
"""Expressions nest at most this many levels below their statement; it bounds every recursive walk."""

MAX_DIMS = 32
"""A shape written in a program has at most this many dimensions (TensorFlow's own limit is 254)."""

MAX_LIST_NESTING = 32
"""Lists nest at most this deep, which keeps every walk over them shallow."""

MAX_LIST_LEAVES = 16_384
"""Numbers and tensors one list holds, unfolded. A 20,000-character program spells out far fewer;
more can only come from doubling lists by name, whose conversion costs Python time per leaf."""

INT64_MAX = 2**63 - 1
"""Integer literals and Python integer results stay within int64, as TensorFlow converts them."""

INT64_MIN = -(2**63)
"""The least Python integer result TensorFlow converts (to int64)."""

DEFAULT_MAX_ELEMENTS = 4_194_304
"""The element limit when the caller gives none (the service passes its setting)."""

WORK_FACTOR = 256
"""A matmul may do at most this many multiply-adds per element of the element limit (~1e9 by default)."""

TOTAL_FACTOR = 32
"""All tensors one run of a program creates total at most this many times the element limit: the
tape keeps intermediates alive, so a long chain of large ones is bounded as a whole. A jacobian's
vectorised backward pass (target elements × the program's largest tensor) is bounded by it too."""

TOTAL_WORK_FACTOR = 1024
"""One run reads, writes and multiply-adds at most this many times the element limit (~4e9 by
default, a few seconds): TensorFlow ops cannot be interrupted once the worker runs them."""
