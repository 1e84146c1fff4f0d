"""Source faults: PostgreSQL restarted mid-stream, the slot dropped or invalidated behind
dbmazz's back, and idle published tables on a busy server (heartbeats)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import psycopg
import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import RunState
from dbmazz.engine.service import EngineService
from dbmazz.errors import SlotLostError
from dbmazz.lsn import parse_lsn
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.database import SourceDatabase
from dbmazz.source.slots import drop_slot
from dbmazz.state.checkpoint import forget_checkpoint
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster
from tests.e2e.harness import assert_replicated, duckdb_config, mark, wait_until_loaded
from tests.reliability.helpers import (
    checkpoint,
    poll,
    running,
    slot_position,
    walsender_pid,
)

SLOT = "dbmazz_e2e"  # duckdb_config's names
TABLES = {"public.items": ["id"]}


def _items(db: Database) -> None:
    db.execute("CREATE TABLE public.items (id bigint PRIMARY KEY, v int NOT NULL, note text)")


def _private_db(cluster: PostgresCluster) -> Database:
    return Database(cluster, cluster.create_database())


# -- PostgreSQL restarted --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_mid_stream_reconnects_and_resumes(
        private_pg_cluster: PostgresCluster, tmp_path: Path, mode: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """``fast`` is a clean shutdown; ``immediate`` is a crash (recovery on start, and the
    slot may come back behind what was confirmed: resent changes are absorbed)."""
    caplog.set_level(logging.WARNING, logger="dbmazz")
    cluster = private_pg_cluster
    db = _private_db(cluster)
    _items(db)
    config = duckdb_config(db, tmp_path, list(TABLES), flush_rows=5_000, heartbeat_interval_s=1,
                           snapshot="never")
    sink = DuckDBSink(config.duckdb_path)
    with running(build_live_engine(config, sink=sink)) as engine:
        for start in range(0, 200_000, 20_000):  # a backlog of 10 transactions
            db.execute("INSERT INTO items SELECT g, 0, md5(g::text) FROM "
                       "generate_series(%s::bigint, %s::bigint) g", (start + 1, start + 20_000))
        target = mark(db)
        first = walsender_pid(db, SLOT)
        # Restart while the backlog is being loaded: something is durable, not everything.
        poll(lambda: engine.durable_lsn > 0, "the first load", timeout_s=120)
        assert engine.durable_lsn < target
        cluster.restart(mode)
        db.execute("UPDATE items SET v = v + 1 WHERE id % 3 = 0")
        db.execute("DELETE FROM items WHERE id % 10 = 0")
        wait_until_loaded(engine, mark(db), timeout_s=300)
        assert engine.progress.state == RunState.RUNNING
        assert walsender_pid(db, SLOT) not in (None, first)  # a new session
        # Recovered: Status no longer shows the retried error as current.
        assert engine.progress.last_error is None
    assert any("reconnecting in" in r.getMessage() for r in caplog.records)
    assert_replicated(db, sink, TABLES)
    sink.close()


# -- the slot dropped or invalidated ---------------------------------------------------------


def _drop_slot_behind_dbmazz(db: Database, slot: str, *, then: str = "",
                             recreate: bool = False) -> None:
    """Terminate the walsender and drop the slot before dbmazz reconnects (bounded); then
    run ``then`` and, with ``recreate``, create the slot again under the same name."""

    def dropped() -> bool:
        with db.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                return False
            if then:
                conn.execute(then)
            if recreate:
                conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                             (slot,))
        return True

    poll(dropped, "the slot to be dropped" + (" and created again" if recreate else ""),
         every_s=0.01)


def _start_over(db: Database, tmp_path: Path, sink: DuckDBSink) -> None:
    """Run again with SNAPSHOT=initial (a new slot) into ``sink``: the target equals the
    source, and the sink is closed."""
    again = duckdb_config(db, tmp_path, list(TABLES), snapshot="initial",
                          heartbeat_interval_s=0)
    with running(build_live_engine(again, sink=sink)) as engine:
        wait_until_loaded(engine, mark(db))
    assert_replicated(db, sink, TABLES)
    sink.close()


def _service(config: object, sink: DuckDBSink) -> EngineService:
    service = EngineService(config, sink=sink)  # type: ignore[arg-type]
    service.start()
    poll(lambda: service.state != RunState.STARTING, "setup", timeout_s=120)
    assert not service.failed, service.error
    return service


def _streaming_with_rows_loaded(db: Database, tmp_path: Path
                                ) -> tuple[Config, DuckDBSink, EngineService]:
    """An engine streaming items into DuckDB (no snapshot, no heartbeats) that has loaded
    100 rows: the slot has been streamed from and checkpointed."""
    config = duckdb_config(db, tmp_path, list(TABLES), heartbeat_interval_s=0,
                           snapshot="never")
    sink = DuckDBSink(config.duckdb_path)
    service = _service(config, sink)
    try:
        engine = service.engine
        assert engine is not None
        db.execute("INSERT INTO items SELECT g, 0, 'x' FROM generate_series(1, 100) g")
        wait_until_loaded(engine, mark(db))
    except BaseException:
        service.stop(timeout=60)
        raise
    return config, sink, service


LOST_HINT = (
    "if dbmazz never streamed from it, `dbmazz setup` creates it; if it did, the slot was "
    "dropped outside dbmazz and changes since the last checkpoint were not captured: delete "
    "its row from dbmazz_checkpoints (slot_name = 'dbmazz_e2e') and run with SNAPSHOT=initial "
    "to start over (then `dbmazz verify --repair` removes target rows deleted at the source "
    "meanwhile)"
)


def test_slot_dropped_behind_dbmazz_is_fatal_and_never_recreated(
        pg_db: Database, tmp_path: Path) -> None:
    _items(pg_db)
    config, sink, service = _streaming_with_rows_loaded(pg_db, tmp_path)
    try:
        _drop_slot_behind_dbmazz(pg_db, SLOT)
        pg_db.execute("INSERT INTO items VALUES (101, 0, 'lost')")
        poll(lambda: service.failed, "the engine to fail", timeout_s=120)
        error = service.error
        assert error is not None and error.kind == "SlotLostError"
        host = f"postgres@{pg_db.server.host}:{pg_db.server.port}/{pg_db.name}"
        assert error.message == f"replication slot 'dbmazz_e2e' does not exist on {host}"
        assert error.hint == LOST_HINT
        assert service.state == RunState.FAILED
    finally:
        service.stop(timeout=60)
    assert slot_position(pg_db, SLOT) is None  # not recreated by the running engine
    # Starting again does not recreate it either: the checkpoint says it streamed before.
    ckpt = checkpoint(pg_db, SLOT)
    with pytest.raises(SlotLostError) as info:
        build_live_engine(config, sink=sink)
    assert info.value.message == (
        f"replication slot 'dbmazz_e2e' on {host} does not exist, but dbmazz had streamed "
        f"from it up to checkpoint {format_lsn_text(ckpt)}: it was dropped outside dbmazz, so "
        "changes made since then were not captured")
    assert info.value.hint == (
        "dbmazz will not recreate it silently. To start over, delete the checkpoint (DELETE "
        "FROM dbmazz_checkpoints WHERE slot_name = 'dbmazz_e2e') and run again with "
        "SNAPSHOT=initial to reload the tables; the snapshot does not remove target rows "
        "deleted at the source meanwhile: `dbmazz verify --repair` does")
    assert slot_position(pg_db, SLOT) is None
    # Following the hint starts over: a new slot and a snapshot reload everything.
    pg_db.execute("DELETE FROM dbmazz_checkpoints WHERE slot_name = 'dbmazz_e2e'")
    _start_over(pg_db, tmp_path, sink)


def test_a_slot_recreated_behind_a_running_dbmazz_is_refused_not_streamed(
        pg_db: Database, tmp_path: Path) -> None:
    """A slot dropped and created again under the same name while dbmazz reconnects starts
    past the changes made in between: streaming from it would skip them silently. The
    reconnect finds the slot confirmed past anything dbmazz confirmed and stops."""
    _items(pg_db)
    config, sink, service = _streaming_with_rows_loaded(pg_db, tmp_path)
    try:
        _drop_slot_behind_dbmazz(pg_db, SLOT, then="INSERT INTO items VALUES (101, 0, 'lost')",
                                 recreate=True)
        pg_db.execute("INSERT INTO items VALUES (102, 0, 'after')")
        poll(lambda: service.failed, "the engine to fail", timeout_s=120)
        error = service.error
        assert error is not None and error.kind == "SlotLostError"
        host = f"postgres@{pg_db.server.host}:{pg_db.server.port}/{pg_db.name}"
        assert error.message.startswith(f"replication slot 'dbmazz_e2e' on {host} is "
                                        "confirmed up to ")
        assert error.message.endswith(
            "the furthest dbmazz confirmed to it: it was dropped and created again, advanced, "
            "or read by another consumer outside this dbmazz, so changes in between may not "
            "have been captured")
        assert "`dbmazz slots drop dbmazz_e2e`" in error.hint
        assert service.state == RunState.FAILED
    finally:
        service.stop(timeout=60)
    # Nothing was read from the new slot, and the slot is left to the operator.
    [(loaded,)] = sink.query("SELECT count(*) FROM public.items WHERE id > 100")
    assert loaded == 0
    assert slot_position(pg_db, SLOT) is not None
    # A restart (a service manager's, after the fatal error) refuses it too: its confirmed
    # LSN past the checkpoint alone would look like any idle slot's.
    with pytest.raises(SlotLostError) as info:
        build_live_engine(config, sink=sink)
    assert info.value.message == f"{error.message} (found by an earlier run; on {host})"
    assert info.value.hint == error.hint
    # Following the hint (`dbmazz slots drop`: the slot and its checkpoint) starts over.
    drop_slot(config.source_dsn, SLOT)
    assert forget_checkpoint(SourceDatabase(config.source_dsn), SLOT)
    _start_over(pg_db, tmp_path, sink)


def test_a_slot_dropped_on_request_starts_over_cleanly(pg_db: Database, tmp_path: Path) -> None:
    """`dbmazz stop --drop-slot` drops the slot and its checkpoint together, so the next run
    creates a new slot instead of reporting the old one as lost."""
    _items(pg_db)
    config = duckdb_config(pg_db, tmp_path, list(TABLES), heartbeat_interval_s=0,
                           snapshot="never")
    sink = DuckDBSink(config.duckdb_path)
    service = _service(config, sink)
    engine = service.engine
    assert engine is not None
    pg_db.execute("INSERT INTO items VALUES (1, 0, 'x')")
    wait_until_loaded(engine, mark(pg_db))
    assert checkpoint(pg_db, SLOT) > 0
    outcome = service.stop(drop_slot=True, timeout=60)
    assert outcome.completed and outcome.slot_dropped
    assert slot_position(pg_db, SLOT) is None and checkpoint(pg_db, SLOT) == 0
    with running(build_live_engine(config, sink=sink)) as again:
        pg_db.execute("INSERT INTO items VALUES (2, 0, 'after')")
        wait_until_loaded(again, mark(pg_db))
    assert slot_position(pg_db, SLOT) is not None
    sink.close()


def format_lsn_text(lsn: int) -> str:
    from dbmazz.lsn import format_lsn

    return format_lsn(lsn)


INVALIDATED = (
    "PostgreSQL removed WAL the slot still needed (usually max_slot_wal_keep_size was "
    "exceeded while dbmazz was behind or stopped). Changes were lost: drop the slot, run "
    "setup again and take a new snapshot (SNAPSHOT=initial); raise max_slot_wal_keep_size "
    "to avoid it"
)


def _invalidate(db: Database, slot: str) -> None:
    """Write WAL and checkpoint until PostgreSQL invalidates ``slot`` (bounded)."""

    def lost() -> bool:
        with db.connect() as conn:
            conn.execute("INSERT INTO noise SELECT g, repeat('w', 500) "
                         "FROM generate_series(1, 5000) g")
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT wal_status FROM pg_replication_slots "
                               "WHERE slot_name = %s", (slot,)).fetchone()
        return row is not None and row[0] == "lost"

    poll(lost, "the slot to be invalidated", timeout_s=120, every_s=0)


def test_slot_invalidated_by_max_slot_wal_keep_size_is_reported(
        private_pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    cluster = private_pg_cluster
    cluster.set_setting("max_slot_wal_keep_size", "1MB")
    # A paused reader notices the killed walsender at its next status update (interval =
    # wal_sender_timeout / 2): keep that short.
    cluster.set_setting("wal_sender_timeout", "2s")
    db = _private_db(cluster)
    _items(db)
    db.execute("CREATE TABLE noise (id int, filler text)")
    config, sink, service = _streaming_with_rows_loaded(db, tmp_path)
    try:
        service.pause()  # dbmazz falls behind: the slot holds WAL ...
        _invalidate(db, SLOT)  # ... until PostgreSQL gives up on it
        poll(lambda: service.failed, "the engine to fail", timeout_s=120)
        error = service.error
        assert error is not None and error.kind == "SlotLostError", error
        assert error.message.startswith("replication slot 'dbmazz_e2e' on ")
        assert "was invalidated" in error.message
        assert error.hint == INVALIDATED
    finally:
        service.stop(timeout=60)
    # Reported at start too, and the slot is left for the operator (never dropped).
    with pytest.raises(SlotLostError) as info:
        build_live_engine(config, sink=sink)
    assert info.value.message == (
        f"replication slot 'dbmazz_e2e' on postgres@127.0.0.1:{cluster.port}/{db.name} was "
        "invalidated: can no longer get changes from replication slot \"dbmazz_e2e\"")
    assert info.value.hint == INVALIDATED
    assert slot_position(db, SLOT) is not None
    sink.close()


# -- idle published tables: heartbeats ---------------------------------------------------------


class Noise(threading.Thread):
    """Keeps an unpublished table busy (bounded)."""

    def __init__(self, db: Database) -> None:
        super().__init__(daemon=True)
        self.db = db
        self.stop = threading.Event()

    def run(self) -> None:
        with self.db.connect() as conn:
            for i in range(100_000):
                if self.stop.wait(0.005):  # load shaping
                    return
                conn.execute("INSERT INTO noise VALUES (%s, repeat('n', 200))", (i,))


@pytest.mark.parametrize("heartbeat", [1, 0])
def test_heartbeats_advance_the_slot_while_published_tables_are_idle(
        pg_db: Database, tmp_path: Path, heartbeat: int) -> None:
    _items(pg_db)
    pg_db.execute("CREATE TABLE noise (id int, filler text)")
    config = duckdb_config(pg_db, tmp_path, list(TABLES), heartbeat_interval_s=heartbeat,
                           snapshot="never")
    sink = DuckDBSink(config.duckdb_path)
    noise = Noise(pg_db)
    with running(build_live_engine(config, sink=sink)) as engine:
        pg_db.execute("INSERT INTO items VALUES (1, 0, 'last change of the published table')")
        wait_until_loaded(engine, mark(pg_db))
        noise.start()
        try:
            idle_from = checkpoint(pg_db, SLOT)
            [(now,)] = pg_db.query("SELECT pg_current_wal_lsn()::text")
            later = parse_lsn(str(now))
            # Only the unpublished table changes from here on.
            position = lambda: slot_position(pg_db, SLOT)  # noqa: E731
            poll(lambda: (p := position()) is not None and p[0] > later,
                 "the slot to advance past WAL written while the tables were idle",
                 timeout_s=60)
            if heartbeat:
                # Heartbeats are real commits: loaded, checkpointed and confirmed.
                poll(lambda: checkpoint(pg_db, SLOT) > later, "a heartbeat checkpoint",
                     timeout_s=60)
                # The heartbeat thread counts a beat once its commit returned, which on a
                # loaded machine can be after the stream already loaded and confirmed it.
                poll(lambda: engine.progress.heartbeats > 0, "the heartbeat to be counted",
                     timeout_s=10)
            else:
                # Without them the slot still follows the server (keepalive walEnd, the
                # stream's idle rule), but the checkpoint stays at the last real change.
                assert engine.progress.heartbeats == 0
                assert checkpoint(pg_db, SLOT) == idle_from
        finally:
            noise.stop.set()
            noise.join()
    [(restart,)] = pg_db.query("SELECT restart_lsn::text FROM pg_replication_slots "
                               "WHERE slot_name = %s", (SLOT,))
    assert parse_lsn(str(restart)) > 0
    assert_replicated(pg_db, sink, TABLES)
    sink.close()
