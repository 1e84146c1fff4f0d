"""Schema changes while streaming, on both sinks (DuckDB and the StarRocks emulator): after
each, the target equals the source — for every change the replication stream carries — or
the engine stops with an error naming the problem, never loading wrong values."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import Engine, RunState
from dbmazz.errors import SetupError, SinkError
from dbmazz.pipeline.batch import LoadResult, SchemaDelta, TableBatch, TableSchema
from dbmazz.sink.base import Sink
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.sink.starrocks.sink import StarRocksSink
from dbmazz.testing.compare import compare, duckdb_fetcher
from dbmazz.testing.fixtures import Database
from tests.e2e.harness import duckdb_config, mark, wait_until_loaded
from tests.e2e.test_starrocks_e2e import DB, emulator_fetcher, starrocks_config
from tests.scripted import eventually


@dataclass
class Target:
    """One sink kind: engines configured for it, and its rows compared with the source."""

    kind: str
    db: Database
    tmp_path: Path
    request: pytest.FixtureRequest
    engines: list[Engine] = field(default_factory=list)
    sinks: list[Any] = field(default_factory=list)

    def config(self, tables: list[str], **extra: Any) -> Config:
        if self.kind == "duckdb":
            return duckdb_config(self.db, self.tmp_path, tables, **extra)
        emulator = self.request.getfixturevalue("starrocks")
        return starrocks_config(self.db, emulator.url, emulator.mysql_port, tables, **extra)

    def sink(self, config: Config) -> Any:
        if self.kind == "duckdb":
            return DuckDBSink(config.duckdb_path)
        return StarRocksSink.from_config(config)

    def start(self, config: Config, sink: Sink | None = None) -> Engine:
        """An engine over ``sink`` (by default a new one of this kind), started."""
        sink = sink if sink is not None else self.sink(config)
        self.sinks.append(sink)
        engine = build_live_engine(config, sink=sink)
        self.engines.append(engine)
        engine.start()
        return engine

    def stop(self, engine: Engine, *, drain: bool = True) -> None:
        """Stop ``engine`` (after loading what it has, or as it stands) and close its sink."""
        if drain:
            engine.drain()
        else:
            engine.stop()
        with contextlib.suppress(Exception):  # a failed engine re-raises its error
            engine.wait(60)
        index = self.engines.index(engine)
        self.engines.pop(index)
        self.sinks.pop(index).close()

    def failed(self, engine: Engine) -> str:
        eventually(lambda: engine.progress.state == RunState.FAILED, "the engine to fail")
        return engine.progress.last_error or ""

    def rows(self, namespace: str, table: str) -> list[dict[str, Any]]:
        if self.kind == "duckdb":
            sink = self.sinks[-1]
            cur = getattr(sink, "inner", sink).read_cursor()
            try:
                result = cur.execute(f'SELECT * FROM "{namespace}"."{table}"')
                names = [d[0] for d in result.description]
                return [dict(zip(names, row, strict=True)) for row in result.fetchall()]
            finally:
                cur.close()
        return list(self.request.getfixturevalue("starrocks").rows(DB, table))

    def assert_replicated(self, tables: dict[str, list[str]]) -> None:
        problems = []
        with self.db.connect() as conn:
            for name, keys in tables.items():
                namespace, table = name.split(".", 1)
                if self.kind == "duckdb":
                    fetch = duckdb_fetcher(self.sinks[-1].query, namespace, table)
                else:
                    fetch = emulator_fetcher(lambda t=table: self.rows("", t))
                diff = compare(conn, namespace, table, keys, fetch)
                if not diff.equal:
                    problems.append(str(diff))
        assert not problems, "\n".join(problems)

    def catch_up(self, engine: Engine) -> None:
        wait_until_loaded(engine, mark(self.db))


@pytest.fixture(params=["duckdb", "starrocks"])
def target(request: pytest.FixtureRequest, pg_db: Database, tmp_path: Path) -> Iterator[Target]:
    t = Target(request.param, pg_db, tmp_path, request)
    yield t
    for engine in t.engines:
        engine.stop()
        with contextlib.suppress(Exception):
            engine.wait(30)
    for sink in t.sinks:
        with contextlib.suppress(Exception):
            sink.close()


class FailingSink:
    """The real sink, whose writes fail for good once ``fails(batch)`` says so: a crash
    between a schema change reaching the target and the checkpoint that covers it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.altered = False
        self.fail_table = ""

    def setup(self, tables: list[TableSchema]) -> None:
        self.inner.setup(tables)

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        self.inner.apply_schema_delta(delta)
        self.altered = self.altered or delta.before is not None

    def write(self, batch: TableBatch) -> LoadResult:
        if batch.table.name == self.fail_table or (self.altered and not self.fail_table):
            raise SinkError("injected crash", retryable=False)
        result: LoadResult = self.inner.write(batch)
        return result

    def close(self) -> None:
        self.inner.close()


# -- changes the stream carries: the target equals the source ------------------------------

def test_a_column_dropped_and_added_again_in_one_flush(target: Target) -> None:
    # DROP b + ADD b moves b to the end: the Relation message has the same names and types
    # in another order, so no schema change reaches the sink; the rows after it still
    # decode with it. They were decoded with the earlier shape of the same flush, b's value
    # landing in c and c's in b.
    db = target.db
    db.execute("CREATE TABLE public.t (id int PRIMARY KEY, b int, c int)")
    engine = target.start(target.config(["public.t"], flush_interval_ms=1000))
    target.catch_up(engine)
    with db.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO public.t VALUES (1, 10, 100)")
        conn.execute("ALTER TABLE public.t DROP COLUMN b")
        conn.execute("ALTER TABLE public.t ADD COLUMN b int")
        conn.execute("INSERT INTO public.t (id, b, c) VALUES (2, 20, 200)")
        conn.execute("UPDATE public.t SET b = 11 WHERE id = 1")
    target.catch_up(engine)
    target.assert_replicated({"public.t": ["id"]})


def test_a_column_added_again_with_another_type(target: Target) -> None:
    # Dropped, then added again under its name with another type (separate transactions
    # with rows between): the target column must take the new type. Left as it was, DuckDB
    # cast 1.5 into the old INTEGER as 2 without a word; StarRocks refused the loads.
    db = target.db
    numeric = target.kind == "duckdb"  # StarRocks cannot change INT to DECIMAL in place
    db.execute("CREATE TABLE public.r (id int PRIMARY KEY, b int, s varchar(4), n int)")
    engine = target.start(target.config(["public.r"]))
    target.catch_up(engine)
    db.execute("INSERT INTO public.r VALUES (1, 1, 'ab', 1)")
    db.execute("ALTER TABLE public.r DROP COLUMN b, DROP COLUMN s, DROP COLUMN n")
    db.execute("INSERT INTO public.r VALUES (2)")
    target.catch_up(engine)
    db.execute("ALTER TABLE public.r ADD COLUMN b bigint, ADD COLUMN s text, "
               f"ADD COLUMN n {'numeric(10,2)' if numeric else 'int'}")
    db.execute("INSERT INTO public.r VALUES (3, 9000000000, 'longer than sixteen bytes', "
               f"{'1.5' if numeric else '3'})")
    db.execute(f"UPDATE public.r SET b = -9000000000, s = 'x', n = {'2.25' if numeric else '4'}"
               " WHERE id IN (1, 2)")
    target.catch_up(engine)
    target.assert_replicated({"public.r": ["id"]})


def test_a_column_renamed_to_another_case(target: Target) -> None:
    # Both targets compare column names without case, so "UserID" is still the target's
    # userid column, not a new one beside a dropped one: filled with NULL as dropped, it was
    # sent twice (StarRocks retried the load for ever, "Duplicate column"; DuckDB stopped),
    # and a restart had DuckDB add it again. Also: one dropped, added back in another case.
    db = target.db
    db.execute("CREATE TABLE public.c (id int PRIMARY KEY, userid int, gone int, x int)")
    config = target.config(["public.c"])
    engine = target.start(config)
    db.execute("INSERT INTO public.c VALUES (1, 20, 1, 1)")
    target.catch_up(engine)
    db.execute('ALTER TABLE public.c RENAME COLUMN userid TO "UserID"')
    db.execute("INSERT INTO public.c VALUES (2, 30, 2, 2)")
    db.execute('UPDATE public.c SET "UserID" = 7, x = 5 WHERE id = 1')
    db.execute("ALTER TABLE public.c DROP COLUMN gone")
    db.execute("INSERT INTO public.c VALUES (3, 40, 3)")
    target.catch_up(engine)
    db.execute('ALTER TABLE public.c ADD COLUMN "Gone" int')
    db.execute('UPDATE public.c SET "Gone" = id * 10')
    target.catch_up(engine)
    target.assert_replicated({"public.c": ["id"]})
    target.stop(engine)
    engine = target.start(config)
    db.execute('UPDATE public.c SET "UserID" = -"UserID", "Gone" = 0')
    target.catch_up(engine)
    target.assert_replicated({"public.c": ["id"]})
    # Dropped, added back in another case and dropped again, rows between: dropped under
    # two spellings, filled with NULL once.
    db.execute('ALTER TABLE public.c DROP COLUMN "Gone"')
    db.execute("UPDATE public.c SET x = 6 WHERE id = 1")
    db.execute('ALTER TABLE public.c ADD COLUMN "gONE" int')
    db.execute('UPDATE public.c SET "gONE" = 1 WHERE id = 1')
    db.execute('ALTER TABLE public.c DROP COLUMN "gONE"')
    db.execute('UPDATE public.c SET x = 7 WHERE "UserID" = -7')
    target.catch_up(engine)
    assert [r.get("gone", r.get("Gone")) for r in target.rows("public", "c") if r["x"] == 7
            ] == [None]


@pytest.mark.parametrize("identity", ["default", "full"])
def test_a_key_column_renamed_to_another_case(target: Target, identity: str) -> None:
    # Still the target's key column. The engine stopped ("primary key column(s) id … are
    # not in the replicated columns", or "the primary key … changed"), and a restart
    # stopped again on the changes before the rename.
    db = target.db
    db.execute("CREATE TABLE public.k (id int PRIMARY KEY, v int)")
    config = target.config(["public.k"], replica_identity=identity)
    engine = target.start(config)
    db.execute("INSERT INTO public.k VALUES (1, 1), (2, 2), (3, 3)")
    target.catch_up(engine)
    target.stop(engine)
    db.execute("UPDATE public.k SET v = 10 WHERE id = 1")
    db.execute('ALTER TABLE public.k RENAME COLUMN id TO "ID"')
    engine = target.start(config)
    db.execute('UPDATE public.k SET v = 20, "ID" = 20 WHERE "ID" = 2')
    db.execute('DELETE FROM public.k WHERE "ID" = 3')
    db.execute("INSERT INTO public.k VALUES (4, 4)")
    target.catch_up(engine)
    db.execute('ALTER TABLE public.k RENAME COLUMN "ID" TO "Id"')  # while streaming
    db.execute('UPDATE public.k SET v = 40, "Id" = 40 WHERE "Id" = 4')
    db.execute('DELETE FROM public.k WHERE "Id" = 1')
    target.catch_up(engine)
    target.assert_replicated({"public.k": ["Id"]})


def test_widened_column_types(target: Target) -> None:
    db = target.db
    db.execute("CREATE TABLE public.a (id int PRIMARY KEY, i int, v varchar(5), "
               "n numeric(6,2), s smallint)")
    engine = target.start(target.config(["public.a"]))
    db.execute("INSERT INTO public.a VALUES (1, 7, 'abc', 12.34, 1), (2, -7, 'xy', -0.05, 2)")
    target.catch_up(engine)
    with db.connect() as conn, conn.transaction():
        conn.execute("UPDATE public.a SET s = 3 WHERE id = 2")
        conn.execute("ALTER TABLE public.a ALTER COLUMN i TYPE bigint, ALTER COLUMN v TYPE "
                     "varchar(50), ALTER COLUMN n TYPE numeric(12,2), ALTER COLUMN s TYPE int")
        conn.execute("INSERT INTO public.a VALUES (3, 9000000000, 'a much longer value', "
                     "12345678.12, 100000)")
    target.catch_up(engine)
    target.assert_replicated({"public.a": ["id"]})


def test_schema_changes_inside_a_streamed_transaction(target: Target) -> None:
    # Larger than logical_decoding_work_mem: PostgreSQL streams it while it runs, Relation
    # messages included, those of a rolled-back subtransaction too (dropped with its rows).
    db = target.db
    db.execute(f'ALTER DATABASE "{db.name}" SET logical_decoding_work_mem = \'64kB\'')
    db.execute("CREATE TABLE public.s (id int PRIMARY KEY, a int, pad text)")
    engine = target.start(target.config(["public.s"], flush_rows=500))
    target.catch_up(engine)
    with db.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO public.s SELECT g, g, repeat('p', 50) "
                     "FROM generate_series(1, 3000) g")
        conn.execute("ALTER TABLE public.s ADD COLUMN b varchar(10)")
        conn.execute("INSERT INTO public.s SELECT g, g, 'q', 'b' || g "
                     "FROM generate_series(3001, 6000) g")
        conn.execute("SAVEPOINT s1")
        conn.execute("ALTER TABLE public.s ADD COLUMN c int, DROP COLUMN b")
        conn.execute("INSERT INTO public.s SELECT g, g, 'r', g FROM generate_series(6001, 9000) g")
        conn.execute("ROLLBACK TO SAVEPOINT s1")
        conn.execute("INSERT INTO public.s SELECT g, g, 's', 'bb' || g "
                     "FROM generate_series(9001, 12000) g")
        conn.execute("UPDATE public.s SET b = 'u' || id WHERE id % 7 = 0")
        conn.execute("DELETE FROM public.s WHERE id % 11 = 0")
    with db.connect() as conn, conn.transaction():
        conn.execute("UPDATE public.s SET a = -a WHERE id % 3 = 0")
        conn.execute("ALTER TABLE public.s ALTER COLUMN b TYPE varchar(40), "
                     "ALTER COLUMN a TYPE bigint")
        conn.execute("UPDATE public.s SET a = a + 5000000000, b = repeat('w', 30) "
                     "WHERE id % 5 = 0")
    target.catch_up(engine)
    target.assert_replicated({"public.s": ["id"]})


def test_a_column_added_to_a_partitioned_root(target: Target) -> None:
    # publish_via_partition_root: one target table; partitions whose own column order
    # differs from the root's (a dropped column, another order) arrive in the root's shape.
    db = target.db
    db.execute("CREATE TABLE public.p (id int, k int, v text, PRIMARY KEY (id, k)) "
               "PARTITION BY LIST (k)")
    db.execute("CREATE TABLE public.p1 PARTITION OF public.p FOR VALUES IN (1)")
    db.execute("CREATE TABLE public.p2 (v text, x int, k int NOT NULL, id int NOT NULL)")
    db.execute("ALTER TABLE public.p2 DROP COLUMN x")
    db.execute("ALTER TABLE public.p ATTACH PARTITION public.p2 FOR VALUES IN (2)")
    db.execute("CREATE PUBLICATION pp FOR TABLE public.p WITH (publish_via_partition_root)")
    engine = target.start(target.config(["public.p"], publication_name="pp"))
    target.catch_up(engine)
    db.execute("INSERT INTO public.p VALUES (1, 1, 'a'), (2, 2, 'b')")
    with db.connect() as conn, conn.transaction():
        conn.execute("INSERT INTO public.p VALUES (3, 1, 'c'), (4, 2, 'd')")
        conn.execute("ALTER TABLE public.p ADD COLUMN w int")
        conn.execute("INSERT INTO public.p VALUES (5, 1, 'e', 5), (6, 2, 'f', 6)")
        conn.execute("UPDATE public.p SET w = id * 10, v = v || '!'")
    db.execute("CREATE TABLE public.p3 (w int, v text, k int NOT NULL, id int NOT NULL)")
    db.execute("ALTER TABLE public.p ATTACH PARTITION public.p3 FOR VALUES IN (3)")
    db.execute("INSERT INTO public.p VALUES (7, 3, 'g', 70)")
    db.execute("UPDATE public.p SET k = 3 WHERE id = 1")  # moves to another partition
    target.catch_up(engine)
    target.assert_replicated({"public.p": ["id", "k"]})


def test_unchanged_toast_values_across_column_changes(target: Target) -> None:
    # Updates that do not resend a TOASTed value, key changes and deletes, around ADD and
    # DROP COLUMN and a change of REPLICA IDENTITY, all in one transaction per table.
    db = target.db
    big = "".join(f"{(i * 104729) % 1000003:07d}" for i in range(15_000))
    for table, identity in (("tt", "DEFAULT"), ("tf", "FULL")):
        db.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, t text, s int)")
        db.execute(f"ALTER TABLE public.{table} REPLICA IDENTITY {identity}")
    engine = target.start(target.config(["public.tt", "public.tf"], replica_identity="keep"))
    target.catch_up(engine)
    for table in ("tt", "tf"):
        db.execute(f"INSERT INTO public.{table} SELECT g, %s || g, g "
                   "FROM generate_series(1, 6) g", (big,))
    target.catch_up(engine)
    for table, other in (("tt", "FULL"), ("tf", "DEFAULT")):
        with db.connect() as conn, conn.transaction():
            conn.execute(f"UPDATE public.{table} SET s = s + 1 WHERE id = 1")
            conn.execute(f"ALTER TABLE public.{table} ADD COLUMN n int")
            conn.execute(f"UPDATE public.{table} SET s = s + 1, n = 5 WHERE id IN (1, 2)")
            conn.execute(f"UPDATE public.{table} SET id = id + 100 WHERE id IN (2, 3)")
            conn.execute(f"ALTER TABLE public.{table} DROP COLUMN s")
            conn.execute(f"UPDATE public.{table} SET n = 7 WHERE id IN (4, 102)")
            conn.execute(f"ALTER TABLE public.{table} REPLICA IDENTITY {other}")
            conn.execute(f"UPDATE public.{table} SET id = id + 1000 WHERE id IN (5, 103)")
            conn.execute(f"DELETE FROM public.{table} WHERE id = 6")
    target.catch_up(engine)
    target.assert_replicated({"public.tt": ["id"], "public.tf": ["id"]})


# -- crashes and restarts around a schema change ----------------------------------------

def test_restart_after_a_crash_between_a_schema_change_and_its_checkpoint(
        target: Target) -> None:
    # The target has the new shape (a BIGINT, c added, s dropped), the checkpoint is older:
    # the restarted engine replays the transaction, whose first change shows the old shape
    # (a INT). That narrowing needs nothing of the target (its column takes every value);
    # StarRocks stopped on it for good ("cannot be converted to INT without loss"), DuckDB
    # failed to narrow a column holding 9000000000.
    db = target.db
    db.execute("CREATE TABLE public.x (id int PRIMARY KEY, a int, s text)")
    db.execute("CREATE TABLE public.y (id int PRIMARY KEY)")
    config = target.config(["public.x", "public.y"])
    failing = FailingSink(target.sink(config))
    engine = target.start(config, failing)
    db.execute("INSERT INTO public.x VALUES (1, 1, 's1'), (2, 2, 's2'), (3, 3, 's3')")
    target.catch_up(engine)
    failing.fail_table = "y"  # x's rows load, the flush fails: no checkpoint covers them
    with db.connect() as conn, conn.transaction():
        conn.execute("UPDATE public.x SET a = 10 WHERE id = 1")
        conn.execute("ALTER TABLE public.x ADD COLUMN c text, ALTER COLUMN a TYPE bigint")
        conn.execute("INSERT INTO public.x VALUES (4, 9000000000, 's4', 'c4')")
        conn.execute("UPDATE public.x SET c = 'c' || id WHERE id <= 2")
        conn.execute("ALTER TABLE public.x DROP COLUMN s")
        conn.execute("UPDATE public.x SET a = -a WHERE id = 3")
        conn.execute("INSERT INTO public.y VALUES (1)")
    assert "injected crash" in target.failed(engine)
    assert any(r["id"] == 4 and r["a"] == 9000000000 for r in target.rows("public", "x"))
    target.stop(engine, drain=False)
    engine = target.start(config)
    target.catch_up(engine)
    target.assert_replicated({"public.x": ["id"], "public.y": ["id"]})


def test_restart_after_a_crash_right_after_a_schema_change(target: Target) -> None:
    db = target.db
    db.execute("CREATE TABLE public.x (id int PRIMARY KEY, a int, s text)")
    config = target.config(["public.x"])
    engine = target.start(config, FailingSink(target.sink(config)))
    db.execute("INSERT INTO public.x VALUES (1, 1, 's1'), (2, 2, 's2'), (3, 3, 's3')")
    target.catch_up(engine)
    with db.connect() as conn, conn.transaction():
        conn.execute("UPDATE public.x SET a = 10 WHERE id = 1")
        conn.execute("ALTER TABLE public.x ADD COLUMN c text, ALTER COLUMN a TYPE bigint")
        conn.execute("INSERT INTO public.x VALUES (4, 9000000000, 's4', 'c4')")
        conn.execute("ALTER TABLE public.x DROP COLUMN s")
        conn.execute("UPDATE public.x SET a = -a, c = 'c' || id WHERE id = 3")
    assert "injected crash" in target.failed(engine)
    target.stop(engine, drain=False)
    engine = target.start(config)
    target.catch_up(engine)
    target.assert_replicated({"public.x": ["id"]})


@pytest.mark.parametrize("target", ["starrocks"], indirect=True)
def test_schema_changes_while_stopped(target: Target) -> None:
    # (DuckDB refuses to start instead, by design: an existing DuckDB column that cannot
    # take what dbmazz sends stops setup, docs/types.md, "Tables made by hand".)
    db = target.db
    db.execute("CREATE TABLE public.w (id int PRIMARY KEY, a int, v varchar(5), s text)")
    config = target.config(["public.w"])
    engine = target.start(config)
    db.execute("INSERT INTO public.w VALUES (1, 1, 'a', 's1'), (2, 2, 'b', 's2')")
    target.catch_up(engine)
    target.stop(engine)
    db.execute("UPDATE public.w SET a = 10 WHERE id = 1")
    db.execute("ALTER TABLE public.w ALTER COLUMN a TYPE bigint, ALTER COLUMN v TYPE varchar(50)")
    db.execute("ALTER TABLE public.w ADD COLUMN c text, DROP COLUMN s")
    db.execute("INSERT INTO public.w VALUES (3, 9000000000, 'longer value', 'c3')")
    db.execute("UPDATE public.w SET c = 'c' || id, a = a + 1")
    engine = target.start(config)
    target.catch_up(engine)
    target.assert_replicated({"public.w": ["id"]})


# -- changes the target cannot follow: a stop, never wrong rows ---------------------------

@pytest.mark.parametrize("identity", ["default", "full"])
def test_a_primary_key_changed_while_streaming_stops_the_engine(target: Target,
                                                                identity: str) -> None:
    # PRIMARY KEY (id) → (id, k): loaded by id, (1, 'b') would overwrite (1, 'a') in the
    # target. Under DEFAULT the Relation message flags the new key; under FULL it flags every
    # column, and the catalog shows the new key when the message is sent again.
    db = target.db
    db.execute("CREATE TABLE public.k (id int, k text, v int, CONSTRAINT k_pk PRIMARY KEY (id))")
    engine = target.start(target.config(["public.k"], replica_identity=identity))
    db.execute("INSERT INTO public.k VALUES (1, 'a', 1), (2, 'a', 2)")
    target.catch_up(engine)
    db.execute("ALTER TABLE public.k DROP CONSTRAINT k_pk, ADD PRIMARY KEY (id, k)")
    db.execute("INSERT INTO public.k VALUES (1, 'b', 10)")
    error = target.failed(engine)
    assert "primary key of public.k changed while streaming" in error
    assert "(id, k)" in error
    assert sorted((r["id"], r["k"], r["v"]) for r in target.rows("public", "k")) == [
        (1, "a", 1), (2, "a", 2)]


def test_a_key_column_renamed_while_streaming_stops_with_the_fix(target: Target) -> None:
    # Under REPLICA IDENTITY DEFAULT the error said only "publish all columns of the table
    # (no column list on the publication)", with no column list there.
    db = target.db
    db.execute("CREATE TABLE public.k (id int PRIMARY KEY, v int)")
    engine = target.start(target.config(["public.k"], replica_identity="default"))
    db.execute("INSERT INTO public.k VALUES (1, 1)")
    target.catch_up(engine)
    db.execute("ALTER TABLE public.k RENAME COLUMN id TO key_id")
    db.execute("INSERT INTO public.k VALUES (2, 2)")
    error = target.failed(engine)
    assert "primary key column(s) id of public.k" in error
    assert "renamed at the source" in error
    assert "take public.k out of TABLES" in error
    assert [(r["id"], r["v"]) for r in target.rows("public", "k")] == [(1, 1)]


def test_a_primary_key_changed_while_stopped_is_refused_at_start(target: Target) -> None:
    db = target.db
    db.execute("CREATE TABLE public.k (id int, k text, v int, CONSTRAINT k_pk PRIMARY KEY (id))")
    config = target.config(["public.k"])
    engine = target.start(config)
    db.execute("INSERT INTO public.k VALUES (1, 'a', 1)")
    target.catch_up(engine)
    target.stop(engine)
    db.execute("ALTER TABLE public.k DROP CONSTRAINT k_pk, ADD PRIMARY KEY (id, k)")
    db.execute("INSERT INTO public.k VALUES (1, 'b', 10)")
    with pytest.raises(SetupError, match=r"primary key \(id\) but public\.k has \(id, k\)"):
        target.start(config)
    assert [(r["id"], r["k"]) for r in target.rows("public", "k")] == [(1, "a")]
