"""Publication features real sources use, end to end into DuckDB on a real server:
partitioned tables, row filters and column lists (PostgreSQL 15+), generated columns
(PostgreSQL 18 ``publish_generated_columns``). Each test is skipped, with the reason, on
servers that lack its feature."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.engine.setup.postgres import setup_source
from dbmazz.errors import SetupError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded


def server_version(db: Database) -> int:
    with db.connect() as conn:
        return conn.info.server_version


def require(db: Database, version: int, feature: str) -> None:
    if server_version(db) < version:
        pytest.skip(f"{feature} needs PostgreSQL {version // 10000}+, the server is "
                    f"{server_version(db) // 10000}")


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    started: list[Engine] = []
    yield started
    for engine in started:
        engine.stop()
        with contextlib.suppress(Exception):  # a failure was reported by the test
            engine.wait(30)


def start(db: Database, tmp_path: Path, engines: list[Engine], tables: list[str],
          **extra: object) -> tuple[Engine, DuckDBSink]:
    config = duckdb_config(db, tmp_path, tables, **extra)
    sink = DuckDBSink(config.duckdb_path)
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    return engine, sink


def target_rows(sink: DuckDBSink, table: str, columns: str) -> list[tuple[object, ...]]:
    namespace, name = table.split(".")
    return sorted(sink.query(f'SELECT {columns} FROM "{namespace}"."{name}" '
                             "WHERE NOT dbmazz_is_deleted ORDER BY ALL"))


def target_columns(sink: DuckDBSink, table: str) -> list[str]:
    namespace, name = table.split(".")
    rows = sink.query("SELECT column_name FROM information_schema.columns WHERE "
                      f"table_schema = '{namespace}' AND table_name = '{name}' "
                      "ORDER BY ordinal_position")
    return [str(r[0]) for r in rows if not str(r[0]).startswith("dbmazz_")]


# -- partitioned tables -----------------------------------------------------------------------
PARTITIONED = """
CREATE TABLE public.events (id bigint, region text, amount int, note text,
                            PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE public.events_eu PARTITION OF public.events FOR VALUES IN ('eu');
CREATE TABLE public.events_us PARTITION OF public.events FOR VALUES IN ('us');
CREATE TABLE public.events_rest PARTITION OF public.events DEFAULT;
"""


def test_partitioned_table_loads_into_one_target(pg_db: Database, tmp_path: Path,
                                                 engines: list[Engine]) -> None:
    pg_db.execute(PARTITIONED)
    # Rows before the slot exists: the initial snapshot reads every partition.
    pg_db.execute("INSERT INTO public.events SELECT g, (ARRAY['eu','us','mx'])[g % 3 + 1], "
                  "g, 'n' || g FROM generate_series(1, 300) g")
    engine, sink = start(pg_db, tmp_path, engines, ["public.events"])
    [(via_root,)] = pg_db.query(
        "SELECT pubviaroot FROM pg_publication WHERE pubname = 'dbmazz_e2e'")
    assert via_root is True
    # Setup gave every partition the root's replica identity (FULL by default).
    identities = dict(pg_db.query(
        "SELECT relname::text, relreplident::text FROM pg_class WHERE relname LIKE 'events%' "
        "AND relkind IN ('r', 'p')"))
    assert set(identities.values()) == {"f"}, identities
    # The snapshot is loaded before the partitions change: a partition detached while the
    # snapshot reads the root may or may not be read (docs/operations.md).
    wait_until_loaded(engine, mark(pg_db))
    assert len(target_rows(sink, "public.events", "id")) == 300

    pg_db.execute("INSERT INTO public.events SELECT g, (ARRAY['eu','us','mx'])[g % 3 + 1], "
                  "g, 'n' || g FROM generate_series(301, 400) g")
    pg_db.execute("UPDATE public.events SET amount = -amount WHERE id % 7 = 0")
    pg_db.execute("DELETE FROM public.events WHERE id % 11 = 0")
    # The partition key changes: the row moves to another partition (delete + insert).
    pg_db.execute("UPDATE public.events SET region = 'us' WHERE region = 'eu' AND id < 60")
    pg_db.execute("UPDATE public.events SET region = 'eu', note = 'moved' "
                  "WHERE region = 'mx' AND id < 60")
    # A partition attached while streaming: its rows arrive as the root's.
    pg_db.execute("CREATE TABLE public.events_apac (LIKE public.events INCLUDING ALL)")
    pg_db.execute("ALTER TABLE public.events_apac REPLICA IDENTITY FULL")
    pg_db.execute("INSERT INTO public.events_apac VALUES (1001, 'apac', 1, 'pre-attach')")
    pg_db.execute("ALTER TABLE public.events DETACH PARTITION public.events_rest")
    pg_db.execute("CREATE TABLE public.events_mx PARTITION OF public.events "
                  "FOR VALUES IN ('mx')")
    pg_db.execute("ALTER TABLE public.events ATTACH PARTITION public.events_apac "
                  "FOR VALUES IN ('apac')")
    pg_db.execute("INSERT INTO public.events VALUES (1002, 'apac', 2, 'attached'), "
                  "(1003, 'mx', 3, 'new partition')")
    pg_db.execute("UPDATE public.events SET note = 'touched' WHERE id = 1001")
    wait_until_loaded(engine, mark(pg_db))
    # Detaching deletes nothing: the detached partition's rows stay in the target as they
    # were, and its later changes are no longer published.
    detached = pg_db.query("SELECT id, region, amount, note FROM public.events_rest")
    assert detached
    pg_db.execute("UPDATE public.events_rest SET note = 'after detach'")
    pg_db.execute("INSERT INTO public.events VALUES (1004, 'eu', 4, 'last')")
    wait_until_loaded(engine, mark(pg_db))

    # 1001 was inserted before its table was attached (ATTACH moves no rows through the
    # WAL), but its update after the attach carries the whole row (FULL identity).
    expected = sorted([*pg_db.query("SELECT id, region, amount, note FROM public.events"),
                       *detached])
    assert target_rows(sink, "public.events", "id, region, amount, note") == expected
    assert ("1001", "apac", 1, "touched") in [(str(r[0]), *r[1:]) for r in expected]


def test_existing_publication_without_root_is_refused(pg_db: Database) -> None:
    pg_db.execute(PARTITIONED)
    pg_db.execute("CREATE PUBLICATION leafy FOR TABLE public.events")
    with pytest.raises(SetupError) as failure:
        setup_source(pg_db.dsn, ["public.events"], "leafy", "s_leafy")
    assert "publish_via_partition_root = false" in failure.value.message
    assert 'ALTER PUBLICATION "leafy" SET (publish_via_partition_root = true)' in str(
        failure.value.hint)
    assert not pg_db.query("SELECT 1 FROM pg_replication_slots WHERE slot_name = 's_leafy'")
    # Listing a partition next to its root is refused too.
    with pytest.raises(SetupError, match="partitions together with their partitioned"):
        setup_source(pg_db.dsn, ["public.events", "public.events_eu"], "other", "s_other")
    pg_db.execute("ALTER PUBLICATION leafy SET (publish_via_partition_root = true)")
    result = setup_source(pg_db.dsn, ["public.events"], "leafy", "s_leafy")
    assert result.primary_keys == {"public.events": ("id", "region")}
