"""Waiting, in the main thread, for what a signal handler may cause.

CPython runs a signal handler in the main thread between bytecodes, and one of those points
is right after ``threading.Event.wait`` re-acquired the event's internal lock: a handler
that then calls ``event.set()`` waits for a lock its own thread holds, forever (``dbmazz
demo`` hung so on SIGTERM). :func:`wait_for` sleeps in short slices and reads the flag with
``is_set()``, which takes no lock, so a handler may set the event at any moment.

A handler also runs only once the main thread comes back to bytecode: a signal the kernel
hands to another thread does not wake a main thread blocked in an untimed
``Thread.join()``, so a drain asked for by SIGTERM would wait for the join to end by
itself. :func:`join` joins in the same slices.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: Longest sleep between two looks at the flag (how late a set event is noticed).
SLICE_S = 0.05


def wait_for(event: threading.Event, timeout: float | None = None) -> bool:
    """Like ``event.wait(timeout)``, without ever holding the event's lock."""
    return _in_slices(event.is_set, time.sleep, timeout)


def join(thread: threading.Thread, timeout: float | None = None) -> bool:
    """Like ``thread.join(timeout)``, coming back to bytecode every slice; True when the
    thread ended."""
    return _in_slices(lambda: not thread.is_alive(), thread.join, timeout)


def _in_slices(done: Callable[[], bool], pause: Callable[[float], object],
               timeout: float | None) -> bool:
    """``pause`` for at most a slice at a time until ``done()`` (True) or ``timeout``
    passed (False)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done():
        left = SLICE_S if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        pause(min(left, SLICE_S))
    return True
