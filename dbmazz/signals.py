"""Waiting, in the main thread, for an event a signal handler may set.

CPython runs a signal handler in the main thread between bytecodes, and one of those points
is right after ``threading.Event.wait`` re-acquired the event's internal lock: a handler
that then calls ``event.set()`` waits for a lock its own thread holds, forever (``dbmazz
demo`` hung so on SIGTERM). :func:`wait_for` sleeps in short slices and reads the flag with
``is_set()``, which takes no lock, so a handler may set the event at any moment.
"""

from __future__ import annotations

import threading
import time

#: Longest sleep between two looks at the flag (how late a set event is noticed).
SLICE_S = 0.05


def wait_for(event: threading.Event, timeout: float | None = None) -> bool:
    """Like ``event.wait(timeout)``, without ever holding the event's lock."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not event.is_set():
        if deadline is None:
            time.sleep(SLICE_S)
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(left, SLICE_S))
    return True
