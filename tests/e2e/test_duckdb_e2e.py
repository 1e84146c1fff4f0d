"""PostgreSQL → dbmazz → DuckDB, end to end, on a real server: the target equals the source."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dbmazz.engine.build import build_live_engine, build_replay_engine
from dbmazz.engine.core import Engine
from dbmazz.lsn import parse_lsn
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import assert_replicated, duckdb_config, mark, wait_until_loaded

TABLES = {
    "shop.orders": ["id"],
    "public.lines": ["order_id", "line"],
    "public.docs_default": ["id"],
}

SCHEMA = """
CREATE SCHEMA shop;
CREATE TABLE shop.orders (
    id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2), created timestamptz,
    doc jsonb, big text, flag boolean, day date, ratio double precision, tags text[],
    raw bytea
);
CREATE TABLE public.lines (order_id int, line int, qty int, note varchar(40),
                           PRIMARY KEY (order_id, line));
CREATE TABLE public.docs_default (id int PRIMARY KEY, title text, body text);
"""


def big(seed: int) -> str:
    """~100 KB of poorly compressible text: stored out of line (TOASTed)."""
    return "".join(f"{(seed * 7919 + i * 104729) % 1000003:07d}" for i in range(15_000))


def workload(db: Database) -> None:
    db.execute("""
        INSERT INTO shop.orders
        SELECT g, 'c' || g, g * 1.25, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 s',
               jsonb_build_object('g', g, 'nested', jsonb_build_array(g, 'x')),
               NULL, g % 2 = 0, DATE '2024-02-29' + g, g / 3.0, ARRAY['a', 'b' || g],
               decode('00ff' || lpad(to_hex(g), 4, '0'), 'hex')
        FROM generate_series(1, 500) g
    """)
    db.execute("INSERT INTO public.lines SELECT g / 10, g % 10, g, 'n' || g "
               "FROM generate_series(1, 300) g")
    for i in range(1, 6):
        db.execute("UPDATE shop.orders SET big = %s WHERE id = %s", (big(i), i))
        db.execute("INSERT INTO public.docs_default VALUES (%s, %s, %s)", (i, f"t{i}", big(i)))
    # TOAST-unchanged updates: only a small column changes, the 100 KB value is not resent.
    db.execute("UPDATE shop.orders SET customer = customer || '-u' WHERE id <= 5")
    db.execute("UPDATE public.docs_default SET title = title || '-u' WHERE id <= 5")
    with db.connect() as conn, conn.transaction():
        # Same transaction: insert then TOAST-unchanged update (filled within the batch).
        conn.execute("INSERT INTO public.docs_default VALUES (6, 't6', %s)", (big(6),))
        conn.execute("UPDATE public.docs_default SET title = 'six' WHERE id = 6")
    db.execute("UPDATE shop.orders SET amount = amount * 2, doc = doc || '{\"u\": 1}' "
               "WHERE id % 7 = 0")
    db.execute("DELETE FROM shop.orders WHERE id % 11 = 0")
    db.execute("UPDATE shop.orders SET id = id + 10000 WHERE id BETWEEN 20 AND 25")  # key change
    db.execute("UPDATE public.lines SET line = line + 100 WHERE order_id = 3")  # composite key
    db.execute("DELETE FROM public.lines WHERE order_id = 4")
    for i in range(200):  # many one-row transactions
        db.execute("UPDATE public.lines SET qty = qty + 1 WHERE order_id = %s AND line = %s",
                   (i // 10, i % 10))
    db.execute("TRUNCATE public.lines")
    db.execute("INSERT INTO public.lines VALUES (1, 1, 1, 'after truncate')")
    db.execute("ALTER TABLE shop.orders ADD COLUMN note text")
    db.execute("INSERT INTO shop.orders (id, customer, note) VALUES (9001, 'new', 'has note')")
    db.execute("UPDATE shop.orders SET note = 'updated' WHERE id = 1")
    db.execute("INSERT INTO shop.orders (id, customer, amount, created, ratio, day) VALUES "
               "(9002, 'edge', -0.01, '1999-12-31 23:59:59.999999+00', 'NaN', '0001-01-01')")


def create(db: Database) -> None:
    db.execute(SCHEMA)


@pytest.mark.parametrize("reader", ["auto", "libpq"])
def test_mixed_workload_replicates_exactly(pg_db: Database, tmp_path: Path,
                                           engines: list[Engine], reader: str) -> None:
    create(pg_db)
    pg_db.execute("ALTER TABLE public.docs_default REPLICA IDENTITY DEFAULT")
    config = duckdb_config(pg_db, tmp_path, list(TABLES), replica_identity="keep",
                           flush_rows=1000, replication_reader=reader)
    pg_db.execute("ALTER TABLE shop.orders REPLICA IDENTITY FULL")
    pg_db.execute("ALTER TABLE public.lines REPLICA IDENTITY FULL")
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    workload(pg_db)
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, TABLES)
    # Soft deletes keep the row, flagged.
    [(deleted,)] = sink.query('SELECT count(*) FROM "shop"."orders" WHERE dbmazz_is_deleted')
    assert deleted > 0
    engine.drain()
    assert engine.wait(60)
    # The checkpoint is the last durable commit. The slot may stand further only over WAL
    # that holds no change of the published tables (the stream's idle rule).
    [(slot_lsn,)] = pg_db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                "WHERE slot_name = 'dbmazz_e2e'")
    [(checkpoint,)] = pg_db.query("SELECT lsn::text FROM dbmazz_checkpoints")
    assert parse_lsn(checkpoint) == engine.durable_lsn
    assert parse_lsn(slot_lsn) >= parse_lsn(checkpoint)


def test_large_transaction_and_restart_from_checkpoint(pg_db: Database, tmp_path: Path,
                                                       engines: list[Engine]) -> None:
    pg_db.execute("CREATE TABLE public.big (id bigint PRIMARY KEY, v int, t text)")
    config = duckdb_config(pg_db, tmp_path, ["public.big"], flush_rows=50_000)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO public.big SELECT g, g % 97, md5(g::text) "
                  "FROM generate_series(1, 1000000) g")
    wait_until_loaded(engine, mark(pg_db))
    engine.drain()
    assert engine.wait(60)
    # Changes made while dbmazz is down are picked up from the checkpoint.
    pg_db.execute("UPDATE public.big SET v = -1 WHERE id % 1000 = 0")
    pg_db.execute("DELETE FROM public.big WHERE id > 999000")
    second = build_live_engine(config, sink=sink)
    engines.append(second)
    second.start()
    wait_until_loaded(second, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.big": ["id"]})
    [(count,)] = sink.query(
        "SELECT count(*) FROM public.big WHERE v = -1 AND NOT dbmazz_is_deleted"
    )
    assert count == 999


def test_kill_9_then_restart_loses_nothing(pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE public.k (id int PRIMARY KEY, v int)")
    duckdb_path = tmp_path / "kill.duckdb"
    env = {
        **os.environ,
        "SOURCE_URL": pg_db.dsn,
        "TABLES": "public.k",
        "SINK": "duckdb",
        "DUCKDB_PATH": str(duckdb_path),
        "SLOT_NAME": "dbmazz_kill",
        "PUBLICATION_NAME": "dbmazz_kill",
        "FLUSH_INTERVAL_MS": "50",
        "FLUSH_ROWS": "500",
        "GRPC_PORT": "0",
    }

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "dbmazz", "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    from dbmazz.source.setup import setup_source

    # The slot exists before the first row is written, so nothing precedes the stream.
    setup_source(pg_db.dsn, ["public.k"], "dbmazz_kill", "dbmazz_kill")
    pg_db.execute("INSERT INTO public.k SELECT g, 0 FROM generate_series(1, 2000) g")
    proc = start()
    _wait_for_checkpoint(pg_db, proc)
    for round_ in range(3):
        pg_db.execute("UPDATE public.k SET v = v + 1")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        pg_db.execute(f"INSERT INTO public.k VALUES ({10_000 + round_}, {round_})")
        proc = start()
        _wait_for_checkpoint(pg_db, proc)
    marker = mark(pg_db)
    _wait_for_checkpoint(pg_db, proc, after=marker)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    sink = DuckDBSink(str(duckdb_path))
    assert_replicated(pg_db, sink, {"public.k": ["id"]})


def _wait_for_checkpoint(db: Database, proc: subprocess.Popen[bytes], after: int = 0) -> None:
    """Poll the checkpoint table (bounded) until it passes ``after``."""
    from dbmazz.lsn import parse_lsn

    for _ in range(2400):
        if proc.poll() is not None:
            raise AssertionError(f"dbmazz exited {proc.returncode}: "
                                 f"{proc.stderr.read().decode() if proc.stderr else ''}")
        [(exists,)] = db.query("SELECT to_regclass('public.dbmazz_checkpoints') IS NOT NULL")
        rows = db.query("SELECT lsn::text FROM dbmazz_checkpoints") if exists else []
        if rows and parse_lsn(str(rows[0][0])) > after:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
    raise AssertionError("no checkpoint after 120 s")


def test_replay_of_a_capture_reproduces_the_source(pg_db: Database, tmp_path: Path) -> None:
    from dbmazz.source.capture import capture
    from dbmazz.source.setup import setup_source

    create(pg_db)
    setup = setup_source(pg_db.dsn, list(TABLES), publication="cap_pub", slot="cap_slot",
                         replica_identity="full")
    assert setup.slot_created
    workload(pg_db)
    until = mark(pg_db)
    out = tmp_path / "wal.arrows"
    capture(pg_db.dsn, "cap_slot", "cap_pub", str(out), until_lsn=until)
    config = duckdb_config(pg_db, tmp_path, list(TABLES))
    sink = DuckDBSink(str(tmp_path / "replayed.duckdb"))
    engine = build_replay_engine(config, out, sink=sink)
    engine.run()
    assert_replicated(pg_db, sink, TABLES)
