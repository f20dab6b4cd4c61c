"""The serving process's memory: how much freed memory its C heap keeps for the next request (glibc's malloc
only), and Python's cyclic collector around start-up.

glibc serves an allocation of 128 KiB or more with fresh pages from the kernel and hands them back when it
is freed, raising that threshold only as large blocks come and go. A large request's body, its parsed
arrays, its tensors and its rendered answer are each megabytes, made and freed once per request, so each
request would fault in thousands of fresh, zeroed pages (README, Performance). `keep_freed_memory` fixes
both thresholds instead: blocks below 32 MiB (glibc's largest threshold) come from the heap, and up to
`TAPESERVE_HEAP_KEEP_MB` of free memory stays at the heap's top for the next request.

Start-up makes millions of objects that live as long as the process (TensorFlow's modules, the app, the
compiled functions of the warm-ups, the models), and the cyclic collector walks the growing heap of them
again and again while they are made: about a third of TensorFlow's import and a sixth of the warm-ups.
`pause_collector` stops it before the serving stack is imported; `settle_collector`, once everything is
warm, moves everything out of the collector's sight (so the collections a large request triggers later walk
only its own objects) and turns it on again. Start-up leaves few cycles behind (about 4,500 unreachable
objects among 600,000 with the example model), so they are frozen with the rest rather than found by a
full collection, which would take 0.3–0.4 s on the way to ready.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import threading

M_TRIM_THRESHOLD = -1
"""glibc's `mallopt` parameter: free memory at the heap's top beyond this goes back to the kernel."""

M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter: blocks this large or larger get pages of their own, returned when freed."""

LARGEST_MMAP_THRESHOLD = 32 * 1024 * 1024
"""The largest `M_MMAP_THRESHOLD` glibc takes on a 64-bit machine."""


def keep_freed_memory(megabytes: int) -> bool:
    """Have glibc keep up to `megabytes` of freed memory, and take blocks under 32 MiB (or under `megabytes`,
    if less) from its heap; True when both took effect. 0, or a C library other than glibc, changes
    nothing and returns False."""
    if megabytes <= 0 or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's own symbols, glibc's among them
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    kept = megabytes * 1024 * 1024
    # mallopt answers 1 on success; setting either threshold also stops glibc's own adjustment of both
    return bool(mallopt(M_MMAP_THRESHOLD, min(kept, LARGEST_MMAP_THRESHOLD)) and mallopt(M_TRIM_THRESHOLD, kept))


_paused = threading.Event()
"""Set while the collector is off because `pause_collector` turned it off."""


def pause_collector() -> None:
    """Stop the cyclic collector for start-up, until `settle_collector`."""
    if gc.isenabled():
        gc.disable()
        _paused.set()


def settle_collector() -> None:
    """Start-up is over: freeze what the process holds now, and turn the collector back on if
    `pause_collector` stopped it."""
    gc.freeze()
    if _paused.is_set():
        gc.enable()
        _paused.clear()
