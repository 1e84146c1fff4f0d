"""Allocator settings: reuse the memory a flush frees instead of faulting in fresh pages.

Every flush allocates and frees the same large blocks again — the joined WAL buffer, decode
temporaries, rendered columns, the Stream Load body (tens of MB). Memory the process hands
back to the kernel comes back as page faults, each zeroing a page: on the 2-vCPU VM of
docs/benchmarks.md that cost a fifth of dbmazz's CPU time, and transparent huge pages made it
worse (a 2 MiB fault that compacts memory first costs milliseconds). Three settings:

* glibc malloc (numpy buffers, ``bytes`` bodies): blocks up to 32 MiB come from the heap and
  the heap keeps up to 32 MiB of free top before trimming. glibc's own default lets its mmap
  threshold creep up to the largest block ever freed and never trims below it, which cost
  ~50 MB of RSS; fixed values bound what is kept while the next flush reuses it.
* Arrow allocates from glibc too (its system pool), under the same thresholds. Its bundled
  pools faulted every flush's rendered columns in again: jemalloc as Arrow configures it
  hands freed pages back at once, and mimalloc asks for huge pages.
* numpy does not ask for huge pages for its large arrays.

Best effort: each setting applies where the platform offers it, and nothing fails without.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

log = logging.getLogger(__name__)

#: Allocations at least this large are mmapped by glibc (and unmapped when freed).
MMAP_THRESHOLD = 32 << 20
#: Free memory at the top of a glibc heap beyond this is given back to the kernel.
TRIM_THRESHOLD = 32 << 20
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_tuned: bool | None = None


def tune_allocators() -> bool:
    """Apply the settings once per process; whether glibc's are in effect."""
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = _tune_glibc()
            _arrow_on_glibc()
            _no_numpy_huge_pages()
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
    for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                         (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        if mallopt(param, value) != 1:  # pragma: no cover - refused
            log.debug("mallopt(%d, %d) refused", param, value)
            return False
    return True


def _arrow_on_glibc() -> None:
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def _no_numpy_huge_pages() -> None:
    import numpy as np

    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)
