"""The C heap keeps freed memory for the next request: glibc's page faults of a repeated large allocation,
kept against glibc's defaults, each in a fresh interpreter (the thresholds are the process's)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.heap import keep_freed_memory
from service.settings import Settings

ROUNDS = """
import resource, sys
from service.heap import keep_freed_memory
kept = keep_freed_memory(int(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_request():  # three 8 MiB blocks, every page written, all freed together
    blocks = [b"x" * (8 << 20) for _ in range(3)]
    del blocks
one_request()
before = faults()
for _ in range(5):
    one_request()
print(kept, faults() - before)
"""

PAGES_PER_ROUND = 3 * (8 << 20) // 4096


def faults_of_repeats(megabytes: int) -> tuple[bool, int]:
    done = subprocess.run(
        [sys.executable, "-c", ROUNDS, str(megabytes)], capture_output=True, text=True, check=True, timeout=60
    )
    kept, faults = done.stdout.split()
    return kept == "True", int(faults)


def test_kept_memory_serves_repeated_large_blocks_without_fresh_pages() -> None:
    kept, faults = faults_of_repeats(128)
    assert kept
    assert faults < PAGES_PER_ROUND // 10  # five rounds of 6,144 pages each, almost none of them fresh


def test_glibc_defaults_fault_in_fresh_pages_for_every_repeat() -> None:
    kept, faults = faults_of_repeats(0)  # the control: the same rounds with the heap left as glibc sets it
    assert not kept
    assert faults > 2 * PAGES_PER_ROUND


def test_zero_changes_nothing() -> None:
    assert keep_freed_memory(0) is False


@pytest.mark.parametrize("megabytes", [-1, 1025])
def test_the_setting_is_bounded(megabytes: int) -> None:
    with pytest.raises(ValueError, match="heap_keep_mb"):
        Settings(heap_keep_mb=megabytes)
