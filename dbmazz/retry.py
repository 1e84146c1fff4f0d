"""One retry policy for every loop that waits and tries again.

A :class:`RetryPolicy` says how long to wait between attempts (exponential backoff with
jitter) and when to give up (attempts, elapsed time, or never); it never decides whether a
retry is *safe* — the caller does, for the operation it retries. :class:`Attempts` keeps
the book of one retried operation (how many attempts, since when), so a final error reports
the real count and the real time since the first attempt. Waiting goes through a
:class:`Waiter` bound to a stop :class:`threading.Event`: an engine shutting down (SIGTERM)
wakes every sleeper at once, which then raises :class:`Cancelled`.

:func:`is_transient` classifies PostgreSQL errors by SQLSTATE: contention (deadlock, lock
timeout, serialization failure), connection loss and a server shutting down or starting up
may succeed when tried again; everything else is the caller's to report.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg

from dbmazz.errors import DbmazzError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Attempts in total (first try included); None = no limit.
    max_attempts: int | None = 8
    #: Give up once this many seconds have passed since the first attempt; None = no limit.
    max_elapsed: float | None = 300.0
    #: Delay after the first failed attempt (before jitter).
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: Each further delay is the previous one times this (up to ``max_delay``).
    multiplier: float = 2.0
    #: Share of each delay that is random (1.0 = "full jitter", 0 = none): spreads the
    #: retries of many workers hitting the same overloaded server.
    jitter: float = 0.5

    @classmethod
    def forever(cls, base_delay: float = 1.0, max_delay: float = 60.0,
                jitter: float = 0.5) -> RetryPolicy:
        """Retry until it works: for outages where the engine prefers waiting to failing."""
        return cls(max_attempts=None, max_elapsed=None, base_delay=base_delay,
                   max_delay=max_delay, jitter=jitter)

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1, max_elapsed=None, base_delay=0.0, max_delay=0.0)

    @property
    def unbounded(self) -> bool:
        return self.max_attempts is None and self.max_elapsed is None

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 64)
        try:
            ceiling = min(self.max_delay, self.base_delay * self.multiplier ** exponent)
        except OverflowError:
            ceiling = self.max_delay
        spread = ceiling * max(0.0, min(1.0, self.jitter))
        return ceiling - spread + (rng or random).uniform(0.0, spread)

    def allows(self, attempts_done: int, elapsed: float) -> bool:
        """Whether another attempt may follow ``attempts_done`` failed ones."""
        if self.max_attempts is not None and attempts_done >= self.max_attempts:
            return False
        return self.max_elapsed is None or elapsed < self.max_elapsed


class Cancelled(Exception):
    """A wait was interrupted because the owner is shutting down."""


class Waiter:
    """Sleeps between attempts; setting ``stop`` (or ``cancel()``) wakes every sleeper,
    which then raises :class:`Cancelled`. ``stopping`` is a further stop condition for
    owners that have no event (checked every ``poll_s``); ``sleep`` replaces real sleeping
    (tests)."""

    def __init__(self, stop: threading.Event | None = None,
                 sleep: Callable[[float], None] | None = None,
                 stopping: Callable[[], bool] | None = None, poll_s: float = 0.05) -> None:
        self._cancel = stop if stop is not None else threading.Event()
        self._sleep = sleep
        self._stopping = stopping
        self._poll_s = poll_s

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set() or (self._stopping is not None and self._stopping())

    def wait(self, seconds: float) -> None:
        if self.cancelled:
            raise Cancelled()
        if self._sleep is not None:
            self._sleep(seconds)
        elif self._stopping is None:
            if seconds > 0:
                self._cancel.wait(seconds)
        else:
            deadline = time.monotonic() + seconds
            while not self.cancelled and (left := deadline - time.monotonic()) > 0:
                self._cancel.wait(min(left, self._poll_s))
        if self.cancelled:
            raise Cancelled()


class Attempts:
    """Book-keeping of one retried operation: ``start()`` before each attempt; after a
    failure ``can_retry()``, then ``backoff()``. ``elapsed`` runs from the first attempt."""

    def __init__(self, policy: RetryPolicy, waiter: Waiter | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.waiter = waiter or Waiter()
        self.count = 0
        self._clock = clock
        self._first: float | None = None

    @property
    def elapsed(self) -> float:
        return 0.0 if self._first is None else self._clock() - self._first

    def start(self) -> int:
        """Count one attempt; returns its 1-based number."""
        if self._first is None:
            self._first = self._clock()
        self.count += 1
        return self.count

    def can_retry(self) -> bool:
        return self.policy.allows(self.count, self.elapsed)

    def next_delay(self) -> float:
        return self.policy.delay(self.count)

    def backoff(self, delay: float | None = None) -> None:
        """Wait before the next attempt (the caller checked :meth:`can_retry`); raises
        :class:`Cancelled` when stopped meanwhile."""
        self.waiter.wait(self.next_delay() if delay is None else delay)

    def reset(self) -> None:
        """The operation succeeded: a later failure starts a new streak."""
        self.count = 0
        self._first = None

    def summary(self) -> str:
        """'3 attempts over 12 s': the real count and the real time since the first."""
        noun = "attempt" if self.count == 1 else "attempts"
        return f"{self.count} {noun} over {self.elapsed:.0f} s"


class GaveUp(Exception):
    """:func:`call` stopped retrying: ``last`` is the final error, ``attempts`` the book."""

    def __init__(self, last: BaseException, attempts: Attempts, cancelled: bool = False) -> None:
        super().__init__(str(last))
        self.last = last
        self.attempts = attempts
        #: True when a stop interrupted the backoff (not the policy giving up).
        self.cancelled = cancelled


def call(
    action: Callable[[], T],
    *,
    policy: RetryPolicy,
    transient: Callable[[BaseException], bool],
    what: str,
    waiter: Waiter | None = None,
    log: logging.Logger | None = None,
    on_retry: Callable[[BaseException, Attempts], None] | None = None,
) -> T:
    """Run ``action`` until it returns; retry the errors ``transient`` accepts under
    ``policy``. Other errors propagate unchanged; a transient error the policy no longer
    allows (or a stop during the backoff) raises :class:`GaveUp` from it. ``what`` names
    the operation in the log ("setting REPLICA IDENTITY on public.orders")."""
    attempts = Attempts(policy, waiter)
    while True:
        attempts.start()
        try:
            return action()
        except Exception as exc:
            if not transient(exc):
                raise
            if not attempts.can_retry():
                raise GaveUp(exc, attempts) from exc
            delay = attempts.next_delay()
            if on_retry is not None:
                on_retry(exc, attempts)
            (log or logging.getLogger(__name__)).warning(
                "%s failed (attempt %d): %s; retrying in %.1f s", what, attempts.count,
                first_line(exc), delay)
            try:
                attempts.backoff(delay)
            except Cancelled:
                raise GaveUp(exc, attempts, cancelled=True) from exc


#: SQLSTATEs worth another attempt: contention and a server going away or coming back.
TRANSIENT_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovering)
    "53300",  # too_many_connections
})


def is_transient(exc: BaseException) -> bool:
    """Whether trying again may succeed: a :class:`DbmazzError` says so itself
    (``retryable``); a PostgreSQL error by its SQLSTATE (class 08 = connection exception,
    or one of :data:`TRANSIENT_SQLSTATES`); an ``OperationalError`` without a SQLSTATE is
    a connection the client lost (no server reply to classify)."""
    if isinstance(exc, DbmazzError):
        return exc.retryable
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            return isinstance(exc, psycopg.OperationalError)
        return state.startswith("08") or state in TRANSIENT_SQLSTATES
    return False


def is_contention(exc: BaseException) -> bool:
    """Deadlock, lock timeout or serialization failure: other transactions got in the way."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate in ("40001", "40P01", "55P03")


def first_line(exc: BaseException) -> str:
    if isinstance(exc, DbmazzError):
        return exc.message
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
