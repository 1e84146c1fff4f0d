"""Poison rows (issue 19): a value the target rejects stops the pipeline by default; with
REJECTED_ROWS=table the rejected rows go to ``dbmazz_rejected``, the rest of the load is
applied, the LSN advances, and Status, Prometheus and `dbmazz top` count them per table.

Real PostgreSQL (fixture), StarRocks through the emulator (strict mode, ErrorURL), DuckDB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import RunState
from dbmazz.errors import SinkError
from dbmazz.lsn import parse_lsn
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.ops.test_failing_loads import _serve, _top_once
from tests.reliability.helpers import poll, running
from tests.scripted import eventually

SLOT = "dbmazz_poison"
TOO_LONG = "much too long for five"
SR_TABLE = ("CREATE TABLE rej.t (id INT NOT NULL, v VARCHAR({}), dbmazz_op_type TINYINT, "
            "dbmazz_is_deleted BOOLEAN, dbmazz_synced_at DATETIME, dbmazz_cdc_version "
            "BIGINT) PRIMARY KEY (id) DISTRIBUTED BY HASH (id)")


@pytest.fixture
def db(pg_db: Database) -> Database:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO public.t VALUES (1, 'short')")
    return pg_db


def _sr_config(db: Database, sr: StarRocksEmulator, **extra: Any) -> Config:
    return Config.load({
        "source_url": db.dsn, "tables": "public.t", "sink": "starrocks",
        "starrocks_url": sr.url, "starrocks_mysql_port": sr.mysql_port,
        "starrocks_db": "rej", "slot_name": SLOT, "publication_name": SLOT,
        "flush_interval_ms": 100, "grpc_port": 0, "heartbeat_interval_s": 0,
        "rejected_rows": "table", **extra}, env_file=None)


def _ids(sr: StarRocksEmulator) -> list[int]:
    try:
        return [r["id"] for r in sr.rows("rej", "t")]
    except KeyError:  # not created yet
        return []


def _confirmed(db: Database) -> int:
    [(lsn,)] = db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                        "WHERE slot_name = %s", (SLOT,))
    return parse_lsn(str(lsn))


def test_starrocks_rejected_rows_go_to_the_table_and_the_rest_loads(db: Database) -> None:
    with StarRocksEmulator() as sr, _serve(_sr_config(db, sr)) as served:
        eventually(lambda: _ids(sr) == [1], "the snapshot", 120)
        assert sr.rows("rej", "dbmazz_rejected") == []  # created by setup, empty
        # The target changed by hand after setup: v now holds 5 characters.
        sr.execute("DROP TABLE rej.t")
        sr.execute(SR_TABLE.format(5))
        with db.connect() as conn, conn.transaction():
            for i, v in [(2, TOO_LONG), (3, "ok"), (4, "ok2"), (5, "fine"), (6, "x")]:
                conn.execute("INSERT INTO public.t VALUES (%s, %s)", (i, v))
        db.execute("UPDATE public.t SET v = 'ok4' WHERE id = 4")
        after = mark(db)
        engine = served.service.engine
        assert engine is not None
        wait_until_loaded(engine, after)
        assert engine.progress.state == RunState.RUNNING
        assert [(r["id"], r["v"]) for r in sr.rows("rej", "t")] == [
            (3, "ok"), (4, "ok4"), (5, "fine"), (6, "x")]
        [record] = sr.rows("rej", "dbmazz_rejected")
        assert record["source_table"] == "public.t"
        assert json.loads(record["row_key"]) == {"id": 2}
        assert json.loads(record["row_json"])["v"] == TOO_LONG
        assert record["cdc_version"] > 0
        # StarRocks' reason and the row, from the single-row load's ErrorURL.
        assert "Row:" in record["error"] and TOO_LONG in record["error"]
        assert record["column_name"] == "v"
        assert record["rejected_at"] is not None
        # The LSN advanced past the poison row: checkpointed and confirmed to PostgreSQL.
        eventually(lambda: _confirmed(db) >= after, "the slot to confirm past the row", 60)
        [table] = [t for t in served.service.status().tables if t.table == "public.t"]
        assert table.rejected_rows == 1
        assert served.client.status().tables[0].rejected_rows == 1  # over gRPC
        assert served.metrics()['dbmazz_rejected_rows_total{table="public.t"}'] == 1
        top = _top_once(served.address)
        assert "rejected" in top, top
        # The target fixed, verify finds the row missing and --repair brings it back.
        sr.execute("ALTER TABLE rej.t MODIFY COLUMN v VARCHAR(100)")
        eventually(lambda: sr.publish_pending() == 0, "the schema change", 60)
        report = served.client.verify(["public.t"], repair=True, timeout_s=120)
        [result] = report["tables"]
        # Row 1 went with the table recreated by hand; row 2 is the rejected one.
        assert result["missing"] == 2, report
        assert result["repaired"] == 2, report
        assert [(r["id"], r["v"]) for r in sr.rows("rej", "t")] == [
            (1, "short"), (2, TOO_LONG), (3, "ok"), (4, "ok4"), (5, "fine"), (6, "x")]


def test_starrocks_stop_is_the_default(db: Database) -> None:
    """Without REJECTED_ROWS the same row stops the pipeline, the row in the error, and
    no dbmazz_rejected table is created."""
    with StarRocksEmulator() as sr:
        engine = build_live_engine(_sr_config(db, sr, rejected_rows="stop"))
        with running(engine):
            wait_until_loaded(engine, mark(db))
            sr.execute("DROP TABLE rej.t")
            sr.execute(SR_TABLE.format(5))
            confirmed = engine.durable_lsn
            db.execute("INSERT INTO public.t VALUES (2, %s), (3, 'ok')", (TOO_LONG,))
            poll(lambda: engine.progress.state == RunState.FAILED, "the engine to stop")
            with pytest.raises(SinkError) as info:
                engine.wait(60)
        assert TOO_LONG in info.value.message
        assert "REJECTED_ROWS=table" in info.value.hint
        assert engine.durable_lsn == confirmed
        assert [r["id"] for r in sr.rows("rej", "t")] == []  # the table was recreated empty
        with pytest.raises(KeyError):
            sr.rows("rej", "dbmazz_rejected")
        engine.sink.close()


def _duckdb_target(path: Path) -> None:
    """The target made by hand with a constraint the source does not have."""
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA public")
        con.execute("CREATE TABLE public.t (id INTEGER PRIMARY KEY, "
                    "v VARCHAR CHECK (length(v) <= 5))")
        # Not empty: an empty target is bulk-loaded by the snapshot, which recreates it.
        con.execute("INSERT INTO public.t VALUES (1, 'short')")


def test_duckdb_rejected_rows_go_to_the_table(db: Database, tmp_path: Path) -> None:
    config = duckdb_config(db, tmp_path, ["public.t"], rejected_rows="table", slot_name=SLOT,
                           publication_name=SLOT)
    _duckdb_target(Path(config.duckdb_path))
    engine = build_live_engine(config)
    with running(engine):
        wait_until_loaded(engine, mark(db))
        with db.connect() as conn, conn.transaction():
            for i in range(2, 40):
                conn.execute("INSERT INTO public.t VALUES (%s, %s)",
                             (i, TOO_LONG if i in (7, 30) else f"v{i}"))
        db.execute("DELETE FROM public.t WHERE id = 3")
        after = mark(db)
        wait_until_loaded(engine, after)
        assert engine.progress.state == RunState.RUNNING
        sink = engine.sink
        assert isinstance(sink, DuckDBSink)
        live = sink.query("SELECT id FROM public.t WHERE NOT dbmazz_is_deleted ORDER BY id")
        assert [r[0] for r in live] == [1, *[i for i in range(2, 40) if i not in (3, 7, 30)]]
        records = sink.query("SELECT source_table, row_key, row_json, error, cdc_version "
                             "FROM main.dbmazz_rejected ORDER BY row_key")
        assert [(r[0], json.loads(str(r[1]))) for r in records] == [
            ("public.t", {"id": 30}), ("public.t", {"id": 7})]
        assert all(json.loads(str(r[2]))["v"] == TOO_LONG for r in records)
        assert all("CHECK constraint" in str(r[3]) for r in records)
        assert engine.writer.health.rejected_rows("public.t") == 2
    poll(lambda: _confirmed(db) >= after, "the slot to confirm past the rows", 60)
    engine.sink.close()


def test_duckdb_stop_names_the_rejected_row(db: Database, tmp_path: Path) -> None:
    config = duckdb_config(db, tmp_path, ["public.t"], slot_name=SLOT, publication_name=SLOT)
    _duckdb_target(Path(config.duckdb_path))
    engine = build_live_engine(config)
    with running(engine):
        wait_until_loaded(engine, mark(db))
        confirmed = engine.durable_lsn
        db.execute("INSERT INTO public.t VALUES (2, 'ok'), (3, %s)", (TOO_LONG,))
        poll(lambda: engine.progress.state == RunState.FAILED, "the engine to stop")
        with pytest.raises(SinkError) as info:
            engine.wait(60)
    assert "CHECK constraint" in info.value.message
    assert '{"id": 3}' in info.value.message and TOO_LONG in info.value.message
    assert "REJECTED_ROWS=table" in info.value.hint
    assert engine.durable_lsn == confirmed
    engine.sink.close()


def test_setup_check_wants_the_rejected_table_under_setup_skip(db: Database) -> None:
    from dbmazz.engine.check import check_starrocks

    with StarRocksEmulator() as sr:
        sr.execute("CREATE DATABASE rej")
        config = _sr_config(db, sr, setup="skip")
        assert check_starrocks(config).problems == [
            "StarRocks table rej.dbmazz_rejected (REJECTED_ROWS=table) does not exist — "
            "create it (docs/operations.md), or run with SETUP=auto"]
        assert check_starrocks(_sr_config(db, sr, setup="skip", rejected_rows="stop")
                               ).problems == []
