"""Initial and on-demand snapshots on a real PostgreSQL, into DuckDB: the target equals the
source after catch-up, whatever the keys, the types, the concurrent writes or a kill -9."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.errors import SetupError
from dbmazz.lsn import parse_lsn
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.snapshot.context import CHUNK_PAGES_ENV
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import assert_replicated, duckdb_config, mark, wait_until_loaded
from tests.scripted import eventually

WIDE_COLUMNS = 100


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Four pages per chunk: a few thousand rows make many chunks."""
    monkeypatch.setenv(CHUNK_PAGES_ENV, "4")


def run_writer(db: Database, steps: int, table: str = "items") -> threading.Thread:
    """A bounded loop of inserts, updates (some moving rows to other pages, some changing
    the key) and deletes on ``table``, in its own thread."""

    def work() -> None:
        with db.connect() as conn:
            for i in range(steps):
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s)",
                             (f"w{i:05d}", i, "w" * (i % 50)))
                conn.execute(f"UPDATE {table} SET n = n + 1, payload = payload || 'u' "
                             "WHERE id = %s", (f"k{(i * 37) % 3000:05d}",))
                conn.execute(f"DELETE FROM {table} WHERE id = %s", (f"k{(i * 53) % 3000:05d}",))
                if i % 25 == 0:
                    conn.execute(f"UPDATE {table} SET id = id || '-moved' WHERE id = %s",
                                 (f"k{(i * 71) % 3000:05d}",))

    thread = threading.Thread(target=work, name="test-writer")
    thread.start()
    return thread


def on_first_chunk_done(engine: Engine, action: Callable[[str], None]) -> None:
    """Run ``action(table)`` once, in the snapshot worker, right after the first chunk is
    recorded as done (deterministic: the snapshot is under way and not finished)."""
    assert engine.snapshots is not None
    store = engine.snapshots.context.store
    original = store.mark_done
    fired = threading.Event()

    def mark_done(chunk: Any, rows: int) -> None:
        original(chunk, rows)
        if not fired.is_set():
            fired.set()
            action(chunk.table)

    store.mark_done = mark_done  # type: ignore[method-assign]


def create_items(db: Database, rows: int = 3000) -> None:
    db.execute("CREATE TABLE items (id text PRIMARY KEY, n int, payload text)")
    db.execute(f"INSERT INTO items SELECT 'k' || lpad(g::text, 5, '0'), g, repeat('p', g % 90) "
               f"FROM generate_series(0, {rows - 1}) g")


def big_text(seed: int) -> str:
    return "".join(f"{(seed * 7919 + i * 104729) % 1000003:07d}" for i in range(12_000))


def test_snapshot_under_concurrent_writes_equals_source(
        pg_db: Database, tmp_path: Path, engines: list[Engine], small_chunks: None) -> None:
    create_items(pg_db)
    pg_db.execute("CREATE TABLE pairs (a int, b uuid, v numeric(10,2), PRIMARY KEY (a, b))")
    pg_db.execute("INSERT INTO pairs SELECT g % 50, md5(g::text)::uuid, g / 7.0 "
                  "FROM generate_series(1, 2000) g")
    pg_db.execute("CREATE TABLE nothing (id int PRIMARY KEY)")
    columns = ", ".join(f"c{i} int" for i in range(1, WIDE_COLUMNS))
    pg_db.execute(f"CREATE TABLE wide (id int PRIMARY KEY, {columns})")
    values = ", ".join(f"g + {i}" for i in range(1, WIDE_COLUMNS))
    pg_db.execute(f"INSERT INTO wide SELECT g, {values} FROM generate_series(1, 1500) g")
    for i in range(1, 4):  # TOASTed values, later left unchanged by updates
        pg_db.execute("UPDATE items SET payload = %s WHERE id = %s", (big_text(i), f"k{i:05d}"))
    tables = {"public.items": ["id"], "public.pairs": ["a", "b"], "public.nothing": ["id"],
              "public.wide": ["id"]}
    config = duckdb_config(pg_db, tmp_path, list(tables), snapshot="initial",
                           snapshot_workers=2)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)

    def during_snapshot(table: str) -> None:
        with pg_db.connect() as conn:
            conn.execute("UPDATE items SET n = -n WHERE n % 10 = 0")  # moves rows to new pages
            conn.execute("DELETE FROM items WHERE n % 13 = 0")
            conn.execute("UPDATE items SET n = 7 WHERE id IN ('k00001', 'k00002')")  # TOAST kept
            conn.execute("DELETE FROM pairs WHERE a = 3")
            conn.execute("INSERT INTO nothing SELECT generate_series(1, 10)")
            conn.execute("UPDATE wide SET c50 = -1 WHERE id % 3 = 0")

    on_first_chunk_done(engine, during_snapshot)
    writer = run_writer(pg_db, 150)
    engine.start()
    writer.join()
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, tables)
    progress = engine.snapshot_progress
    assert progress is not None and progress.kind == "initial" and not progress.active
    assert progress.tables["public.items"].chunks_total > 3
    assert progress.tables_done == progress.tables_total == 4
    # Rows no change touched carry the consistent point; CDC changes carry later commits.
    [(at_point, older)] = sink.query(
        f"SELECT count(*) FILTER (WHERE dbmazz_cdc_version = {progress.version}), "
        f"count(*) FILTER (WHERE dbmazz_cdc_version < {progress.version}) FROM public.wide")
    assert int(at_point) > 0 and older == 0  # type: ignore[call-overload]


KINDS = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN price AS numeric(10,2);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE kinds_snap (
    k text PRIMARY KEY, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric(12,2),
    nu numeric, b bool, t text, vc varchar(8), bp char(4), ch "char", nm name, by bytea,
    d date, ts timestamp, tz timestamptz, tm time, iv interval, u uuid, ip inet, net cidr,
    j json, jb jsonb, ai int4[], at text[], e mood, p price, cp pair
);
INSERT INTO kinds_snap VALUES
  ('plain', 1, 2, 3, 1.5, 2.25, 12.34, 1.000100, true, 'text', 'vc', 'ab', 'x', 'name',
   '\\x00ff10', '2024-02-29', '2024-02-29 12:34:56.789', '2024-02-29 12:34:56.789+02',
   '12:34:56', '1 year 2 mons 3 days 04:05:06', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
   '10.0.0.1/32', '10.0.0.0/8', '{"a": [1, 2]}', '{"b": {"c": null}}', '{1,NULL,3}',
   '{"a,b","q\\"uote",NULL,""}', 'happy', 99.95, ROW(1, 'x')),
  ('edges', -32768, -2147483648, -9223372036854775808, 'NaN', '-Infinity', -0.01,
   'NaN', false, E'line\\nbreak, "quoted", back\\\\slash, ünïcødé', '', '', '', '',
   '', 'infinity', '-infinity', 'infinity', '00:00:00', '-1 days',
   '00000000-0000-0000-0000-000000000000', '::1', '::/0', '[]', '{}', '{}', '{}', 'sad', 0,
   ROW(NULL, NULL)),
  ('bc', 0, 0, 0, 'Infinity', 1e308, 0, 123456789012345678901234567890.123456789, NULL,
   '', NULL, NULL, NULL, NULL, NULL, '0044-03-15 BC', '0044-03-15 12:00:00 BC',
   '1999-12-31 23:59:59.999999+00', NULL, NULL, NULL, NULL, NULL, 'null', 'null', NULL,
   '{NULL}', NULL, NULL, ROW(2, NULL)),
  ('nulls', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE kinds_cdc (LIKE kinds_snap INCLUDING ALL);
"""


def _comparable(column: pa.ChunkedArray) -> list[str]:
    """Exact, NaN-safe, year-0-safe text of every value (for equality checks)."""
    if pa.types.is_floating(column.type):
        column = pc.cast(column, pa.string())
    elif pa.types.is_temporal(column.type):
        column = column.cast(pa.int64() if not pa.types.is_date(column.type) else pa.int32())
    return [repr(v) for v in column.to_pylist()]


@pytest.mark.parametrize("reader", ["adbc", "copy"])
def test_snapshot_and_cdc_produce_identical_values(
        pg_db: Database, tmp_path: Path, engines: list[Engine], reader: str) -> None:
    if reader == "adbc":
        pytest.importorskip("adbc_driver_postgresql")
    pg_db.execute(KINDS)
    config = duckdb_config(pg_db, tmp_path, ["public.kinds_snap", "public.kinds_cdc"],
                           snapshot="initial")
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    assert engine.snapshots is not None
    engine.snapshots.context.reader_kind = reader  # type: ignore[assignment]
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO kinds_cdc SELECT * FROM kinds_snap")  # the same values, by CDC
    wait_until_loaded(engine, mark(pg_db))
    progress = engine.snapshot_progress
    assert progress is not None and progress.reader == reader
    assert progress.tables["public.kinds_snap"].rows_done == 4
    cursor = sink._cursor()
    snap = cursor.sql("SELECT * EXCLUDE (dbmazz_synced_at, dbmazz_cdc_version) "
                      "FROM public.kinds_snap ORDER BY k").to_arrow_table()
    cdc = cursor.sql("SELECT * EXCLUDE (dbmazz_synced_at, dbmazz_cdc_version) "
                     "FROM public.kinds_cdc ORDER BY k").to_arrow_table()
    assert snap.schema == cdc.schema
    # A domain is its base type (price is numeric(10,2)), not the text of its values.
    assert snap.schema.field("p").type == pa.decimal128(10, 2)
    assert snap.num_rows == 4
    for name in snap.column_names:
        assert _comparable(snap.column(name)) == _comparable(cdc.column(name)), name
    # NULL and the empty string stay apart.
    assert sink.query("SELECT k FROM public.kinds_snap WHERE t = '' ORDER BY k") == [("bc",)]
    # A composite whose fields are all NULL is a value, not NULL (IS NULL says otherwise).
    assert sink.query("SELECT cp FROM public.kinds_snap WHERE k = 'edges'") == [("(,)",)]


def test_kill_9_mid_snapshot_then_restart_reads_only_unfinished_chunks(
        pg_db: Database, tmp_path: Path) -> None:
    pg_db.execute("CREATE TABLE r (id int PRIMARY KEY, v int, pad text)")
    pg_db.execute("INSERT INTO r SELECT g, g, repeat('r', 100) FROM generate_series(1, 6000) g")
    pg_db.execute("CREATE TABLE r2 (id text PRIMARY KEY, v int)")
    pg_db.execute("INSERT INTO r2 SELECT 'x' || g, g FROM generate_series(1, 3000) g")
    pg_db.execute("ALTER TABLE r REPLICA IDENTITY FULL")
    pg_db.execute("ALTER TABLE r2 REPLICA IDENTITY DEFAULT")
    duckdb_path = tmp_path / "kill.duckdb"
    env = {
        **os.environ, "SOURCE_URL": pg_db.dsn, "TABLES": "public.r,public.r2", "SINK": "duckdb",
        "DUCKDB_PATH": str(duckdb_path), "SLOT_NAME": "dbmazz_snapkill",
        "PUBLICATION_NAME": "dbmazz_snapkill", "REPLICA_IDENTITY": "keep",
        "SNAPSHOT": "initial", "SNAPSHOT_WORKERS": "2", "FLUSH_INTERVAL_MS": "50",
        "GRPC_PORT": "0", CHUNK_PAGES_ENV: "4",
    }

    def start(*command: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, *(command or ("-m", "dbmazz", "run"))],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # The engine `dbmazz run` builds, with the snapshot held after 3 chunks (a test hook).
    proc = start("-c", "from dbmazz.config import Config\n"
                       "from dbmazz.engine.build import build_live_engine\n"
                       "build_live_engine(Config.load(env_file=None), "
                       "snapshot_hold_after=3).run()\n")
    done_before = _wait_for(pg_db, proc, lambda: _done_chunks(pg_db) if len(
        _done_chunks(pg_db)) >= 3 else None)
    total = pg_db.query("SELECT count(*) FROM dbmazz_snapshot_progress")[0][0]
    assert len(done_before) < int(total)  # type: ignore[call-overload]
    # The checkpoint never moved during the snapshot; the slot still sits at its start.
    [(version,)] = pg_db.query("SELECT DISTINCT version::text FROM dbmazz_snapshot_progress")
    [(confirmed,)] = pg_db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                                 "WHERE slot_name = 'dbmazz_snapkill'")
    assert confirmed == version
    assert not pg_db.query("SELECT 1 FROM pg_tables WHERE tablename = 'dbmazz_checkpoints'") \
        or not pg_db.query("SELECT 1 FROM dbmazz_checkpoints")
    pg_db.execute("UPDATE r SET v = -v, pad = pad || 'moved' WHERE id % 9 = 0")
    pg_db.execute("DELETE FROM r WHERE id % 17 = 0")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The targets were empty: they are bulk-loaded without their primary key, which the
    # killed process never added. The restart's setup adds it back.
    killed = DuckDBSink(str(duckdb_path))
    assert not killed.query("SELECT 1 FROM duckdb_constraints() WHERE table_name = 'r' "
                            "AND constraint_type = 'PRIMARY KEY'")
    killed.close()
    pg_db.execute("INSERT INTO r SELECT g, g, 'new' FROM generate_series(7000, 7100) g")
    pg_db.execute("UPDATE r2 SET v = 0 WHERE v % 5 = 0")
    pg_db.execute("DELETE FROM r2 WHERE v % 7 = 1")

    proc = start()
    marker = mark(pg_db)
    _wait_for(pg_db, proc, lambda: _checkpoint_after(pg_db, marker))
    proc.send_signal(signal.SIGTERM)
    _assert_drained(proc)
    done_after = _done_chunks(pg_db)
    assert len(done_after) == int(total)  # type: ignore[call-overload]
    for key, done_at in done_before.items():
        if key[0] == "public.r":  # FULL identity: finished chunks were not read again
            assert done_after[key] == done_at, key
    r2_before = {k: v for k, v in done_before.items() if k[0] == "public.r2"}
    # DEFAULT identity: a partly done table is read again entirely (docs/snapshot.md).
    assert all(done_after[k] != v for k, v in r2_before.items())
    sink = DuckDBSink(str(duckdb_path))
    assert_replicated(pg_db, sink, {"public.r": ["id"], "public.r2": ["id"]})


def _assert_drained(proc: subprocess.Popen[bytes]) -> None:
    code = proc.wait(60)
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""


def _done_chunks(db: Database) -> dict[tuple[str, int], Any]:
    if not db.query("SELECT 1 FROM pg_tables WHERE tablename = 'dbmazz_snapshot_progress'"):
        return {}
    rows = db.query("SELECT table_name, chunk, done_at FROM dbmazz_snapshot_progress "
                    "WHERE done_at IS NOT NULL")
    return {(str(t), int(c)): d for t, c, d in rows}  # type: ignore[call-overload]


def _checkpoint_after(db: Database, lsn: int) -> bool | None:
    if not db.query("SELECT 1 FROM pg_tables WHERE tablename = 'dbmazz_checkpoints'"):
        return None
    rows = db.query("SELECT lsn::text FROM dbmazz_checkpoints")
    return True if rows and parse_lsn(str(rows[0][0])) > lsn else None


def _wait_for(db: Database, proc: subprocess.Popen[bytes], probe: Callable[[], Any]) -> Any:
    """Poll ``probe`` (bounded) while the process runs; return its first non-None value."""
    for _ in range(2400):
        if proc.poll() is not None:
            raise AssertionError(f"dbmazz exited {proc.returncode}: "
                                 f"{proc.stderr.read().decode() if proc.stderr else ''}")
        found = probe()
        if found:
            return found
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.05)
    raise AssertionError("condition not reached within 120 s")


def test_on_demand_snapshot_of_a_table_added_while_cdc_runs(
        pg_db: Database, tmp_path: Path, engines: list[Engine], small_chunks: None) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    config = duckdb_config(pg_db, tmp_path, ["public.a"], snapshot="initial",
                           delete_mode="hard", snapshot_workers=1)
    sink = DuckDBSink(config.duckdb_path, delete_mode="hard")
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 100) g")
    wait_until_loaded(engine, mark(pg_db))
    create_items(pg_db)  # a table dbmazz does not know yet

    def during_snapshot(table: str) -> None:
        # CDC changes after the watermark, applied *before* the remaining chunks are
        # written: hard deletes and updates the older snapshot rows must not undo.
        with pg_db.connect() as conn:
            conn.execute("DELETE FROM items WHERE n % 3 = 0")
            conn.execute("UPDATE items SET payload = 'cdc' WHERE n % 5 = 0")
        wait_until_loaded(engine, mark(pg_db))

    on_first_chunk_done(engine, during_snapshot)
    writer = run_writer(pg_db, 100)
    handle = engine.request_snapshot(["public.items"])
    writer.join()
    assert handle.wait(180)
    assert handle.error is None and handle.completed
    pg_db.execute("UPDATE items SET n = n + 1000 WHERE n % 7 = 0")
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.items": ["id"], "public.a": ["id"]})
    progress = engine.snapshot_progress
    assert progress is not None and progress.kind == "on_demand"
    assert progress.tables["public.items"].chunks_total > 3
    [(at_watermark,)] = sink.query("SELECT count(*) FROM public.items "
                                   f"WHERE dbmazz_cdc_version = {progress.version}")
    assert int(at_watermark) > 0  # type: ignore[call-overload]
    # The table stays replicated after a restart, although TABLES does not list it.
    engine.drain()
    assert engine.wait(60)
    second = build_live_engine(config, sink=sink)
    engines.append(second)
    second.start()
    pg_db.execute("DELETE FROM items WHERE n % 2 = 0")
    pg_db.execute("INSERT INTO items VALUES ('after-restart', 1, 'x')")
    wait_until_loaded(second, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.items": ["id"], "public.a": ["id"]})


def test_cli_snapshot_initial_only_then_on_demand_then_run(
        pg_db: Database, tmp_path: Path, engines: list[Engine]) -> None:
    create_items(pg_db, 500)
    pg_db.execute("CREATE TABLE extra (id int PRIMARY KEY, v int)")
    pg_db.execute("INSERT INTO extra SELECT g, g FROM generate_series(1, 300) g")
    config = duckdb_config(pg_db, tmp_path, ["public.items"])
    env = {**os.environ, "SOURCE_URL": pg_db.dsn, "TABLES": "public.items", "SINK": "duckdb",
           "DUCKDB_PATH": config.duckdb_path, "SLOT_NAME": config.slot_name,
           "PUBLICATION_NAME": config.publication_name, "GRPC_PORT": "0"}

    def cli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "dbmazz", "snapshot", *args], env=env,
                              capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()

    cli()  # no slot yet: the initial snapshot, then exit 0 leaving the slot
    [(exists,)] = pg_db.query("SELECT count(*) FROM pg_replication_slots "
                              f"WHERE slot_name = '{config.slot_name}'")
    assert exists == 1
    pg_db.execute("UPDATE items SET n = -1 WHERE n < 100")  # streamed later, from the slot
    cli("--table", "extra")  # dbmazz stopped: an on-demand snapshot of another table
    pg_db.execute("UPDATE extra SET v = 0 WHERE id < 50")
    pg_db.execute("DELETE FROM items WHERE n > 400")
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.items": ["id"], "public.extra": ["id"]})


def _replicated_tables(db: Database, slot: str) -> set[str]:
    rows = db.query("SELECT table_name FROM dbmazz_replicated_tables WHERE slot_name = %s",
                    (slot,))
    return {str(name) for (name,) in rows} - {""}


def _run_until_loaded(config: Any, sink: DuckDBSink, db: Database,
                      engines: list[Engine], work: Callable[[], None] = lambda: None
                      ) -> Engine:
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    work()
    wait_until_loaded(engine, mark(db))
    return engine


def _drained(engine: Engine) -> None:
    engine.drain()
    assert engine.wait(60)


def test_a_table_taken_out_of_tables_and_put_back_is_loaded_again(
        pg_db: Database, tmp_path: Path, engines: list[Engine], small_chunks: None) -> None:
    """Changes made while a table was out of TABLES are skipped (the publication still
    carries them); putting it back loads its rows again, and CDC goes on."""
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    create_items(pg_db, 2000)
    both = duckdb_config(pg_db, tmp_path, ["public.a", "public.items"], snapshot="initial",
                         delete_mode="hard")
    sink = DuckDBSink(both.duckdb_path, delete_mode="hard")
    first = _run_until_loaded(both, sink, pg_db, engines, lambda: pg_db.execute(
        "INSERT INTO a SELECT g, 'a' FROM generate_series(1, 50) g"))
    assert _replicated_tables(pg_db, both.slot_name) == {"public.a", "public.items"}
    _drained(first)

    only_a = duckdb_config(pg_db, tmp_path, ["public.a"], snapshot="initial",
                           delete_mode="hard")

    def while_out() -> None:
        pg_db.execute("UPDATE items SET payload = 'while out', n = -n WHERE n % 3 = 0")
        pg_db.execute("INSERT INTO items VALUES ('added while out', 1, 'x')")
        pg_db.execute("UPDATE a SET v = 'b' WHERE id < 10")

    second = _run_until_loaded(only_a, sink, pg_db, engines, while_out)
    assert _replicated_tables(pg_db, both.slot_name) == {"public.a"}
    [(stale,)] = sink.query("SELECT count(*) FROM public.items WHERE payload = 'while out'")
    assert stale == 0  # not replicated while out
    _drained(second)

    third = build_live_engine(both, sink=sink)
    engines.append(third)
    third.start()
    eventually(lambda: "public.items" in _replicated_tables(pg_db, both.slot_name),
               "the put-back table's rows to be loaded", 180)
    pg_db.execute("UPDATE items SET n = n + 1000 WHERE n % 7 = 0")
    wait_until_loaded(third, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.a": ["id"], "public.items": ["id"]})
    progress = third.snapshot_progress
    assert progress is not None and progress.kind == "on_demand"
    assert set(progress.tables) == {"public.items"}
    # Loaded as a configured table, not an on-demand addition: out of TABLES, it stops.
    [(plans,)] = pg_db.query("SELECT count(*) FROM dbmazz_snapshot_progress "
                             "WHERE kind = 'on_demand'")
    assert plans == 0
    _drained(third)
    fourth = _run_until_loaded(only_a, sink, pg_db, engines, lambda: pg_db.execute(
        "UPDATE items SET payload = 'out again'"))
    [(out_again,)] = sink.query("SELECT count(*) FROM public.items "
                                "WHERE payload = 'out again'")
    assert out_again == 0
    assert fourth.snapshot_progress is None or fourth.snapshot_progress.kind != "on_demand"


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "slot-from-before"])
def test_a_table_new_in_tables_gets_its_existing_rows(
        pg_db: Database, tmp_path: Path, engines: list[Engine], recorded: bool) -> None:
    """A table added to TABLES between runs has its existing rows loaded; a slot that
    predates the record still knows the tables setup adds to the publication."""
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    only_a = duckdb_config(pg_db, tmp_path, ["public.a"], delete_mode="hard")
    sink = DuckDBSink(only_a.duckdb_path, delete_mode="hard")
    _drained(_run_until_loaded(only_a, sink, pg_db, engines, lambda: pg_db.execute(
        "INSERT INTO a VALUES (1, 'one')")))
    create_items(pg_db, 500)
    if not recorded:
        pg_db.execute("DROP TABLE dbmazz_replicated_tables")
    both = duckdb_config(pg_db, tmp_path, ["public.a", "public.items"], delete_mode="hard")
    engine = build_live_engine(both, sink=sink)
    engines.append(engine)
    engine.start()
    eventually(lambda: "public.items" in _replicated_tables(pg_db, both.slot_name),
               "the new table's rows to be loaded", 180)
    pg_db.execute("DELETE FROM items WHERE n % 4 = 0")
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.a": ["id"], "public.items": ["id"]})
    assert _replicated_tables(pg_db, both.slot_name) == {"public.a", "public.items"}


def test_snapshot_never_warns_about_a_joined_table_at_every_start(
        pg_db: Database, tmp_path: Path, engines: list[Engine],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dbmazz")
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    create_items(pg_db, 50)
    only_a = duckdb_config(pg_db, tmp_path, ["public.a"], snapshot="never")
    sink = DuckDBSink(only_a.duckdb_path)
    _drained(_run_until_loaded(only_a, sink, pg_db, engines))
    both = duckdb_config(pg_db, tmp_path, ["public.a", "public.items"], snapshot="never")
    warning = ("public.items joined TABLES after slot dbmazz_e2e began streaming, and "
               "SNAPSHOT=never does not load their rows")
    for _ in range(2):
        caplog.clear()
        engine = _run_until_loaded(both, sink, pg_db, engines, lambda: pg_db.execute(
            "UPDATE items SET n = n + 1 WHERE n < 5"))
        assert warning in caplog.text
        _drained(engine)
    [(loaded,)] = sink.query("SELECT count(*) FROM public.items")
    assert loaded == 5  # only the rows changed since it joined
    assert _replicated_tables(pg_db, both.slot_name) == {"public.a"}


def test_a_table_dropped_from_the_publication_by_hand_is_loaded_again_at_restart(
        pg_db: Database, tmp_path: Path, engines: list[Engine]) -> None:
    """While out of the publication its changes are not decoded at all; the next start
    puts it back (setup) and loads it again."""
    create_items(pg_db, 300)
    config = duckdb_config(pg_db, tmp_path, ["public.items"], delete_mode="hard")
    sink = DuckDBSink(config.duckdb_path, delete_mode="hard")
    _drained(_run_until_loaded(config, sink, pg_db, engines))
    pg_db.execute(f"ALTER PUBLICATION {config.publication_name} DROP TABLE items")
    pg_db.execute("UPDATE items SET payload = 'unpublished' WHERE n % 2 = 0")
    pg_db.execute("INSERT INTO items VALUES ('unpublished', 0, '')")
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    progress = lambda: engine.snapshot_progress  # noqa: E731
    eventually(lambda: (p := progress()) is not None and p.kind == "on_demand"
               and p.tables_done == 1, "the table's rows to be loaded again", 180)
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.items": ["id"]})


def test_a_table_rewritten_after_the_snapshot_was_taken_is_read_again(
        pg_db: Database, tmp_path: Path, engines: list[Engine], small_chunks: None) -> None:
    """A rewrite is not MVCC-safe: read through the exported snapshot, a table rewritten
    after it (its rows copied under the rewriting transaction) looks empty."""
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO a SELECT g, repeat('a', 100) FROM generate_series(1, 2000) g")
    pg_db.execute("CREATE TABLE b (id int PRIMARY KEY, n int, v text)")
    pg_db.execute("INSERT INTO b SELECT g, g, repeat('b', 100) FROM generate_series(1, 2000) g")
    config = duckdb_config(pg_db, tmp_path, ["public.a", "public.b"], snapshot="initial",
                           snapshot_workers=1)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)  # the slot and its snapshot exist now
    engines.append(engine)
    pg_db.execute("ALTER TABLE b ALTER COLUMN n TYPE bigint")
    pg_db.execute("UPDATE b SET v = 'after', n = 5000000000 + n WHERE id % 10 = 0")
    engine.start()
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.a": ["id"], "public.b": ["id"]})
    progress = engine.snapshot_progress
    assert progress is not None and progress.tables["public.b"].rows_done == 2000


def test_a_column_retyped_by_a_rewrite_during_an_on_demand_snapshot_loads_exactly(
        pg_db: Database, tmp_path: Path, engines: list[Engine]) -> None:
    """ALTER TABLE … TYPE after the watermark, before the readers lock the table: the
    snapshot is taken again, and reads the table with its new column types (a float8 read
    as the float4 the table had at first was rounded, silently)."""
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    config = duckdb_config(pg_db, tmp_path, ["public.a"], snapshot="initial")
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    wait_until_loaded(engine, mark(pg_db))  # streaming: on-demand snapshots are taken
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, f real)")
    pg_db.execute("INSERT INTO t SELECT g, g / 4.0 FROM generate_series(1, 50) g")
    assert engine.snapshots is not None
    store = engine.snapshots.context.store
    save_plan = store.save_plan
    watermarks: list[int] = []

    def after_watermark(chunks: Any, version: int, *args: Any, **kwargs: Any) -> None:
        save_plan(chunks, version, *args, **kwargs)
        watermarks.append(version)
        if len(watermarks) == 1:  # the first watermark is taken; no reader has locked t
            pg_db.execute("UPDATE t SET f = 0 WHERE id = 1")  # streams t's first shape
            pg_db.execute("ALTER TABLE t ALTER COLUMN f TYPE double precision")
            pg_db.execute("UPDATE t SET f = f + 0.123456789012 WHERE id % 2 = 0")

    store.save_plan = after_watermark  # type: ignore[method-assign]
    handle = engine.request_snapshot(["public.t"])
    assert handle.wait(60)
    assert handle.error is None and handle.completed
    assert len(watermarks) == 2  # read again under a new watermark
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, sink, {"public.t": ["id"]})


def test_an_on_demand_snapshot_is_refused_until_the_engine_streams(
        pg_db: Database, tmp_path: Path, engines: list[Engine]) -> None:
    """Requested before streaming, the table joined the initial snapshot's plan, which
    replaced its on-demand record: after a restart its changes were no longer applied.
    During the initial snapshot, restarting its unfinished plan as an interrupted one
    clashed with it ('already running') and stopped the engine."""
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g")
    config = duckdb_config(pg_db, tmp_path, ["public.a"], snapshot="initial")
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    with pytest.raises(SetupError, match="does not stream"):
        engine.request_snapshot(["public.t"])
    refused: list[SetupError] = []

    def request(table: str) -> None:
        try:
            engine.request_snapshot(["public.t"])
        except SetupError as exc:
            refused.append(exc)

    on_first_chunk_done(engine, request)
    engine.start()
    wait_until_loaded(engine, mark(pg_db))
    assert len(refused) == 1
    handle = engine.request_snapshot(["public.t"])
    assert handle.wait(60)
    assert handle.error is None and handle.completed
    assert engine.progress.last_error is None
    assert_replicated(pg_db, sink, {"public.t": ["id"], "public.a": ["id"]})
