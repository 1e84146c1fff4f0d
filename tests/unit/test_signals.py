"""Waiting, in the thread signal handlers run in, for what a handler may cause: an event it
sets, threads it makes end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from dbmazz.signals import join, wait_for

ROOT = Path(__file__).resolve().parents[2]

#: A signal handler sets the event every millisecond while the main thread waits for it
#: in short waits: with ``event.wait`` this deadlocks within a second (the handler runs
#: right after the wait re-acquired the event's lock); with ``wait_for`` it must not. The
#: handler arms the next alarm itself: an interval timer would run it inside itself
#: whenever one run takes longer than the interval (a loaded machine), until the
#: recursion limit.
_HAMMER = textwrap.dedent("""
    import signal, threading, time
    from dbmazz.signals import wait_for

    event = threading.Event()
    calls = [0]
    end = time.monotonic() + 1.0

    def handler(signum, frame):
        calls[0] += 1
        event.set()
        if time.monotonic() < end:
            signal.setitimer(signal.ITIMER_REAL, 0.001)

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001)
    waits = 0
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


#: The engine runs until drained; a helper thread waits until the main thread is inside
#: ``Engine.wait`` and then has SIGTERM delivered to itself, not to the main thread. The
#: handler (drain) must still run while the main thread waits: with an untimed
#: ``Thread.join`` it ran only when the join ended by itself, i.e. never here.
_SIGNAL_ELSEWHERE = textwrap.dedent("""
    import signal, sys, tempfile, threading, time
    from pathlib import Path
    from tests.scripted import scripted_engine

    engine, script, sink = scripted_engine(Path(tempfile.mkdtemp()))
    signal.signal(signal.SIGTERM, lambda *_: engine.drain())
    engine.start()
    end_lsn = script.insert(3)
    main = threading.main_thread().ident

    def in_wait():
        frame = sys._current_frames().get(main)
        while frame is not None:
            if frame.f_code.co_name == "wait" and "engine" in frame.f_code.co_filename:
                return True
            frame = frame.f_back
        return False

    def signal_this_thread():
        while not in_wait():
            time.sleep(0.01)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=signal_this_thread).start()
    engine.wait()
    print(engine.durable_lsn >= end_lsn)
""")


def test_engine_wait_runs_a_signal_handler_while_it_waits() -> None:
    # The timeout only detects the hang: drained, the script ends within a second.
    done = subprocess.run([sys.executable, "-c", _SIGNAL_ELSEWHERE], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True"]


def test_join_returns_whether_the_thread_ended() -> None:
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    assert join(worker, 0.01) is False
    release.set()
    assert join(worker) is True
    assert join(worker, 0) is True
