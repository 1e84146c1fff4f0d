"""The one retry policy: delays, limits, book-keeping, stop, classification by SQLSTATE."""

from __future__ import annotations

import random
import threading

import psycopg
import pytest
from psycopg import errors

from dbmazz.errors import SetupError, SinkError, SourceConnectionError
from dbmazz.retry import (
    Attempts,
    Cancelled,
    GaveUp,
    RetryPolicy,
    Waiter,
    call,
    is_contention,
    is_transient,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_by_the_multiplier_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=10.0, multiplier=3.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert RetryPolicy(base_delay=1.0, max_delay=5.0, jitter=0.0).delay(10_000) == 5.0


def test_jitter_stays_within_its_share_of_the_delay() -> None:
    policy = RetryPolicy(base_delay=4.0, max_delay=4.0, jitter=0.25)
    rng = random.Random(7)
    delays = [policy.delay(1, rng) for _ in range(200)]
    assert min(delays) >= 3.0 and max(delays) <= 4.0
    assert len(set(delays)) > 100  # random, not constant


def test_limits_by_attempts_and_by_elapsed_time() -> None:
    assert RetryPolicy(max_attempts=3, max_elapsed=None).allows(2, 1e9)
    assert not RetryPolicy(max_attempts=3, max_elapsed=None).allows(3, 0.0)
    assert not RetryPolicy(max_attempts=None, max_elapsed=5.0).allows(100, 5.0)
    assert RetryPolicy.forever().allows(10**9, 1e12)
    assert RetryPolicy.forever().unbounded and not RetryPolicy().unbounded
    assert not RetryPolicy.none().allows(1, 0.0)


def test_attempts_report_the_real_count_and_time_since_the_first() -> None:
    clock = Clock()
    slept: list[float] = []
    attempts = Attempts(RetryPolicy(max_attempts=None, max_elapsed=60.0, jitter=0.0),
                        Waiter(sleep=slept.append), clock=clock)
    clock.now += 50  # created long before the first attempt: not counted
    attempts.start()
    clock.now += 30  # the attempt itself takes time: counted
    attempts.backoff()
    attempts.start()
    clock.now += 67
    assert attempts.summary() == "2 attempts over 97 s"
    assert not attempts.can_retry()  # 97 s > max_elapsed
    assert slept == [0.5]
    attempts.reset()
    assert attempts.count == 0 and attempts.elapsed == 0.0


def test_a_stop_event_wakes_a_long_backoff() -> None:
    stop = threading.Event()
    waiter = Waiter(stop)
    outcome: list[str] = []

    def sleeper() -> None:
        try:
            waiter.wait(3600)
            outcome.append("slept")
        except Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=sleeper)
    thread.start()
    stop.set()
    thread.join(timeout=30)
    assert outcome == ["cancelled"]
    with pytest.raises(Cancelled):
        waiter.wait(0)  # stopped: no further waiting at all


def test_call_retries_transient_errors_until_it_works() -> None:
    failures = [errors.DeadlockDetected("deadlock"), errors.LockNotAvailable("lock timeout")]
    slept: list[float] = []
    retried: list[int] = []

    def action() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    result = call(action, policy=RetryPolicy(jitter=0.0), transient=is_transient,
                  what="test", waiter=Waiter(sleep=slept.append),
                  on_retry=lambda _exc, attempts: retried.append(attempts.count))
    assert result == "done"
    assert slept == [0.5, 1.0] and retried == [1, 2]


def test_call_gives_up_with_the_last_error_and_the_book() -> None:
    calls = 0

    def action() -> None:
        nonlocal calls
        calls += 1
        raise errors.SerializationFailure(f"conflict {calls}")

    with pytest.raises(GaveUp) as caught:
        call(action, policy=RetryPolicy(max_attempts=3, jitter=0.0), transient=is_transient,
             what="test", waiter=Waiter(sleep=lambda _s: None))
    assert calls == 3 and caught.value.attempts.count == 3
    assert str(caught.value.last) == "conflict 3" and not caught.value.cancelled


def test_call_lets_other_errors_through_at_once() -> None:
    calls = 0

    def action() -> None:
        nonlocal calls
        calls += 1
        raise errors.UniqueViolation("duplicate")

    with pytest.raises(errors.UniqueViolation):
        call(action, policy=RetryPolicy(), transient=is_transient, what="test",
             waiter=Waiter(sleep=lambda _s: None))
    assert calls == 1


def test_call_stops_retrying_when_stopped() -> None:
    stop = threading.Event()

    def action() -> None:
        stop.set()  # SIGTERM arrives while the operation fails
        raise errors.AdminShutdown("terminating connection")

    with pytest.raises(GaveUp) as caught:
        call(action, policy=RetryPolicy.forever(), transient=is_transient, what="test",
             waiter=Waiter(stop))
    assert caught.value.cancelled and caught.value.attempts.count == 1


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (errors.DeadlockDetected("x"), True),
        (errors.LockNotAvailable("x"), True),
        (errors.SerializationFailure("x"), True),
        (errors.AdminShutdown("x"), True),
        (errors.CannotConnectNow("x"), True),
        (errors.ConnectionFailure("x"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (errors.UniqueViolation("x"), False),
        (errors.InsufficientPrivilege("x"), False),
        (errors.QueryCanceled("x"), False),
        (SourceConnectionError("gone"), True),
        (SinkError("rejected", retryable=False), False),
        (SetupError("bad"), False),
        (ValueError("x"), False),
    ],
)
def test_transient_by_sqlstate_or_by_the_error_itself(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_contention_is_deadlock_lock_timeout_or_serialization() -> None:
    assert is_contention(errors.DeadlockDetected("x"))
    assert is_contention(errors.LockNotAvailable("x"))
    assert is_contention(errors.SerializationFailure("x"))
    assert not is_contention(errors.AdminShutdown("x"))
    assert not is_contention(psycopg.OperationalError("x"))


def test_a_stop_condition_without_an_event_ends_the_wait() -> None:
    """Owners with only a predicate (the snapshot loader) are woken by it as well."""
    flag = threading.Event()  # stands for the owner's own state, read through a predicate
    waiter = Waiter(stopping=flag.is_set, poll_s=0.01)
    outcome: list[str] = []

    def sleeper() -> None:
        try:
            waiter.wait(3600)
            outcome.append("slept")
        except Cancelled:
            outcome.append("cancelled")

    thread = threading.Thread(target=sleeper)
    thread.start()
    flag.set()
    thread.join(timeout=30)
    assert outcome == ["cancelled"] and waiter.cancelled
