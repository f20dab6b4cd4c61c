"""Padded sizes. XLA compiles one program per shape, so batches and stacks of requests are padded to a few
sizes, the powers of two, and requests of similar sizes share one program."""

from __future__ import annotations


def next_power_of_two(count: int) -> int:
    """The smallest power of two that is at least `count` (1 for 0 and 1)."""
    return 1 << max(count - 1, 0).bit_length()


def power_of_two_at_most(count: int) -> int:
    """The largest power of two that is at most `count` (1 for 0 and 1)."""
    return 1 << max(count.bit_length() - 1, 0)
