"""The padded sizes against their definitions: the smallest power of two at least the count, the largest at most."""

from __future__ import annotations

from service.compute.buckets import next_power_of_two, power_of_two_at_most


def test_the_next_power_of_two_is_the_smallest_power_of_two_at_least_the_count() -> None:
    for count in range(5000):
        padded = next_power_of_two(count)
        assert padded & (padded - 1) == 0  # a power of two
        assert padded >= max(count, 1)
        assert padded == 1 or padded // 2 < count
    assert next_power_of_two(2**40 + 1) == 2**41


def test_the_power_of_two_at_most_is_the_largest_power_of_two_not_above_the_count() -> None:
    for count in range(5000):
        chunk = power_of_two_at_most(count)
        assert chunk & (chunk - 1) == 0  # a power of two
        assert chunk <= max(count, 1) < 2 * chunk
    assert power_of_two_at_most(2**40 - 1) == 2**39
