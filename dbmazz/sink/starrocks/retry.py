"""Exponential backoff with jitter, bounded by attempts and elapsed time (or unbounded).

The sink retries only operations that labels make idempotent, so the policy decides how
long to wait, never whether a retry is safe. Sleeping goes through a :class:`Waiter` so an
engine shutting down can interrupt it and tests can run without real delays.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    #: Attempts in total (first try included); None = no limit.
    max_attempts: int | None = 8
    #: Give up once this many seconds have passed since the first attempt; None = no limit.
    max_elapsed: float | None = 300.0
    base_delay: float = 0.5
    max_delay: float = 30.0
    #: Share of each delay that is random (1.0 = "full jitter"): spreads retries of many
    #: workers hitting the same overloaded BE.
    jitter: float = 0.5

    @classmethod
    def forever(cls, base_delay: float = 1.0, max_delay: float = 60.0) -> RetryPolicy:
        """Retry until it works: for outages where the engine prefers waiting to failing."""
        return cls(max_attempts=None, max_elapsed=None, base_delay=base_delay, max_delay=max_delay)

    @classmethod
    def none(cls) -> RetryPolicy:
        return cls(max_attempts=1, max_elapsed=None, base_delay=0.0, max_delay=0.0)

    @property
    def unbounded(self) -> bool:
        return self.max_attempts is None and self.max_elapsed is None

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** min(attempt - 1, 30)))
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
    """Sleeps between attempts; ``cancel()`` wakes every sleeper, which then raises."""

    def __init__(self, sleep: Callable[[float], None] | None = None) -> None:
        self._cancel = threading.Event()
        self._sleep = sleep

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def wait(self, seconds: float) -> None:
        if self._cancel.is_set():
            raise Cancelled()
        if self._sleep is not None:
            self._sleep(seconds)
        elif seconds > 0:
            self._cancel.wait(seconds)
        if self._cancel.is_set():
            raise Cancelled()


class Attempts:
    """Book-keeping of one retried operation: ``while attempts.next(): ...``."""

    def __init__(self, policy: RetryPolicy, waiter: Waiter) -> None:
        self.policy = policy
        self.waiter = waiter
        self.count = 0
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def can_retry(self) -> bool:
        return self.policy.allows(self.count, self.elapsed)

    def backoff(self) -> None:
        """Wait before the next attempt (the caller checked :meth:`can_retry`)."""
        self.waiter.wait(self.policy.delay(self.count))

    def start(self) -> int:
        """Count one attempt; returns its 1-based number."""
        self.count += 1
        return self.count
