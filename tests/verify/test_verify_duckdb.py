"""`dbmazz verify` against a real PostgreSQL and a DuckDB target loaded by a running engine."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.errors import SinkError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from dbmazz.verify.report import VerifyReport
from dbmazz.verify.run import VerifyRequest, run_verify
from dbmazz.verify.target import DuckDBTarget
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded

#: One column per type family of docs/types.md (the key is ``id``).
TYPES = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN money2 AS numeric(10,2);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE public.all_types (
    id int PRIMARY KEY, c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_oid oid,
    c_float4 float4, c_float8 float8, c_num numeric(12,2), c_numu numeric, c_bytea bytea,
    c_date date, c_ts timestamp, c_tstz timestamptz, c_time time, c_timetz timetz,
    c_interval interval, c_json json, c_jsonb jsonb, c_text text, c_varchar varchar(10),
    c_bpchar char(5), c_uuid uuid, c_inet inet, c_enum mood, c_domain money2,
    c_int_arr int4[], c_text_arr text[], c_num_arr numeric(10,2)[],
    c_name name, c_char "char", c_cidr cidr, c_macaddr macaddr, c_money money, c_xml xml,
    c_bit bit(4), c_varbit varbit, c_lsn pg_lsn, c_range int4range, c_point point,
    c_tsvector tsvector, c_pair pair, c_bignum numeric(50,10), c_tstz_arr timestamptz[],
    c_bool_arr bool[], c_date_arr date[]
);
"""
ROW = """
INSERT INTO public.all_types SELECT g, g %% 2 = 0, g, g * 10, g::int8 * 1000000000, g, g / 4.0,
    g / 3.0, g * 1.25, g * 1.5, decode(lpad(to_hex(g), 4, '0'), 'hex'),
    DATE '2024-02-29' + g, TIMESTAMP '2024-01-01 00:00:00.123456' + g * interval '1 h',
    TIMESTAMPTZ '2024-01-01 00:00:00+05:30' + g * interval '1 s', TIME '12:00' ,
    TIMETZ '12:00+02', interval '1 year 2 mons 3 days' * g,
    ('{"b": 1, "a": [' || g || ', "x"]}')::json, ('{"b": 1, "a": ' || g || '}')::jsonb,
    't' || g, 'v' || g, 'c' || g, md5(g::text)::uuid, '10.0.0.1', 'ok', g * 0.5,
    ARRAY[g, NULL, 3], ARRAY['a', 'b' || g], ARRAY[g * 1.10, 2.00]::numeric(10,2)[],
    'n' || g, 'x', '10.1.0.0/16', '08:00:2b:01:02:03', g * 1.5, ('<a>' || g || '</a>')::xml,
    B'1010', B'101', ('0/' || to_hex(g))::pg_lsn, int4range(g, g + 10), point(g, 1.5),
    to_tsvector('simple', 'a b' || g), ROW(g, 'p' || g)::pair,
    g * 1234567890123456789.0123456789,
    ARRAY[TIMESTAMPTZ '2024-01-01 00:00:00.5+00' + g * interval '1 min'],
    ARRAY[true, false, NULL], ARRAY[DATE '2024-01-01' + g]
FROM generate_series(1, %s) g
"""
#: Values with defined fallbacks (docs/types.md): NaN, ±Infinity, -0, infinite dates.
SPECIAL = """
INSERT INTO public.all_types (id, c_float4, c_float8, c_num, c_numu, c_date, c_ts, c_tstz,
                              c_text, c_varchar)
VALUES (1000, 'NaN', '-0', 'NaN', NULL, 'infinity', 'infinity', 'infinity', '', ' ')
"""
COLUMNS = ["c_bool", "c_int2", "c_int4", "c_int8", "c_oid", "c_float4", "c_float8", "c_num",
           "c_numu", "c_bytea", "c_date", "c_ts", "c_tstz", "c_time", "c_timetz",
           "c_interval", "c_json", "c_jsonb", "c_text", "c_varchar", "c_bpchar", "c_uuid",
           "c_inet", "c_enum", "c_domain", "c_int_arr", "c_text_arr", "c_num_arr",
           "c_name", "c_char", "c_cidr", "c_macaddr", "c_money", "c_xml", "c_bit",
           "c_varbit", "c_lsn", "c_range", "c_point", "c_tsvector", "c_pair", "c_bignum",
           "c_tstz_arr", "c_bool_arr", "c_date_arr"]

OTHERS = """
CREATE TABLE public.lines (order_id int, line int, qty int, note text,
                           PRIMARY KEY (order_id, line));
CREATE TABLE public.names (name text PRIMARY KEY, v int);
"""
TABLES = ["public.all_types", "public.lines", "public.names"]


@pytest.fixture
def running(pg_db: Database, tmp_path: Path) -> Iterator[tuple[Config, Engine, DuckDBSink]]:
    pg_db.execute(TYPES)
    pg_db.execute(OTHERS)
    pg_db.execute(ROW, (200,))
    pg_db.execute(SPECIAL)
    pg_db.execute("INSERT INTO public.lines SELECT g / 10, g % 10, g, 'n' || g "
                  "FROM generate_series(1, 300) g")
    pg_db.execute("INSERT INTO public.names SELECT 'n-' || g || 'é', g "
                  "FROM generate_series(1, 300) g")
    config = duckdb_config(pg_db, tmp_path, TABLES, verify_max_rows_per_s=0)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engine.start()
    try:
        wait_until_loaded(engine, mark(pg_db))
        yield config, engine, sink
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)


def verify(config: Config, engine: Engine, sink: DuckDBSink, *, repair: bool = False,
           tables: tuple[str, ...] = (), ranges: int = 16) -> VerifyReport:
    target = DuckDBTarget(sink.read_cursor(), owned=True)
    try:
        return run_verify(config, VerifyRequest(tables=tables, ranges=ranges, repair=repair,
                                                max_keys=100),
                          target=target, engine=engine, write=engine.sink.write)
    finally:
        target.close()


def test_equal_while_cdc_runs_under_load(running: tuple[Config, Engine, DuckDBSink],
                                         pg_db: Database) -> None:
    config, engine, sink = running
    stop = threading.Event()

    def load() -> None:
        i = 0
        with pg_db.connect() as conn:
            while not stop.is_set():
                i += 1
                conn.execute("UPDATE public.all_types SET c_int4 = c_int4 + 1, c_text = %s "
                             "WHERE id = %s", (f"u{i}", i % 200 + 1))
                conn.execute("INSERT INTO public.lines VALUES (%s, 0, 1, 'x') "
                             "ON CONFLICT DO NOTHING", (1000 + i,))
                conn.execute("DELETE FROM public.names WHERE v = %s", (i,))

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    try:
        report = verify(config, engine, sink)
    finally:
        stop.set()
        writer.join(30)
    assert report.target_state == "durable"
    assert report.equal, report.to_dict()
    assert {t.table for t in report.tables} == set(TABLES)
    assert report.tables[0].source_rows == report.tables[0].target_rows > 0


def test_drift_found_per_type_and_repaired(running: tuple[Config, Engine, DuckDBSink],
                                           pg_db: Database) -> None:
    config, engine, sink = running
    # Row id = 10 + i has column i changed (to NULL) in the target, behind dbmazz's back.
    for i, column in enumerate(COLUMNS):
        sink.query(f'UPDATE public.all_types SET "{column}" = NULL WHERE id = {10 + i}')
    sink.query("DELETE FROM public.all_types WHERE id = 100")
    sink.query("INSERT INTO public.all_types (id, c_text, dbmazz_op_type, dbmazz_is_deleted, "
               "dbmazz_synced_at, dbmazz_cdc_version) VALUES (5000, 'extra', 0, false, "
               "now(), 1)")
    sink.query("UPDATE public.lines SET qty = -1 WHERE order_id = 7 AND line = 3")
    sink.query("UPDATE public.names SET name = 'n-renamed' WHERE name = 'n-5é'")
    # NULL vs empty string is a difference.
    pg_db.execute("UPDATE public.all_types SET c_text = NULL WHERE id = 150")
    wait_until_loaded(engine, mark(pg_db))
    sink.query("UPDATE public.all_types SET c_text = '' WHERE id = 150")

    report = verify(config, engine, sink)
    assert not report.equal
    types, lines, names = report.tables
    changed = {d.key["id"]: d.columns for d in types.diffs if d.kind == "changed"}
    expected = {10 + i: (column,) for i, column in enumerate(COLUMNS)}
    expected[150] = ("c_text",)
    assert changed == expected
    assert [d.key for d in types.diffs if d.kind == "missing"] == [{"id": 100}]
    assert [d.key for d in types.diffs if d.kind == "extra"] == [{"id": 5000}]
    assert (types.missing, types.extra, types.changed) == (1, 1, len(COLUMNS) + 1)
    assert [(d.kind, d.key, d.columns) for d in lines.diffs] == [
        ("changed", {"order_id": 7, "line": 3}, ("qty",))]
    assert sorted((d.kind, d.key["name"]) for d in names.diffs) == [
        ("extra", "n-renamed"), ("missing", "n-5é")]

    repaired = verify(config, engine, sink, repair=True)
    assert sum(t.repaired for t in repaired.tables) == len(COLUMNS) + 1 + 1 + 1 + 1 + 2
    again = verify(config, engine, sink)
    assert again.equal, again.to_dict()


def test_a_duckdb_file_that_does_not_exist_is_named_as_such(tmp_path: Path) -> None:
    # Not "a running engine holds the file": there is no file.
    with pytest.raises(SinkError) as info:
        DuckDBTarget.open(str(tmp_path / "nope.duckdb"))
    assert "does not exist" in info.value.message
    assert info.value.hint is not None and "DUCKDB_PATH" in info.value.hint
    assert not (tmp_path / "nope.duckdb").exists()


#: A publication that narrows its table (PostgreSQL 15+): the target holds only the
#: published rows and columns, so the verify must read the source the same way.
NARROWED = """
CREATE TABLE public.orders (id int PRIMARY KEY, status text, amount int, secret text);
INSERT INTO public.orders SELECT g, CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'open' END, g,
    's' || g FROM generate_series(1, 90) g;
CREATE PUBLICATION narrow FOR TABLE public.orders (id, status, amount)
    WHERE (status <> 'draft');
"""


def test_a_narrowing_publication_is_compared_as_it_publishes(pg_db: Database,
                                                            tmp_path: Path) -> None:
    if int(pg_db.query("SHOW server_version_num")[0][0]) < 150000:
        pytest.skip("row filters and column lists need PostgreSQL 15+")
    pg_db.execute(NARROWED)
    config = duckdb_config(pg_db, tmp_path, ["public.orders"], publication_name="narrow",
                           replica_identity="keep", verify_max_rows_per_s=0)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engine.start()
    try:
        wait_until_loaded(engine, mark(pg_db))
        # Was: the unpublished column `secret` failed the target read, and the filtered-out
        # drafts were "missing" (a repair would have copied them in).
        report = verify(config, engine, sink)
        assert report.equal, report.to_dict()
        assert report.tables[0].source_rows == report.tables[0].target_rows == 60
        sink.query("DELETE FROM public.orders WHERE id = 4")
        drift = verify(config, engine, sink, repair=True)
        assert [(d.kind, d.key) for d in drift.tables[0].diffs] == [("missing", {"id": 4})]
        assert drift.tables[0].repaired == 1
        assert verify(config, engine, sink).equal
        assert sink.query("SELECT count(*) FROM public.orders WHERE status = 'draft'") == [(0,)]
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)


def test_a_column_added_at_the_source_compares_as_null_until_the_target_has_it(
        running: tuple[Config, Engine, DuckDBSink], pg_db: Database) -> None:
    config, engine, sink = running
    # No row has changed since: the stream has not told dbmazz, the target lacks both.
    pg_db.execute("ALTER TABLE public.lines ADD COLUMN w int, ADD COLUMN x int DEFAULT 7")
    wait_until_loaded(engine, mark(pg_db))
    # Was: the target read failed ('column "w" not found'), the table could not be checked.
    report = verify(config, engine, sink, tables=("public.lines",), repair=True)
    [lines] = report.tables
    assert lines.changed == 300 and {d.columns for d in lines.diffs} == {("x",)}
    # The sink cannot write a column its table lacks: not repaired, and said why.
    assert lines.repaired == 0 and lines.error is not None
    assert lines.error.startswith("not repaired: public.lines: the target lacks column(s) w, x")
    [note] = report.notes
    assert note.startswith("public.lines: the target lacks column(s) w, x") and note in lines.error
    pg_db.execute("UPDATE public.lines SET qty = qty WHERE order_id = 0 AND line = 1")
    wait_until_loaded(engine, mark(pg_db))
    # The change brought the columns (NULL in the rows it did not write): now repaired.
    assert verify(config, engine, sink, tables=("public.lines",), repair=True
                  ).tables[0].repaired == 299
    assert verify(config, engine, sink, tables=("public.lines",)).equal


def test_a_repair_keeps_what_the_publication_does_not_publish(pg_db: Database,
                                                              tmp_path: Path) -> None:
    # An archive: deletes (and truncates) are not published, the target keeps those rows.
    pg_db.execute("CREATE TABLE public.arch (id int PRIMARY KEY, v int);"
                  "INSERT INTO public.arch SELECT g, g FROM generate_series(1, 40) g;"
                  "CREATE PUBLICATION archive FOR TABLE public.arch "
                  "WITH (publish = 'insert, update')")
    config = duckdb_config(pg_db, tmp_path, ["public.arch"], publication_name="archive",
                           verify_max_rows_per_s=0)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engine.start()
    try:
        pg_db.execute("DELETE FROM public.arch WHERE id <= 3")
        wait_until_loaded(engine, mark(pg_db))
        sink.query("UPDATE public.arch SET v = -1 WHERE id = 10")   # drift: repaired
        report = verify(config, engine, sink, repair=True)
        [arch] = report.tables
        assert (arch.missing, arch.changed, arch.extra) == (0, 1, 3)
        assert any("does not publish delete, truncate" in n for n in report.notes)
        # Was: the 3 rows the archive keeps were deleted by the repair.
        assert arch.repaired == 1
        again = verify(config, engine, sink)
        assert (again.tables[0].changed, again.tables[0].extra) == (0, 3)
        assert sink.query("SELECT count(*) FROM public.arch WHERE NOT dbmazz_is_deleted"
                          ) == [(40,)]
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)
