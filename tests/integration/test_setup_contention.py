"""Setup on a busy source: replica identity changes take one table per transaction with a
lock timeout, and contention or a lost connection is retried under the retry policy.

Deterministic: the "application" is a second connection holding locks; the test releases
them once it sees setup waiting in pg_locks, never after a sleep.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from dbmazz.engine.service import EngineService
from dbmazz.errors import SetupError
from dbmazz.retry import RetryPolicy
from dbmazz.source.setup import SourceSetup, setup_source
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config
from tests.integration._replication_helpers import wait_for

FAST = RetryPolicy(max_attempts=None, max_elapsed=None, base_delay=0.05, max_delay=0.2)


class Setup:
    """setup_source on a thread: its result or error, once it ended."""

    def __init__(self, run: Callable[[], SourceSetup]) -> None:
        self.result: SourceSetup | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(run,), daemon=True)
        self._thread.start()

    def _run(self, run: Callable[[], SourceSetup]) -> None:
        try:
            self.result = run()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> SourceSetup:
        self._thread.join(timeout=120)
        assert not self._thread.is_alive(), "setup did not finish"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def tables(pg_db: Database) -> Database:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    pg_db.execute("CREATE TABLE b (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO a VALUES (1, 'x')")
    pg_db.execute("INSERT INTO b VALUES (1, 'x')")
    return pg_db


@contextmanager
def application(db: Database) -> Iterator[psycopg.Connection]:
    """An application transaction; bounded waits so a broken setup cannot hang the test."""
    with db.connect(autocommit=False) as conn:
        conn.execute("SET lock_timeout = '60s'")
        yield conn
        conn.rollback()


def waiting_on(db: Database, table: str) -> set[int]:
    """Backends waiting for a lock on ``table``."""
    rows = db.query("SELECT pid FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                    (table,))
    return {int(str(pid)) for (pid,) in rows}


def identity(db: Database, table: str) -> str:
    return str(db.query("SELECT relreplident::text FROM pg_class WHERE oid = %s::regclass",
                        (table,))[0][0])


def published(db: Database) -> set[str]:
    return {str(t) for (t,) in db.query(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'pub'")}


def test_setup_does_not_deadlock_with_an_application_writing_both_tables(
    tables: Database,
) -> None:
    """The application holds b and then writes a; setup changes a, then b. Holding a's
    ACCESS EXCLUSIVE lock while waiting for b (one transaction for every table) closes a
    cycle: PostgreSQL aborts one of the two with a deadlock."""
    with application(tables) as app:
        app.execute("UPDATE b SET v = 'app' WHERE id = 1")  # the application holds b
        setup = Setup(lambda: setup_source(tables.dsn, ["a", "b"], "pub", "s1",
                                           lock_timeout_s=60, retry_policy=FAST))
        wait_for(lambda: bool(waiting_on(tables, "b")) or not setup.running, 60,
                 "setup to wait for the lock on b")
        assert setup.running, f"setup ended early: {setup.error!r}"
        # Setup committed a before it waits for b, so the application's write of a goes
        # through instead of closing a cycle (a deadlock aborts setup or this insert).
        app.execute("INSERT INTO a VALUES (2, 'app')")
        assert setup.running, f"setup failed: {setup.error!r}"
        app.commit()
    result = setup.join()  # today's one-transaction setup: DeadlockDetected
    assert set(result.replica_identity_changed) == {"public.a", "public.b"}
    assert identity(tables, "a") == identity(tables, "b") == "f"
    assert published(tables) == {"a", "b"}
    assert tables.query("SELECT v FROM a WHERE id = 2") == [("app",)]


def test_lock_timeouts_are_retried_until_the_application_lets_go(
    tables: Database, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dbmazz.setup")
    with application(tables) as app:
        app.execute("LOCK TABLE b IN ACCESS SHARE MODE")
        setup = Setup(lambda: setup_source(tables.dsn, ["a", "b"], "pub", "s1",
                                           lock_timeout_s=0.05, retry_policy=FAST))
        wait_for(lambda: sum("retrying" in r.getMessage() for r in caplog.records) >= 2
                 or not setup.running, 60, "setup to retry the lock timeout twice")
        assert setup.running, f"setup ended early: {setup.error!r}"
        app.commit()
    setup.join()
    assert identity(tables, "b") == "f"
    assert published(tables) == {"a", "b"}
    retried = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert all("REPLICA IDENTITY FULL on public.b" in m for m in retried)
    assert all("lock timeout" in m for m in retried)


def test_a_lost_setup_connection_is_opened_again_and_retried(tables: Database) -> None:
    with application(tables) as app:
        app.execute("LOCK TABLE b IN ACCESS SHARE MODE")
        setup = Setup(lambda: setup_source(tables.dsn, ["a", "b"], "pub", "s1",
                                           lock_timeout_s=60, retry_policy=FAST))
        wait_for(lambda: bool(waiting_on(tables, "b")) or not setup.running, 60,
                 "setup to wait for the lock on b")
        (first,) = waiting_on(tables, "b")
        tables.execute("SELECT pg_terminate_backend(%s)", (first,))  # connection lost
        wait_for(lambda: bool(waiting_on(tables, "b") - {first}) or not setup.running, 60,
                 "setup to wait for b again on a new connection")
        assert setup.running, f"setup ended: {setup.error!r}"
        app.commit()
    setup.join()
    assert identity(tables, "b") == "f"
    assert published(tables) == {"a", "b"}


def test_setup_gives_up_saying_what_it_retried_and_what_to_do(tables: Database) -> None:
    with application(tables) as app:
        app.execute("LOCK TABLE b IN ACCESS SHARE MODE")
        with pytest.raises(SetupError) as caught:
            setup_source(tables.dsn, ["a", "b"], "pub", "s1", lock_timeout_s=0.05,
                         retry_policy=RetryPolicy(max_attempts=3, max_elapsed=None,
                                                  base_delay=0.01))
    error = caught.value
    assert "setting REPLICA IDENTITY FULL on public.b failed after 3 attempts" in error.message
    assert "contention" in error.message and "lock timeout" in error.message
    assert error.hint is not None
    assert "quieter time" in error.hint and "SETUP_LOCK_TIMEOUT_S" in error.hint
    assert "REPLICA_IDENTITY=keep" in error.hint
    # Nothing half done is lost: a is changed, and setup runs again once b is free.
    assert identity(tables, "a") == "f" and identity(tables, "b") == "d"
    setup_source(tables.dsn, ["a", "b"], "pub", "s1")
    assert identity(tables, "b") == "f" and published(tables) == {"a", "b"}


def test_a_stop_during_setup_retries_ends_the_service_promptly(
    tables: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGTERM (service.stop) while setup backs off: no waiting out the retry policy."""
    caplog.set_level(logging.WARNING, logger="dbmazz.setup")
    config = duckdb_config(tables, tmp_path, ["public.a", "public.b"], snapshot="never",
                           setup_lock_timeout_s=0.05)
    with application(tables) as app:
        app.execute("LOCK TABLE b IN ACCESS SHARE MODE")
        service = EngineService(config)
        service.start()
        try:
            wait_for(lambda: any("retrying" in r.getMessage() for r in caplog.records)
                     or service.wait(0), 60, "setup to retry")
            assert not service.wait(0), f"setup ended early: {service.error}"
            outcome = service.stop(timeout=10)  # the policy would retry for 15-30 s more
            assert outcome.completed, outcome.message
        finally:
            service.stop(timeout=60)
    assert identity(tables, "b") == "d"  # nothing half done: setup runs again later
