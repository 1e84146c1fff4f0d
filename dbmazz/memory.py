"""Allocator settings that keep the process's footprint near what it actually holds.

glibc malloc serves the numpy WAL buffers and the Python ``bytes`` of Stream Load bodies
(tens of MB per flush). Its mmap threshold starts at 128 KiB but rises to the size of
every large block freed (up to 32 MiB), after which bodies and joined WAL buffers are
carved from the heap, which glibc rarely gives back: the peak RSS of the end-to-end
benchmark (docs/benchmarks.md) was ~50 MB higher for it. A fixed threshold of 4 MiB maps
each large buffer on its own and unmaps it when freed; smaller ones (the reader's chunks
of ≤ 1 MiB) stay on the heap.

Best effort: without glibc's ``mallopt`` nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

log = logging.getLogger(__name__)

#: Allocations at least this large are mmapped by glibc (and unmapped when freed).
MMAP_THRESHOLD = 4 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)

_lock = threading.Lock()
_tuned = False


def tune_allocators() -> bool:
    """Apply the settings once per process; whether they are in effect."""
    global _tuned
    with _lock:
        if not _tuned:
            _tuned = _tune_glibc()
        return _tuned


def _tune_glibc() -> bool:
    if not sys.platform.startswith("linux"):  # pragma: no cover - platform
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:  # pragma: no cover - refused
        log.debug("mallopt(M_MMAP_THRESHOLD) refused")
        return False
    return True
