"""Waiting for an event a signal handler sets, in the thread the handler runs in."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from dbmazz.signals import wait_for

#: A signal handler sets the event every millisecond while the main thread waits for it
#: in short waits: with ``event.wait`` this deadlocks within a second (the handler runs
#: right after the wait re-acquired the event's lock); with ``wait_for`` it must not.
_HAMMER = textwrap.dedent("""
    import signal, threading, time
    from dbmazz.signals import wait_for

    event = threading.Event()
    calls = [0]

    def handler(signum, frame):
        calls[0] += 1
        event.set()

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    waits = 0
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        wait_for(event, 0.0005)
        waits += 1
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(calls[0], waits)
""")


def test_a_signal_handler_may_set_the_event_while_the_main_thread_waits_for_it() -> None:
    # The timeout only detects a hang (the script itself runs for one second).
    done = subprocess.run([sys.executable, "-c", _HAMMER], capture_output=True, text=True,
                          timeout=120, check=True)
    calls, waits = map(int, done.stdout.split())
    assert calls > 100 and waits > 100


def test_wait_for_returns_whether_the_event_was_set() -> None:
    event = threading.Event()
    assert wait_for(event, 0.01) is False
    setter = threading.Timer(0.05, event.set)
    setter.start()
    assert wait_for(event) is True
    assert wait_for(event, 0) is True
    setter.join()
