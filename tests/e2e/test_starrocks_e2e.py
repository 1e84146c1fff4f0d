"""PostgreSQL → dbmazz → StarRocks (the emulator), end to end: the target equals the source."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine, build_replay_engine
from dbmazz.engine.core import Engine
from dbmazz.testing.compare import compare
from dbmazz.testing.fixtures import Database
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import mark, wait_until_loaded
from tests.e2e.test_duckdb_e2e import TABLES, create, workload

DB = "analytics"


def starrocks_config(db: Database, emulator_url: str, mysql_port: int, tables: list[str],
                     **extra: Any) -> Config:
    return Config.load(
        {
            "source_url": db.dsn,
            "tables": ",".join(tables),
            "sink": "starrocks",
            "starrocks_url": emulator_url,
            "starrocks_mysql_port": mysql_port,
            "starrocks_db": DB,
            "slot_name": "dbmazz_sr",
            "publication_name": "dbmazz_sr",
            "flush_interval_ms": 100,
            "flush_rows": 1000,
            **extra,
        },
        env_file=None,
    )


def emulator_fetcher(rows: Callable[[], list[dict[str, Any]]]
                     ) -> Callable[[list[str]], list[tuple[Any, ...]]]:
    def fetch(columns: list[str]) -> list[tuple[Any, ...]]:
        # StarRocks column names compare without case (a column renamed at the source to
        # another case is still the target's column under its first name).
        live = [{k.lower(): v for k, v in r.items()} for r in rows()]
        return [tuple(r.get(c.lower()) for c in columns) for r in live
                if not r.get("dbmazz_is_deleted")]

    return fetch


def assert_replicated(db: Database, rows_of: Callable[[str], list[dict[str, Any]]],
                      tables: dict[str, list[str]]) -> None:
    problems = []
    with db.connect() as conn:
        for name, keys in tables.items():
            namespace, table = name.split(".", 1)
            diff = compare(conn, namespace, table, keys,
                           emulator_fetcher(lambda t=table: rows_of(t)))
            if not diff.equal:
                problems.append(str(diff))
    assert not problems, "\n".join(problems)


class RecordingSink:
    """The real sink, plus a record of every batch written (to see split parts)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[Any] = []

    def setup(self, tables: Any) -> None:
        self.inner.setup(tables)

    def apply_schema_delta(self, delta: Any) -> None:
        self.inner.apply_schema_delta(delta)

    def write(self, batch: Any) -> Any:
        self.batches.append(batch)
        return self.inner.write(batch)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("load_format", ["json", "csv"])
def test_mixed_workload_into_starrocks(pg_db: Database, starrocks: StarRocksEmulator,
                                       engines: list[Engine], load_format: str) -> None:
    create(pg_db)
    pg_db.execute("ALTER TABLE public.docs_default REPLICA IDENTITY DEFAULT")
    pg_db.execute("ALTER TABLE shop.orders REPLICA IDENTITY FULL")
    pg_db.execute("ALTER TABLE public.lines REPLICA IDENTITY FULL")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, list(TABLES),
                              replica_identity="keep", load_format=load_format)
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    workload(pg_db)
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, lambda table: starrocks.rows(DB, table), TABLES)
    # Soft deletes are flagged rows, read back over the MySQL protocol like real StarRocks.
    [(deleted,)] = starrocks.execute(
        f"SELECT count(*) FROM {DB}.orders WHERE dbmazz_is_deleted = true")
    assert deleted > 0
    # Built-in types the Relation message names only by OID still map by name (§ type
    # mapping): jsonb → JSON (loaded as objects, not strings), varchar(40) → VARCHAR(160).
    types = dict(starrocks.execute(
        "SELECT CONCAT(TABLE_NAME, '.', COLUMN_NAME), COLUMN_TYPE FROM information_schema.COLUMNS"
        f" WHERE TABLE_SCHEMA = '{DB}'"))
    assert types["orders.doc"] == "json"
    assert types["lines.note"] == "varchar(160)"
    docs = [r["doc"] for r in starrocks.rows(DB, "orders") if r["doc"] is not None]
    assert docs and all(doc.startswith("{") for doc in docs)  # objects, not JSON strings


JSON_SCALARS = ("""'"just a string"', '"123"'""", """'"{\\"a\\": 1}"', '123'""",
                """'true', 'false'""", """'{"a": "1"}', '["x", 2]'""")


@pytest.mark.parametrize("load_format", ["json", "csv"])
def test_json_values_land_as_the_json_they_are(pg_db: Database, starrocks: StarRocksEmulator,
                                               engines: list[Engine], load_format: str) -> None:
    # A JSON string stays a string (the string "123" is not the number 123), in the
    # snapshot and in CDC, in either load format.
    pg_db.execute("CREATE TABLE public.js (id int PRIMARY KEY, j json, jb jsonb)")
    for n, values in enumerate(JSON_SCALARS, 1):
        pg_db.execute(f"INSERT INTO public.js VALUES ({n}, {values})")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.js"],
                              load_format=load_format, snapshot="initial")
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    for n, values in enumerate(JSON_SCALARS, 11):
        pg_db.execute(f"INSERT INTO public.js VALUES ({n}, {values})")
    wait_until_loaded(engine, mark(pg_db))
    assert_replicated(pg_db, lambda table: starrocks.rows(DB, table), {"public.js": ["id"]})
    stored = {r["id"]: (r["j"], r["jb"]) for r in starrocks.rows(DB, "js")}
    for n in (1, 11):
        assert stored[n] == ('"just a string"', '"123"')
        assert stored[n + 1][0] == '"{\\"a\\": 1}"'


@pytest.mark.parametrize("load_format", ["json", "csv"])
def test_json_null_beside_text_holding_the_csv_separators(
        pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine],
        load_format: str) -> None:
    # The JSON value null lands as SQL NULL (no Stream Load keeps it: a CSV field would be
    # the JSON string "null"), its batch going as JSON; the text beside it, holding the CSV
    # separators, loads as it is either way.
    pg_db.execute("CREATE TABLE public.jt (id int PRIMARY KEY, jb jsonb, t text)")
    pg_db.execute("INSERT INTO public.jt VALUES (1, 'null', E'ctl\\x01char\\x02'), "
                  "(2, NULL, 'plain')")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.jt"],
                              load_format=load_format, snapshot="initial")
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO public.jt VALUES (3, 'null', E'\\x01'), (4, '[null]', 'x')")
    wait_until_loaded(engine, mark(pg_db))
    assert sorted((r["id"], r["jb"], r["t"]) for r in starrocks.rows(DB, "jt")) == [
        (1, None, "ctl\x01char\x02"), (2, None, "plain"), (3, None, "\x01"),
        (4, "[null]", "x")]


@pytest.mark.parametrize("dropped_columns", ["fill_null", "keep"])
def test_a_column_dropped_at_the_source(pg_db: Database, starrocks: StarRocksEmulator,
                                        engines: list[Engine], dropped_columns: str) -> None:
    pg_db.execute("CREATE TABLE public.dc (id int PRIMARY KEY, a int, s text)")
    pg_db.execute("INSERT INTO public.dc VALUES (1, 1, 'old1'), (2, 2, 'old2')")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.dc"],
                              dropped_columns=dropped_columns, snapshot="initial")
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    wait_until_loaded(engine, mark(pg_db))
    pg_db.execute("ALTER TABLE public.dc DROP COLUMN s")
    pg_db.execute("UPDATE public.dc SET a = 10 WHERE id = 1")
    pg_db.execute("INSERT INTO public.dc VALUES (3, 3)")
    wait_until_loaded(engine, mark(pg_db))
    rows = sorted((r["id"], r["a"], r["s"]) for r in starrocks.rows(DB, "dc"))
    # The target keeps the column; rows written after the drop get NULL in it, or keep
    # their old value with DROPPED_COLUMNS=keep. Rows not written since are untouched.
    kept = "old1" if dropped_columns == "keep" else None
    assert rows == [(1, 10, kept), (2, 2, "old2"), (3, 3, None)]


def test_unconstrained_numeric_as_string_keeps_every_value(
        pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine]) -> None:
    # DECIMAL(38,9) cannot hold these; STARROCKS_UNCONSTRAINED_NUMERIC=string keeps the text.
    values = ["NaN", "123456789012345678901234567890123.5", "0.0000000000001", "-1.50"]
    pg_db.execute("CREATE TABLE public.nu (id int PRIMARY KEY, n numeric)")
    pg_db.execute(f"INSERT INTO public.nu VALUES (1, '{values[0]}')")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.nu"],
                              starrocks_unconstrained_numeric="string", snapshot="initial")
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    for n, value in enumerate(values[1:], 2):
        pg_db.execute(f"INSERT INTO public.nu VALUES ({n}, '{value}')")
    wait_until_loaded(engine, mark(pg_db))
    assert sorted((r["id"], r["n"]) for r in starrocks.rows(DB, "nu")) == list(
        enumerate(values, 1))


DOMAINS = """
CREATE DOMAIN qty AS int8 CHECK (VALUE >= 0);
CREATE DOMAIN qty_again AS qty;
CREATE DOMAIN price AS numeric(10,2);
CREATE DOMAIN stamp AS timestamptz;
CREATE DOMAIN email AS varchar(40);
CREATE DOMAIN doc AS jsonb;
CREATE TABLE public.dom (id int PRIMARY KEY, q qty, q2 qty_again, p price, s stamp,
                         e email, qs qty[], d doc);
"""


def test_domain_columns_load_as_their_base_type(
        pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine]) -> None:
    # A domain is its base type with a constraint: its target column is the base type's
    # (a domain over int8 is a BIGINT, not the text of the number), in snapshot and CDC.
    pg_db.execute(DOMAINS)
    pg_db.execute("INSERT INTO public.dom VALUES (1, 5, 6, 12.5, '2024-02-29 12:00+02', "
                  "'a@b.c', '{1,2}', '{\"a\": [1, 2]}')")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.dom"],
                              snapshot="initial")
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO public.dom VALUES (2, 9007199254740993, 0, -0.01, "
                  "'1999-12-31 23:59:59.5+00', 'x@y.z', '{}', '\"123\"'), "
                  "(3, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    wait_until_loaded(engine, mark(pg_db))
    types = dict(starrocks.execute(
        "SELECT column_name, column_type FROM information_schema.columns "
        f"WHERE table_schema = '{DB}' AND table_name = 'dom'"))
    assert {c: types[c].lower() for c in ("q", "q2", "p", "s", "e", "qs", "d")} == {
        "q": "bigint(20)", "q2": "bigint(20)", "p": "decimal(10,2)", "s": "datetime",
        "e": "varchar(160)", "qs": "array<bigint(20)>", "d": "json"}
    # Every column but the array (psycopg reads an array of a domain as its text).
    pg_db.execute("CREATE VIEW public.dom_scalars AS SELECT id, q, q2, p, s, e, d "
                  "FROM public.dom")
    assert_replicated(pg_db, lambda _view: starrocks.rows(DB, "dom"),
                      {"public.dom_scalars": ["id"]})
    assert sorted((r["id"], r["q"], r["qs"]) for r in starrocks.rows(DB, "dom")) == [
        (1, 5, [1, 2]), (2, 9007199254740993, []), (3, None, None)]


def test_hard_deletes_remove_rows(pg_db: Database, starrocks: StarRocksEmulator,
                                  engines: list[Engine]) -> None:
    pg_db.execute("CREATE TABLE public.h (id int PRIMARY KEY, v text)")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.h"],
                              delete_mode="hard")
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO public.h SELECT g, 'v' || g FROM generate_series(1, 100) g")
    pg_db.execute("DELETE FROM public.h WHERE id > 50")
    wait_until_loaded(engine, mark(pg_db))
    assert sorted(r["id"] for r in starrocks.rows(DB, "h")) == list(range(1, 51))


def test_no_lsn_confirmed_before_the_load_is_acknowledged(
    pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine]
) -> None:
    pg_db.execute("CREATE TABLE public.f (id int PRIMARY KEY, v int)")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.f"])
    engine = build_live_engine(config)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO public.f VALUES (1, 1)")
    wait_until_loaded(engine, mark(pg_db))
    confirmed = engine.durable_lsn
    # Every load fails until the fault is cleared: nothing may be confirmed meanwhile.
    starrocks.faults.fe_error(status=500, times=None)
    pg_db.execute("INSERT INTO public.f SELECT g, g FROM generate_series(2, 500) g")
    blocked = mark(pg_db)
    assert not engine.wait_durable(blocked, timeout=2.0)
    assert engine.durable_lsn == confirmed
    [(slot_lsn,)] = pg_db.query(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'dbmazz_sr'")
    from dbmazz.lsn import parse_lsn

    assert parse_lsn(slot_lsn) < blocked
    starrocks.faults.clear()
    wait_until_loaded(engine, blocked)
    assert len(starrocks.rows(DB, "f")) == 500


def test_replay_cli_against_standalone_emulator(pg_db: Database, tmp_path: Path) -> None:
    from dbmazz.source.capture import capture
    from dbmazz.source.setup import setup_source

    create(pg_db)
    setup_source(pg_db.dsn, list(TABLES), publication="cap_pub", slot="cap_slot")
    workload(pg_db)
    out = tmp_path / "wal.arrows"
    capture(pg_db.dsn, "cap_slot", "cap_pub", str(out), until_lsn=mark(pg_db))

    server = subprocess.Popen(
        [sys.executable, "-m", "dbmazz.testing.starrocks", "--http-port", "0",
         "--mysql-port", "0"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        url = re.search(r"FE http (\S+),", banner)
        mysql = re.search(r"mysql 127\.0\.0\.1:(\d+)", banner)
        assert url and mysql, banner
        result = subprocess.run(
            [sys.executable, "-m", "dbmazz", "replay", str(out), "--sink", "starrocks",
             "--starrocks-url", url.group(1), "--starrocks-mysql-port", mysql.group(1),
             "--starrocks-db", DB],
            capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", port=int(mysql.group(1)), user="root",
                               password="", database=DB)

        def rows_of(table: str) -> list[dict[str, Any]]:
            with conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute(f"SELECT id, dbmazz_is_deleted FROM {DB}.{table}")
                return list(cur.fetchall())

        # Row counts match over the MySQL protocol; values are compared in the test above.
        [(live,)] = pg_db.query("SELECT count(*) FROM shop.orders")
        assert sum(1 for r in rows_of("orders") if not r["dbmazz_is_deleted"]) == live
        conn.close()
    finally:
        server.terminate()
        server.wait(30)


def test_replay_engine_into_emulator_values(pg_db: Database, tmp_path: Path,
                                            starrocks: StarRocksEmulator) -> None:
    from dbmazz.source.capture import capture
    from dbmazz.source.setup import setup_source

    create(pg_db)
    setup_source(pg_db.dsn, list(TABLES), publication="cap_pub2", slot="cap_slot2")
    workload(pg_db)
    out = tmp_path / "wal.arrows"
    capture(pg_db.dsn, "cap_slot2", "cap_pub2", str(out), until_lsn=mark(pg_db))
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, list(TABLES))
    build_replay_engine(config, out).run()
    assert_replicated(pg_db, lambda table: starrocks.rows(DB, table), TABLES)


def test_large_transaction_is_split_and_committed_whole(
    pg_db: Database, starrocks: StarRocksEmulator, engines: list[Engine]
) -> None:
    pg_db.execute("CREATE TABLE public.big (id bigint PRIMARY KEY, v int, t text)")
    pg_db.execute("CREATE TABLE public.side (id int PRIMARY KEY)")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port,
                              ["public.big", "public.side"], flush_rows=2000)
    from dbmazz.engine.build import make_sink

    sink = RecordingSink(make_sink(config))
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    with pg_db.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO public.side VALUES (1)")
        conn.execute("INSERT INTO public.big SELECT g, g % 7, md5(g::text) "
                     "FROM generate_series(1, 20000) g")
        conn.execute("UPDATE public.big SET v = -1 WHERE id % 100 = 0")
    pg_db.execute("DELETE FROM public.big WHERE id <= 10")
    wait_until_loaded(engine, mark(pg_db))
    # The transaction really went through the split path, and every table heard its end.
    parts = {(b.table.name, b.split.index, b.split.last) for b in sink.batches if b.split}
    assert any(not last for _, _, last in parts)
    assert {name for name, _, last in parts if last} == {"big", "side"}
    assert_replicated(pg_db, lambda table: starrocks.rows(DB, table),
                      {"public.big": ["id"], "public.side": ["id"]})
