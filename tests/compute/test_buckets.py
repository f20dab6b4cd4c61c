"""The padded sizes against their definition: the smallest power of two at least the count."""

from __future__ import annotations

from service.compute.buckets import next_power_of_two


def test_the_next_power_of_two_is_the_smallest_power_of_two_at_least_the_count() -> None:
    for count in range(5000):
        padded = next_power_of_two(count)
        assert padded & (padded - 1) == 0  # a power of two
        assert padded >= max(count, 1)
        assert padded == 1 or padded // 2 < count
    assert next_power_of_two(2**40 + 1) == 2**41
