"""Checkpoint, then confirm — also across PostgreSQL restarts (invariant 1).

The slot's confirmed_flush_lsn must never cover a transaction the checkpoint table does
not hold. After a restart the checkpoint connection is stale: the write is retried on a
new connection before the confirmation. While it cannot be written at all, the
confirmation is held and the stream closed (a fast shutdown still completes), and a stop
ends the engine without confirming.

Ground truth is an observer slot of the test's own (every committed transaction's end
LSN); every wait is a bounded poll on observable state.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine, RunState
from dbmazz.retry import RetryPolicy
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster
from tests.e2e.harness import assert_replicated, duckdb_config, mark, wait_until_loaded
from tests.reliability.helpers import Observer, checkpoint, poll, running, slot_position

SLOT = "dbmazz_e2e"  # duckdb_config's names
TABLES = {"public.items": ["id"]}


@pytest.fixture
def observed(request: pytest.FixtureRequest) -> Iterator[tuple[Database, Observer]]:
    """A database with table items and an observer slot created before any write."""
    if "cluster" in request.fixturenames:
        cluster: PostgresCluster = request.getfixturevalue("cluster")
        db = Database(cluster, cluster.create_database())
    else:
        db = request.getfixturevalue("pg_db")
    db.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, v int NOT NULL, note text)")
    observer = Observer(db, "observer", TABLES)
    try:
        yield db, observer
    finally:
        observer.drop()


@pytest.fixture
def cluster(private_pg_cluster: PostgresCluster) -> PostgresCluster:
    return private_pg_cluster


def _config(db: Database, tmp_path: Path) -> Config:
    # No heartbeats: nothing but the test's transactions moves the slot.
    return duckdb_config(db, tmp_path, list(TABLES), heartbeat_interval_s=0, snapshot="never")


def _write(db: Database, observer: Observer, first: int, rows: int = 100) -> int:
    """One transaction inserting ``rows`` items; returns its commit end LSN."""
    db.execute("INSERT INTO items SELECT g, 0, 'x' FROM generate_series(%s::bigint, %s::bigint) g",
               (first, first + rows - 1))
    observer.consume()
    return observer.ends[-1]


def _slot_lsn(db: Database) -> int:
    position = slot_position(db, SLOT)
    return position[0] if position else 0


def _never_behind(db: Database, observer: Observer) -> int:
    """Sample the slot, then the checkpoint; fail if the slot confirmed a transaction the
    checkpoint does not hold (both only grow, so reading the slot first is conservative).
    Returns the slot's position."""
    slot = _slot_lsn(db)
    ckpt = checkpoint(db, SLOT)
    ends = observer.ends
    behind = ends[bisect.bisect_right(ends, ckpt):bisect.bisect_right(ends, slot)]
    assert not behind, (
        f"slot confirmed {slot:X}, checkpoint only {ckpt:X}: transactions ending "
        f"{[f'{e:X}' for e in behind]} are confirmed to PostgreSQL but not checkpointed")
    return slot


def _confirmed(db: Database, observer: Observer, end: int, engine: Engine) -> None:
    poll(lambda: _never_behind(db, observer) >= end, f"the slot to confirm {end:X}",
         timeout_s=180,
         abort=lambda: str(engine.progress.last_error) if engine.progress.state
         == RunState.FAILED else None)
    assert checkpoint(db, SLOT) >= end


def test_checkpoint_is_never_behind_the_slot_across_postgres_restarts(
        cluster: PostgresCluster, observed: tuple[Database, Observer], tmp_path: Path) -> None:
    db, observer = observed
    config = _config(db, tmp_path)
    sink = DuckDBSink(config.duckdb_path)
    try:
        with running(build_live_engine(config, sink=sink)) as engine:
            for round_ in range(3):
                # The first batch after a restart meets a stale checkpoint connection.
                end = _write(db, observer, first=round_ * 1000 + 1)
                _confirmed(db, observer, end, engine)
                cluster.restart("fast")
            end = _write(db, observer, first=10_000)
            _confirmed(db, observer, end, engine)
            assert engine.progress.state == RunState.RUNNING
    finally:
        sink.close()


def _block_checkpoint_writes(db: Database) -> object:
    """From now on the checkpoint cannot be written: new sessions of the database give up
    on a lock after 50 ms, a session of the test holds the checkpoint table, and the
    engine's checkpoint connection is cut (its next one gets the lock timeout). Returns the
    lock-holding connection (close it to let go)."""
    db.execute(f'ALTER DATABASE "{db.name}" SET lock_timeout = 50')
    holder = db.connect(autocommit=False)
    holder.execute("LOCK TABLE public.dbmazz_checkpoints IN ACCESS EXCLUSIVE MODE")
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE datname = current_database() AND application_name = 'dbmazz-checkpoint'")
    return holder


def _held(engine: Engine, db: Database) -> bool:
    """The engine gave up writing for now: it closed the stream (no walsender)."""
    position = slot_position(db, SLOT)
    return (position is not None and position[1] is None
            and "checkpoint" in str(engine.progress.last_error))


def test_confirmation_is_held_while_the_checkpoint_cannot_be_written_and_a_fast_shutdown_completes(
        cluster: PostgresCluster, observed: tuple[Database, Observer], tmp_path: Path) -> None:
    db, observer = observed
    config = _config(db, tmp_path)
    sink = DuckDBSink(config.duckdb_path)
    try:
        with running(build_live_engine(config, sink=sink)) as engine:
            first = _write(db, observer, first=1)
            _confirmed(db, observer, first, engine)
            holder = _block_checkpoint_writes(db)
            end = _write(db, observer, first=1001)
            poll(lambda: _held(engine, db), "the engine to hold the confirmation", timeout_s=120,
                 abort=lambda: "it confirmed past the unwritten checkpoint"
                 if _slot_lsn(db) >= end else None)
            # Loaded into the sink, yet neither confirmed nor counted as durable.
            poll(lambda: sink.query("SELECT count(*) FROM public.items")[0][0] == 200,
                 "the second batch in the sink")
            assert first <= _slot_lsn(db) < end
            assert engine.durable_lsn < end
            # A fast shutdown does not wait for a confirmation that cannot come.
            cluster.stop("fast")
            assert not (cluster.datadir / "postmaster.pid").exists(), "fast shutdown hung"
            del holder  # its session ended with the server
            cluster.start()
            db.execute(f'ALTER DATABASE "{db.name}" RESET lock_timeout')
            _confirmed(db, observer, end, engine)
            assert engine.durable_lsn >= end
            assert engine.progress.state == RunState.RUNNING
    finally:
        sink.close()


def test_a_stop_while_the_confirmation_is_held_leaves_the_slot_behind(
        observed: tuple[Database, Observer], tmp_path: Path) -> None:
    db, observer = observed
    config = _config(db, tmp_path)
    sink = DuckDBSink(config.duckdb_path)
    try:
        engine = build_live_engine(config, sink=sink)
        with running(engine):
            first = _write(db, observer, first=1)
            _confirmed(db, observer, first, engine)
            holder = _block_checkpoint_writes(db)
            end = _write(db, observer, first=1001)
            poll(lambda: _held(engine, db), "the engine to hold the confirmation", timeout_s=120,
                 abort=lambda: "it confirmed past the unwritten checkpoint"
                 if _slot_lsn(db) >= end else None)
            engine.stop()
            assert engine.wait(60), "the engine did not stop while holding"
        holder.close()  # type: ignore[attr-defined]
        db.execute(f'ALTER DATABASE "{db.name}" RESET lock_timeout')
        assert first <= _slot_lsn(db) < end
        assert first <= checkpoint(db, SLOT) < end
        # The next run resends the held transaction and confirms it after checkpointing.
        with running(build_live_engine(config, sink=sink)) as again:
            _confirmed(db, observer, end, again)
        assert sink.query("SELECT count(*) FROM public.items")[0][0] == 200
    finally:
        sink.close()


def test_lost_source_fails_the_engine_only_when_the_reconnect_policy_gives_up(
        cluster: PostgresCluster, observed: tuple[Database, Observer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """The default policy reconnects forever; a bounded one ends in FAILED, and the
    message says what was retried, how often and for how long."""
    caplog.set_level(logging.WARNING, logger="dbmazz")
    db, observer = observed
    config = _config(db, tmp_path)
    sink = DuckDBSink(config.duckdb_path)
    try:
        engine = build_live_engine(config, sink=sink)
        engine.settings.reconnect = RetryPolicy(max_attempts=3, max_elapsed=None,
                                                base_delay=0.05, max_delay=0.1)
        with running(engine):
            end = _write(db, observer, first=1)
            _confirmed(db, observer, end, engine)
            cluster.stop("fast")
            try:
                poll(lambda: engine.progress.state == RunState.FAILED, "the engine to fail",
                     timeout_s=120)
            finally:
                cluster.start()
            error = str(engine.progress.last_error)
            assert "gave up reconnecting after 3 attempts over" in error, error
            retried = [r for r in caplog.records if "reconnecting in" in r.getMessage()]
            assert len(retried) == 2, [r.getMessage() for r in retried]
    finally:
        sink.close()


def test_a_checkpoint_table_dropped_by_hand_is_made_again(pg_db: Database,
                                                          tmp_path: Path) -> None:
    """``DROP TABLE dbmazz_checkpoints`` while dbmazz runs: the next checkpoint makes it
    again (the slot is still the pipeline's) instead of failing the engine on a missing
    table, and the confirmation still follows it."""
    pg_db.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, v int NOT NULL, note text)")
    config = duckdb_config(pg_db, tmp_path, list(TABLES), heartbeat_interval_s=0,
                           snapshot="never")
    sink = DuckDBSink(config.duckdb_path)
    with running(build_live_engine(config, sink=sink)) as engine:
        pg_db.execute("INSERT INTO items VALUES (1, 0, 'before')")
        wait_until_loaded(engine, mark(pg_db))
        pg_db.execute("DROP TABLE dbmazz_checkpoints")
        pg_db.execute("INSERT INTO items VALUES (2, 0, 'after')")
        wait_until_loaded(engine, mark(pg_db))
        assert engine.progress.state == RunState.RUNNING
        assert checkpoint(pg_db, SLOT) == engine.durable_lsn
    assert_replicated(pg_db, sink, TABLES)
    sink.close()
