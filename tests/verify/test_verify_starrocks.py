"""`dbmazz verify` against a StarRocks target (the emulator, read over its MySQL port)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dbmazz import cli
from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.snapshot.load import snapshot_batch
from dbmazz.testing.fixtures import Database
from dbmazz.testing.starrocks import StarRocksEmulator
from dbmazz.verify.report import VerifyReport
from dbmazz.verify.run import VerifyRequest, load_schemas, open_target, run_verify
from dbmazz.verify.source import SourceSnapshot
from tests.e2e.harness import mark, wait_until_loaded
from tests.e2e.test_starrocks_e2e import DB, starrocks_config
from tests.verify.test_verify_duckdb import COLUMNS, OTHERS, ROW, SPECIAL, TYPES

TABLES = ["public.all_types", "public.lines", "public.names"]


@pytest.fixture
def running(pg_db: Database, starrocks: StarRocksEmulator) -> Iterator[tuple[Config, Engine]]:
    pg_db.execute(TYPES)
    pg_db.execute(OTHERS)
    pg_db.execute(ROW, (120,))
    pg_db.execute(SPECIAL)
    pg_db.execute("INSERT INTO public.lines SELECT g / 10, g % 10, g, 'n' || g "
                  "FROM generate_series(1, 300) g")
    pg_db.execute("INSERT INTO public.names SELECT 'n-' || g || 'é', g "
                  "FROM generate_series(1, 300) g")
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, TABLES,
                              verify_max_rows_per_s=0, grpc_port=0)
    engine = build_live_engine(config)
    engine.start()
    try:
        wait_until_loaded(engine, mark(pg_db))
        yield config, engine
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)


def verify(config: Config, engine: Engine, repair: bool = False) -> VerifyReport:
    target = open_target(config)
    try:
        return run_verify(config, VerifyRequest(ranges=8, repair=repair, max_keys=100),
                          target=target, engine=engine, write=engine.sink.write)
    finally:
        target.close()


def test_equal_for_every_type(running: tuple[Config, Engine]) -> None:
    config, engine = running
    report = verify(config, engine)
    assert report.equal, report.to_dict()
    assert [t.source_rows for t in report.tables] == [121, 300, 300]
    assert [t.target_rows for t in report.tables] == [121, 300, 300]


def test_drift_per_type_found_and_repaired(running: tuple[Config, Engine],
                                           starrocks: StarRocksEmulator) -> None:
    config, engine = running
    [schema, *_], registry = load_schemas(config.source_dsn, TABLES, {})
    with SourceSnapshot(config.source_dsn, registry, max_rows_per_s=0,
                        statement_timeout_s=10) as source:
        rows = pa.concat_tables(list(source.scan(schema)))
    [(version,)] = starrocks.execute(f"SELECT max(dbmazz_cdc_version) FROM {DB}.all_types")
    # Row id = 10 + i gets column i as NULL, written behind dbmazz's back with a version
    # newer than its load (so the target takes it) and older than any verify's snapshot.
    for i, column in enumerate(COLUMNS):
        row = rows.filter(pc.equal(rows.column("id"), 10 + i))
        index = row.schema.get_field_index(column)
        row = row.set_column(index, column, pa.nulls(1, row.schema.field(column).type))
        engine.sink.write(snapshot_batch(schema, row, int(version) + 1, f"drift-{i}"))
    starrocks.execute(f"INSERT INTO {DB}.lines (order_id, line, qty, note, dbmazz_op_type, "
                      "dbmazz_is_deleted, dbmazz_synced_at, dbmazz_cdc_version) VALUES "
                      "(7, 3, -1, 'n73', 0, false, '2024-01-01 00:00:00', 1)")
    starrocks.execute(f"INSERT INTO {DB}.names (name, v, dbmazz_op_type, dbmazz_is_deleted, "
                      "dbmazz_synced_at, dbmazz_cdc_version) VALUES "
                      "('n-5é', 5, 2, true, '2024-01-01 00:00:00', 1), "
                      "('extra', 0, 0, false, '2024-01-01 00:00:00', 1)")

    report = verify(config, engine)
    types, lines, names = report.tables
    assert {d.key["id"]: d.columns for d in types.diffs} == {
        10 + i: (column,) for i, column in enumerate(COLUMNS)}
    assert {d.kind for d in types.diffs} == {"changed"}
    assert [(d.kind, d.key, d.columns) for d in lines.diffs] == [
        ("changed", {"order_id": 7, "line": 3}, ("qty",))]
    assert sorted((d.kind, d.key["name"]) for d in names.diffs) == [
        ("extra", "extra"), ("missing", "n-5é")]

    repaired = verify(config, engine, repair=True)
    assert [t.repaired for t in repaired.tables] == [len(COLUMNS), 1, 2]
    again = verify(config, engine)
    assert again.equal, again.to_dict()


def test_cli_waits_for_an_engine_it_cannot_reach_while_cdc_runs(
        running: tuple[Config, Engine], pg_db: Database, starrocks: StarRocksEmulator,
        capsys: pytest.CaptureFixture[str]) -> None:
    """No control plane answers (GRPC_PORT=0), but the slot is active: the CLI waits on the
    engine's checkpoint row, then compares; CDC keeps changing rows meanwhile."""
    config, _ = running
    stop = threading.Event()

    def load() -> None:
        i = 0
        with pg_db.connect() as conn:
            while not stop.is_set():
                i += 1
                conn.execute("UPDATE public.lines SET qty = qty + 1 WHERE order_id = %s",
                             (i % 30,))
                conn.execute("DELETE FROM public.names WHERE v = %s", (i,))

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    try:
        code = cli.main([
            "verify", "--json", "--ranges", "4", "--source-url", pg_db.dsn,
            "--tables", ",".join(TABLES), "--sink", "starrocks", "--starrocks-url",
            starrocks.url, "--starrocks-mysql-port", str(starrocks.mysql_port),
            "--starrocks-db", DB, "--slot-name", config.slot_name, "--grpc-port", "0",
        ])
    finally:
        stop.set()
        writer.join(30)
    out = json.loads(capsys.readouterr().out)
    assert out["target_state"] == "durable" and not out["notes"]
    assert code == 0 and out["equal"], out


PRINTED = r"""
CREATE TABLE public.printed (
    id int PRIMARY KEY, f8 float8[], f4 float4[], b bytea[], n numeric(30,10)[],
    j json, jb jsonb, t text);
INSERT INTO public.printed VALUES
  (1, '{NaN,1.5,Infinity,-Infinity}', '{NaN,-0}', '{"\\x00","\\xffff"}',
   '{1234567890.1234567890,NULL}', '{"a": 1.0}', '[2.0, 1e3, {"x": 10.50}]', 'plain'),
  (2, '{}', NULL, '{}', '{-0.0000000001}', '"1"', 'null', E'ctl\x01char'),
  (3, NULL, '{}', NULL, NULL, '1', '{"a": 1}', NULL);
"""


def test_equal_where_the_target_prints_values_its_own_way(
        pg_db: Database, starrocks: StarRocksEmulator) -> None:
    # StarRocks prints ARRAY items that are not JSON (nan, inf, hex), decimals with more
    # digits than a float holds, and JSON numbers by value (1.0 as 1): all equal. The JSON
    # null beside text holding the CSV separators is SQL NULL in the target (no Stream Load
    # keeps a JSON null: docs/types.md), which verify counts as equal.
    pg_db.execute(PRINTED)
    config = starrocks_config(pg_db, starrocks.url, starrocks.mysql_port, ["public.printed"],
                              verify_max_rows_per_s=0, grpc_port=0)
    engine = build_live_engine(config)
    engine.start()
    try:
        pg_db.execute("INSERT INTO public.printed (id, f8, n, jb) VALUES "
                      "(4, '{NaN}', '{99999999999999999999.9999999999}', '[1.0]')")
        wait_until_loaded(engine, mark(pg_db))
        report = verify(config, engine)
        assert report.equal, report.to_dict()
        assert [t.source_rows for t in report.tables] == [4]
        # A value that differs is still found: a float item, and a JSON number's value
        # (written behind dbmazz's back, newer than its load).
        [schema], registry = load_schemas(config.source_dsn, ["public.printed"], {})
        with SourceSnapshot(config.source_dsn, registry, max_rows_per_s=0,
                            statement_timeout_s=10) as source:
            rows = pa.concat_tables(list(source.scan(schema)))
        [(version,)] = starrocks.execute(f"SELECT max(dbmazz_cdc_version) FROM {DB}.printed")
        for n, (key, column, value) in enumerate([(4, "f8", [1.25]), (3, "jb", "[1.5]")]):
            row = rows.filter(pc.equal(rows.column("id"), key))
            index = row.schema.get_field_index(column)
            row = row.set_column(index, column, pa.array([value], row.schema.field(column).type))
            engine.sink.write(snapshot_batch(schema, row, int(version) + 1, f"drift-{n}"))
        report = verify(config, engine)
        assert {d.key["id"]: d.columns for d in report.tables[0].diffs} == {
            4: ("f8",), 3: ("jb",)}, report.to_dict()
    finally:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)
