"""Publication features real sources use, end to end into DuckDB on a real server:
partitioned tables, row filters and column lists (PostgreSQL 15+), generated columns
(PostgreSQL 18 ``publish_generated_columns``). Each test is skipped, with the reason, on
servers that lack its feature."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine
from dbmazz.engine.service import EngineService
from dbmazz.errors import SetupError
from dbmazz.pipeline.batch import TableSchema
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.publication import published_shapes, widenings
from dbmazz.source.setup import setup_source
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.scripted import eventually


def server_version(db: Database) -> int:
    with db.connect() as conn:
        return conn.info.server_version


def require(db: Database, version: int, feature: str) -> None:
    if server_version(db) < version:
        pytest.skip(f"{feature} needs PostgreSQL {version // 10000}+, the server is "
                    f"{server_version(db) // 10000}")


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
    wait_until_loaded(engine, mark(pg_db))
    expected = sorted(pg_db.query("SELECT id, region, amount, note FROM public.events"))
    assert target_rows(sink, "public.events", "id, region, amount, note") == expected

    # TRUNCATE of one partition is not published through the root (PostgreSQL's rule):
    # its rows stay in the target. TRUNCATE of the root is.
    eu = {r for r in expected if r[1] == "eu"}
    assert eu
    pg_db.execute("TRUNCATE public.events_eu")
    pg_db.execute("INSERT INTO public.events VALUES (1005, 'us', 5, 'after')")
    wait_until_loaded(engine, mark(pg_db))
    assert eu <= set(target_rows(sink, "public.events", "id, region, amount, note"))
    pg_db.execute("TRUNCATE public.events")
    wait_until_loaded(engine, mark(pg_db))
    assert target_rows(sink, "public.events", "id") == []


@pytest.mark.parametrize("drained", [False, True], ids=["streaming", "drained"])
def test_partitions_attached_and_detached(pg_db: Database, tmp_path: Path,
                                          engines: list[Engine], drained: bool) -> None:
    """``streaming``: ATTACH/DETACH while dbmazz streams (PostgreSQL 15+: 14's pgoutput
    keeps a table's partition state from before the DDL for the rest of the session).
    ``drained``: dbmazz drained before the DDL and started after it (every version)."""
    if not drained:
        require(pg_db, 150000, "ATTACH/DETACH PARTITION while streaming")
    pg_db.execute(PARTITIONED)
    pg_db.execute("INSERT INTO public.events SELECT g, (ARRAY['eu','us','mx'])[g % 3 + 1], "
                  "g, 'n' || g FROM generate_series(1, 90) g")
    engine, sink = start(pg_db, tmp_path, engines, ["public.events"])
    # Loaded before the partitions change: a partition detached while the snapshot reads
    # the root may or may not be read (docs/operations.md).
    wait_until_loaded(engine, mark(pg_db))
    pg_db.execute("CREATE TABLE public.events_apac (LIKE public.events INCLUDING ALL)")
    pg_db.execute("ALTER TABLE public.events_apac REPLICA IDENTITY FULL")
    pg_db.execute("INSERT INTO public.events_apac VALUES (1001, 'apac', 1, 'pre-attach')")
    pg_db.execute("UPDATE public.events SET note = 'before' WHERE region = 'mx'")
    wait_until_loaded(engine, mark(pg_db))
    if drained:
        engine.drain()
        assert engine.wait(60)
    pg_db.execute("ALTER TABLE public.events DETACH PARTITION public.events_rest")
    pg_db.execute("CREATE TABLE public.events_mx PARTITION OF public.events "
                  "FOR VALUES IN ('mx')")
    pg_db.execute("ALTER TABLE public.events ATTACH PARTITION public.events_apac "
                  "FOR VALUES IN ('apac')")
    if drained:
        engine, sink = start(pg_db, tmp_path, engines, ["public.events"], snapshot="never")
    pg_db.execute("INSERT INTO public.events VALUES (1002, 'apac', 2, 'attached'), "
                  "(1003, 'mx', 3, 'new partition')")
    pg_db.execute("UPDATE public.events SET note = 'touched' WHERE id = 1001")
    # Detaching deletes nothing: the detached partition's rows stay in the target as they
    # were, and its later changes are no longer published.
    detached = pg_db.query("SELECT id, region, amount, note FROM public.events_rest")
    assert detached
    pg_db.execute("UPDATE public.events_rest SET note = 'after detach'")
    wait_until_loaded(engine, mark(pg_db))
    # 1001 was written before its table was attached (ATTACH moves no rows through the
    # WAL); its update after the attach carries the whole row (FULL identity).
    expected = sorted([*pg_db.query("SELECT id, region, amount, note FROM public.events"),
                       *detached])
    assert (1001, "apac", 1, "touched") in expected
    assert target_rows(sink, "public.events", "id, region, amount, note") == expected


def test_partitioned_table_added_on_demand(pg_db: Database, tmp_path: Path,
                                           engines: list[Engine]) -> None:
    pg_db.execute("CREATE TABLE public.a (id int PRIMARY KEY)")
    engine, sink = start(pg_db, tmp_path, engines, ["public.a"])
    wait_until_loaded(engine, mark(pg_db))
    pg_db.execute(PARTITIONED)
    pg_db.execute("INSERT INTO public.events SELECT g, (ARRAY['eu','us','mx'])[g % 3 + 1], "
                  "g, 'n' || g FROM generate_series(1, 90) g")
    handle = engine.request_snapshot(["public.events"])
    assert handle.wait(180)
    assert handle.error is None and handle.completed
    # Its partitions got the identity setup gives (FULL), like at start.
    assert {str(r[0]) for r in pg_db.query(
        "SELECT relreplident::text FROM pg_class WHERE relname LIKE 'events%' "
        "AND relkind IN ('r', 'p')")} == {"f"}
    pg_db.execute("UPDATE public.events SET region = 'eu' WHERE region = 'us' AND id < 30")
    pg_db.execute("DELETE FROM public.events WHERE id % 4 = 0")
    wait_until_loaded(engine, mark(pg_db))
    assert target_rows(sink, "public.events", "id, region, amount, note") == sorted(
        pg_db.query("SELECT id, region, amount, note FROM public.events"))


class ChangeBeforeTargetSetup(DuckDBSink):
    """Before creating the target of ``late``, commits a change to it and waits until the
    engine has streamed past it: the moment at which a table already published (FOR ALL
    TABLES) used to meet a known key but no target table."""

    def __init__(self, path: str, db: Database, late: str) -> None:
        super().__init__(path)
        self.db, self.late = db, late
        self.engine: Engine | None = None

    def setup(self, tables: Sequence[TableSchema]) -> None:
        if self.engine is not None and any(t.source_name == self.late for t in tables):
            engine, self.engine = self.engine, None
            self.db.execute(f"INSERT INTO {self.late} VALUES (-1, 'during setup')")
            wait_until_loaded(engine, mark(self.db))
        super().setup(tables)


def test_a_table_already_published_is_added_on_demand(pg_db: Database, tmp_path: Path,
                                                      engines: list[Engine]) -> None:
    pg_db.execute("CREATE TABLE public.a (id int PRIMARY KEY)")
    pg_db.execute("CREATE TABLE public.late (id int PRIMARY KEY, v text)")
    pg_db.execute("INSERT INTO public.late SELECT g, 'v' || g FROM generate_series(1, 50) g")
    pg_db.execute("CREATE PUBLICATION everything FOR ALL TABLES "
                  "WITH (publish_via_partition_root = true)")
    config = duckdb_config(pg_db, tmp_path, ["public.a"], publication_name="everything")
    sink = ChangeBeforeTargetSetup(config.duckdb_path, pg_db, "public.late")
    engine = build_live_engine(config, sink=sink)
    engines.append(engine)
    engine.start()
    pg_db.execute("INSERT INTO public.late VALUES (51, 'streamed, not yet replicated')")
    wait_until_loaded(engine, mark(pg_db))
    sink.engine = engine
    handle = engine.request_snapshot(["public.late"])
    assert handle.wait(180)
    assert handle.error is None and handle.completed
    pg_db.execute("UPDATE public.late SET v = 'after' WHERE id % 5 = 0")
    wait_until_loaded(engine, mark(pg_db))
    assert target_rows(sink, "public.late", "id, v") == sorted(
        pg_db.query("SELECT id, v FROM public.late"))


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


def incompressible() -> str:
    """~100 KB of poorly compressible text: stored out of line (TOASTed)."""
    return "".join(f"{(i * 104729) % 1000003:07d}" for i in range(15_000))


# -- row filters and column lists (PostgreSQL 15+) --------------------------------------------
NARROWED = """
CREATE TABLE public.orders (id int PRIMARY KEY, status text NOT NULL, amount int, big text);
ALTER TABLE public.orders REPLICA IDENTITY FULL;
CREATE TABLE public.customers (id int PRIMARY KEY, name text, region text, ssn text);
INSERT INTO public.orders SELECT g, CASE WHEN g % 4 = 0 THEN 'draft' ELSE 'open' END, g, NULL
FROM generate_series(1, 200) g;
INSERT INTO public.customers SELECT g, 'c' || g, 'r' || g % 3, 'secret' || g
FROM generate_series(1, 50) g;
CREATE PUBLICATION narrow FOR TABLE public.orders WHERE (status <> 'draft'),
                                    public.customers (id, name, region);
"""


def test_row_filter_and_column_list(pg_db: Database, tmp_path: Path,
                                    engines: list[Engine]) -> None:
    require(pg_db, 150000, "row filters and column lists")
    pg_db.execute(NARROWED)
    tables = ["public.orders", "public.customers"]
    # FULL identity makes every column part of it, and the column list leaves ssn out:
    # PostgreSQL would reject the customers' UPDATEs, so setup refuses to switch to FULL.
    with pytest.raises(SetupError) as failure:
        setup_source(pg_db.dsn, tables, "narrow", "s_narrow")
    assert "public.customers" in failure.value.message
    assert "ssn" in failure.value.message
    with pg_db.connect() as conn, conn.transaction(force_rollback=True):
        conn.execute("ALTER TABLE public.customers REPLICA IDENTITY FULL")
        with pytest.raises(Exception, match="cover"):  # what setup spared the user
            conn.execute("UPDATE public.customers SET name = 'x' WHERE id = 1")
    # 'keep' leaves the identities as they are; setup reports what narrows the tables.
    check = setup_source(pg_db.dsn, tables, "narrow", "s_narrow", "keep", check_only=True)
    reported = " ".join(check.warnings)
    assert "row filter WHERE (status <> 'draft'::text)" in reported
    assert "column list (id, name, region)" in reported

    engine, sink = start(pg_db, tmp_path, engines, tables, publication_name="narrow",
                         replica_identity="keep")
    wait_until_loaded(engine, mark(pg_db))
    assert target_columns(sink, "public.customers") == ["id", "name", "region"]
    assert target_columns(sink, "public.orders") == ["id", "status", "amount", "big"]
    # The snapshot read only the published rows.
    assert len(target_rows(sink, "public.orders", "id")) == 150

    pg_db.execute("INSERT INTO public.orders SELECT g, CASE WHEN g % 4 = 0 THEN 'draft' "
                  "ELSE 'open' END, g, NULL FROM generate_series(201, 260) g")
    # Out of the filter: arrives as a delete. Into it: arrives as an insert.
    pg_db.execute("UPDATE public.orders SET status = 'draft' WHERE id % 10 = 1")
    pg_db.execute("UPDATE public.orders SET status = 'paid', big = repeat('x', 10000) "
                  "WHERE id % 8 = 0")
    pg_db.execute("UPDATE public.orders SET amount = -amount WHERE status = 'paid'")
    # Into the filter with a TOASTed value the UPDATE does not touch: PostgreSQL fills it
    # from the old row (FULL identity), so the insert is complete.
    pg_db.execute("INSERT INTO public.orders VALUES (300, 'draft', 1, %s)", (incompressible(),))
    pg_db.execute("UPDATE public.orders SET status = 'open' WHERE id = 300")
    pg_db.execute("DELETE FROM public.orders WHERE id % 13 = 0")
    pg_db.execute("UPDATE public.customers SET name = name || '!', ssn = 'changed' "
                  "WHERE id % 2 = 0")
    pg_db.execute("INSERT INTO public.customers VALUES (51, 'new', 'r9', 'secret')")
    pg_db.execute("DELETE FROM public.customers WHERE id = 3")
    wait_until_loaded(engine, mark(pg_db))

    assert target_rows(sink, "public.orders", "id, status, amount, big") == sorted(pg_db.query(
        "SELECT id, status, amount, big FROM public.orders WHERE status <> 'draft'"))
    assert target_rows(sink, "public.customers", "id, name, region") == sorted(pg_db.query(
        "SELECT id, name, region FROM public.customers"))
    # Rows that left the filter are deletes in the target (soft-deleted rows kept).
    [(gone,)] = sink.query("SELECT count(*) FROM public.orders WHERE dbmazz_is_deleted "
                           "AND id % 10 = 1")
    assert gone > 0
    # Setup never widened the publication.
    [(columns, row_filter)] = pg_db.query(
        "SELECT attnames::text, rowfilter FROM pg_publication_tables "
        "WHERE pubname = 'narrow' AND tablename = 'customers'")
    assert (columns, row_filter) == ("{id,name,region}", None)


WIDENED = """
CREATE TABLE public.orders (id int PRIMARY KEY, status text);
CREATE TABLE public.customers (id int PRIMARY KEY, name text, ssn text);
INSERT INTO public.orders SELECT g, 's' || g FROM generate_series(1, 40) g;
INSERT INTO public.customers SELECT g, 'c' || g, 'secret' || g FROM generate_series(1, 30) g;
CREATE PUBLICATION wide FOR TABLE public.events, public.orders WHERE (id % 4 <> 0),
    public.customers (id, name) WITH (publish_via_partition_root = true);
CREATE TABLE public.events_apac (LIKE public.events INCLUDING ALL);
INSERT INTO public.events_apac SELECT g, 'apac', g, 'pre-attach' FROM generate_series(500, 520) g;
"""


def sample(service: EngineService) -> float:
    """When the slot health was last sampled (0: not yet)."""
    health = service.status().slot_health
    return health.sampled_at if health is not None and not health.error else 0.0


def unpublished(service: EngineService) -> tuple[str, ...]:
    health = service.status().slot_health
    return health.unpublished if health is not None else ()


def test_a_publication_widened_while_streaming_is_loaded_again(
        pg_db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A row filter changed, a column list grown, a partition attached with rows, a root
    published again after ``publish_via_partition_root`` was off: pgoutput never sends the
    rows and values that were left out until they change. The slot health sample notices,
    and under SNAPSHOT=initial an on-demand snapshot loads the tables again."""
    require(pg_db, 150000, "row filters, column lists, ATTACH PARTITION while streaming")
    pg_db.execute(PARTITIONED)
    pg_db.execute("INSERT INTO public.events SELECT g, (ARRAY['eu','us','mx'])[g % 3 + 1], "
                  "g, 'n' || g FROM generate_series(1, 60) g")
    pg_db.execute(WIDENED)
    monkeypatch.setattr(EngineService, "slot_sample_interval_s", 0.2)
    tables = ["public.events", "public.orders", "public.customers"]
    config = duckdb_config(pg_db, tmp_path, tables, publication_name="wide",
                           replica_identity="keep", heartbeat_interval_s=0)
    sink = DuckDBSink(config.duckdb_path)
    service = EngineService(config, sink=sink)
    service.start()
    shown = {"public.events": "id, region, amount, note", "public.orders": "id, status",
             "public.customers": "id, name, ssn"}

    def replicated(source: dict[str, str]) -> bool:
        return all(target_rows(sink, table, shown[table]) == sorted(pg_db.query(
            f"SELECT {shown[table]} FROM {table} {source.get(table, '')}")) for table in tables)
    try:
        eventually(lambda: service.serving, "streaming", 120)
        engine = service.engine
        assert engine is not None
        wait_until_loaded(engine, mark(pg_db))
        assert target_columns(sink, "public.customers") == ["id", "name"]
        # What the slot health samples compare with: the first (it samples every 0.2 s).
        first = sample(service)
        eventually(lambda: sample(service) > first, "a second slot health sample")
        pg_db.execute("ALTER PUBLICATION wide SET TABLE public.events, "
                      "public.orders WHERE (id % 4 <> 1), public.customers (id, name, ssn)")
        pg_db.execute("ALTER TABLE public.events ATTACH PARTITION public.events_apac "
                      "FOR VALUES IN ('apac')")
        # Rows that arrive through the stream, and a partition that joins empty.
        pg_db.execute("UPDATE public.customers SET name = name || '!' WHERE id % 2 = 0")
        pg_db.execute("CREATE TABLE public.events_jp PARTITION OF public.events "
                      "FOR VALUES IN ('jp')")
        pg_db.execute("INSERT INTO public.events VALUES (600, 'jp', 1, 'new partition')")
        # Rows the new filter lets through stay until a reload; those it turns away stay
        # as loaded (a reload removes nothing): compare with the union.
        loaded = {"public.orders": "WHERE id % 4 <> 0 OR id % 4 <> 1"}
        eventually(lambda: replicated(loaded), "the widened tables to be loaded again", 120)

        # Through its partitions' names, which are not in TABLES, the root's changes are
        # passed over: the sample finds it unpublished; published again, it is reloaded.
        pg_db.execute("ALTER PUBLICATION wide SET (publish_via_partition_root = false)")
        pg_db.execute("UPDATE public.events SET amount = -amount WHERE id % 2 = 0")
        eventually(lambda: "public.events" in unpublished(service), "the root unpublished")
        health = service.status().slot_health
        assert health is not None and ('run `ALTER PUBLICATION "wide" SET (publish_via_partition'
                                       '_root = true);` while dbmazz runs') in health.warning
        # Adding it back failed (setup refuses the publication as it is now).
        eventually(lambda: any("publish_via_partition_root = false" in r.getMessage()
                               for r in caplog.records), "the reload to be refused")
        pg_db.execute("ALTER PUBLICATION wide SET (publish_via_partition_root = true)")
        eventually(lambda: replicated(loaded), "the root to be loaded again", 120)
    finally:
        service.stop(timeout=60)
        sink.close()

    # A partition created empty (rows written through the root after it joined) is not a
    # widening; one attached with rows from before is.
    with pg_db.connect() as conn:
        listed = [("public", "events")]
        before = published_shapes(conn, "wide", listed)
        conn.execute("CREATE TABLE public.events_kr PARTITION OF public.events "
                     "FOR VALUES IN ('kr')")
        conn.execute("INSERT INTO public.events VALUES (700, 'kr', 1, 'x')")
        assert widenings(conn, before, published_shapes(conn, "wide", listed)) == {}
        conn.execute("ALTER TABLE public.events DETACH PARTITION public.events_kr")
        before = published_shapes(conn, "wide", listed)
        conn.execute("ALTER TABLE public.events ATTACH PARTITION public.events_kr "
                     "FOR VALUES IN ('kr')")
        assert widenings(conn, before, published_shapes(conn, "wide", listed)) == {
            "public.events": "partition(s) public.events_kr attached with rows"}


# -- generated, identity and serial columns ---------------------------------------------------
GENERATED = """
CREATE TABLE public.items (
    id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    serial_no bigserial,
    price int, qty int,
    total int GENERATED ALWAYS AS (price * qty) STORED
);
INSERT INTO public.items (price, qty) SELECT g, g % 5 FROM generate_series(1, 100) g;
"""


def generated_workload(db: Database) -> None:
    db.execute("INSERT INTO public.items (price, qty) SELECT g, 2 FROM generate_series(1, 20) g")
    db.execute("INSERT INTO public.items (id, serial_no, price, qty) OVERRIDING SYSTEM VALUE "
               "VALUES (5000, 7000, 3, 3)")
    db.execute("UPDATE public.items SET qty = qty + 10 WHERE id % 3 = 0")
    db.execute("DELETE FROM public.items WHERE id % 7 = 0")


def test_generated_columns_follow_the_publication(pg_db: Database, tmp_path: Path,
                                                  engines: list[Engine]) -> None:
    pg_db.execute(GENERATED)
    engine, sink = start(pg_db, tmp_path, engines, ["public.items"])
    generated_workload(pg_db)
    wait_until_loaded(engine, mark(pg_db))
    # PostgreSQL 18: the publication dbmazz creates publishes stored generated columns, so
    # the target has their values. Before 18 pgoutput cannot send them; the snapshot leaves
    # them out too, so the target has no such column.
    published = server_version(pg_db) >= 180000
    columns = ["id", "serial_no", "price", "qty", *(["total"] if published else [])]
    assert target_columns(sink, "public.items") == columns
    # Identity and serial columns are ordinary stored values: they keep theirs.
    listed = ", ".join(columns)
    assert target_rows(sink, "public.items", listed) == sorted(
        pg_db.query(f"SELECT {listed} FROM public.items"))


def test_unpublished_generated_columns(pg_db: Database, tmp_path: Path,
                                       engines: list[Engine]) -> None:
    require(pg_db, 180000, "publish_generated_columns")
    pg_db.execute(GENERATED)
    # Virtual generated columns (PostgreSQL 18) are never published.
    pg_db.execute("ALTER TABLE public.items ADD COLUMN label text "
                  "GENERATED ALWAYS AS ('item ' || price) VIRTUAL")
    pg_db.execute("CREATE PUBLICATION plain FOR TABLE public.items")
    # FULL identity would cover the stored generated column the publication leaves out, and
    # PostgreSQL 18 then rejects every UPDATE and DELETE of the table.
    with pytest.raises(SetupError, match="total"):
        setup_source(pg_db.dsn, ["public.items"], "plain", "s_plain")
    engine, sink = start(pg_db, tmp_path, engines, ["public.items"], publication_name="plain",
                         replica_identity="default")
    generated_workload(pg_db)
    wait_until_loaded(engine, mark(pg_db))
    assert target_columns(sink, "public.items") == ["id", "serial_no", "price", "qty"]
    assert target_rows(sink, "public.items", "id, serial_no, price, qty") == sorted(
        pg_db.query("SELECT id, serial_no, price, qty FROM public.items"))
