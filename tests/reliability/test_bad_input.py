"""Bad input: each mistake gives a specific, actionable error and leaves nothing behind;
awkward but legal input (names needing quotes, a shared publication) just works."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql

from dbmazz.config import Config
from dbmazz.engine.build import build_live_engine
from dbmazz.engine.core import RunState
from dbmazz.errors import DbmazzError, SetupError, SinkError, SourceConnectionError, SourceError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.source.database import SourceDatabase
from dbmazz.testing.compare import compare, duckdb_fetcher
from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresCluster, free_port
from dbmazz.testing.starrocks import StarRocksEmulator
from tests.e2e.harness import mark, wait_until_loaded
from tests.reliability.helpers import poll, running, starrocks_fetcher

SLOT = "dbmazz_bad"
PUBLICATION = "dbmazz_bad"
SR_PASSWORD = "sr-right-password"


@dataclass
class Env:
    db: Database
    sr: StarRocksEmulator
    tmp: Path
    #: A port nothing listens on.
    port: int

    def config(self, **overrides: Any) -> Config:
        values: dict[str, Any] = {
            "source_url": self.db.dsn,
            "tables": "public.t",
            "sink": "duckdb",
            "duckdb_path": str(self.tmp / "target.duckdb"),
            "slot_name": SLOT,
            "publication_name": PUBLICATION,
            "flush_interval_ms": 100,
            "grpc_port": 0,
            "heartbeat_interval_s": 0,
            "snapshot": "never",
        }
        values.update(overrides)
        return Config.load(values, env_file=None)

    def starrocks(self, **overrides: Any) -> dict[str, Any]:
        return {"sink": "starrocks", "starrocks_url": self.sr.url,
                "starrocks_mysql_port": self.sr.mysql_port, "starrocks_password": SR_PASSWORD,
                "starrocks_db": "bad", **overrides}

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.db.server.port}/{self.db.name}"


@pytest.fixture
def env(pg_db: Database, tmp_path: Path) -> Iterator[Env]:
    pg_db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    pg_db.execute("CREATE TABLE public.nokey (v text)")
    role = sql.Identifier(f"norepl_{pg_db.name}")
    pg_db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(role))
    with StarRocksEmulator(password=SR_PASSWORD) as sr:
        yield Env(pg_db, sr, tmp_path, free_port())
    pg_db.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))


def assert_nothing_created(env: Env) -> None:
    """No slot, no publication, no replica identity change, no checkpoint table at the
    source; no target database or file."""
    db = env.db
    assert db.query("SELECT slot_name FROM pg_replication_slots WHERE database = %s",
                    (db.name,)) == []
    assert db.query("SELECT pubname FROM pg_publication") == []
    assert db.query("SELECT relname FROM pg_class WHERE relname IN ('t', 'nokey') "
                    "AND relreplident <> 'd'") == []
    assert db.query("SELECT to_regclass('public.dbmazz_checkpoints')") == [(None,)]
    assert not (env.tmp / "target.duckdb").exists()
    assert "bad" not in [r[0] for r in env.sr.execute("SHOW DATABASES")]


@dataclass
class Case:
    overrides: Callable[[Env], dict[str, Any]]
    error: type[DbmazzError]
    message: Callable[[Env], str]
    hint: str


CASES = {
    "wrong source password": Case(
        lambda e: {"source_url": e.db.dsn.replace(e.db.server.password, "not-the-password")},
        SourceError,
        lambda e: (f"PostgreSQL at postgres@{e.where} rejected the credentials: connection "
                   f"failed: connection to server at \"127.0.0.1\", port {e.db.server.port} "
                   "failed: FATAL: password authentication failed for user \"postgres\""),
        "check the user and password of SOURCE_URL"),
    "source unreachable": Case(
        lambda e: {"source_url": e.db.dsn.replace(f":{e.db.server.port}/", f":{e.port}/")},
        SourceConnectionError,
        lambda e: (f"cannot connect to PostgreSQL at postgres@127.0.0.1:{e.port}/{e.db.name}: "
                   f"connection failed: connection to server at \"127.0.0.1\", port {e.port} "
                   "failed: Connection refused Is the server running on that host and "
                   "accepting TCP/IP connections?"),
        "check the host and port of SOURCE_URL and that the server is running (a connection "
        "lost while streaming is retried with backoff)"),
    "wrong StarRocks password": Case(
        lambda e: e.starrocks(starrocks_password="not-the-password"),
        SetupError,
        lambda e: (f"StarRocks: cannot connect to the StarRocks FE MySQL port "
                   f"127.0.0.1:{e.sr.mysql_port} as 'root': Access denied for user root"),
        "check STARROCKS_USER and STARROCKS_PASSWORD"),
    "StarRocks unreachable": Case(
        lambda e: e.starrocks(starrocks_url=f"http://127.0.0.1:{e.port}",
                              starrocks_mysql_port=e.port),
        SetupError,
        lambda e: (f"StarRocks: cannot connect to the StarRocks FE MySQL port "
                   f"127.0.0.1:{e.port} as 'root': Can't connect to MySQL server on "
                   "'127.0.0.1' ([Errno 111] Connection refused)"),
        "check STARROCKS_URL (its host is used for MySQL), STARROCKS_MYSQL_PORT and that the "
        "FE is running"),
    "missing tables": Case(
        lambda e: {"tables": "public.T,public.t,public.nope"},
        SetupError,
        lambda e: (f"tables not found in database '{e.db.name}': public.T (did you mean "
                   "'public.t'?), public.nope"),
        "create them or correct TABLES; names are case-sensitive, 'table' means public.table, "
        "and names containing dots are written with double quotes (\"my.schema\".\"my.table\")"),
    "missing primary key": Case(
        lambda e: {"tables": "public.t,public.nokey"},
        SetupError,
        lambda e: ("tables without a primary key: public.nokey — dbmazz needs a key to apply "
                   "updates and deletes in the target"),
        "add a PRIMARY KEY, or create a UNIQUE index on NOT NULL columns and run `ALTER TABLE "
        "... REPLICA IDENTITY USING INDEX <index>` (then set REPLICA_IDENTITY=keep)"),
    "no replication privilege": Case(
        lambda e: {"source_url": f"postgresql://norepl_{e.db.name}:pw@127.0.0.1:"
                                 f"{e.db.server.port}/{e.db.name}"},
        SetupError,
        lambda e: (f"role 'norepl_{e.db.name}' lacks the REPLICATION attribute, so it cannot "
                   "read the replication stream"),
        "run `ALTER ROLE \"norepl_{db}\" WITH REPLICATION;` as a superuser"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_clearly_and_changes_nothing(case: str, env: Env) -> None:
    spec = CASES[case]
    config = env.config(**spec.overrides(env))
    with pytest.raises(DbmazzError) as info:
        build_live_engine(config)
    error = info.value
    assert type(error) is spec.error
    assert error.message == spec.message(env)
    assert error.hint == spec.hint.format(db=env.db.name)
    assert_nothing_created(env)


def test_wal_level_replica_is_refused(private_pg_cluster: PostgresCluster,
                                      tmp_path: Path) -> None:
    cluster = private_pg_cluster
    cluster.set_setting("wal_level", "replica", restart=True)
    db = Database(cluster, cluster.create_database())
    db.execute("CREATE TABLE public.t (id int PRIMARY KEY, v text)")
    config = Config.load({"source_url": db.dsn, "tables": "t", "sink": "duckdb",
                          "duckdb_path": str(tmp_path / "x.duckdb"), "grpc_port": 0},
                         env_file=None)
    with pytest.raises(SetupError) as info:
        build_live_engine(config)
    assert str(info.value) == ("wal_level is 'replica'; set wal_level=logical in "
                               "postgresql.conf and restart PostgreSQL")
    assert db.query("SELECT count(*) FROM pg_replication_slots") == [(0,)]
    assert db.query("SELECT count(*) FROM pg_publication") == [(0,)]
    assert not (tmp_path / "x.duckdb").exists()


def test_a_pg_hba_reject_line_is_refused_not_retried(private_pg_cluster: PostgresCluster
                                                    ) -> None:
    """A `reject` line in pg_hba.conf is the server's access rule: an error naming the fix,
    not an unreachable server retried forever."""
    cluster = private_pg_cluster
    db = Database(cluster, cluster.create_database())
    db.execute("CREATE ROLE shut_out LOGIN PASSWORD 'pw'")
    hba = cluster.datadir / "pg_hba.conf"
    hba.write_text("host all shut_out 127.0.0.1/32 reject\n" + hba.read_text())
    cluster.reload()
    dsn = f"postgresql://shut_out:pw@127.0.0.1:{cluster.port}/{db.name}"
    refused = poll(lambda: refusal(dsn), "the pg_hba.conf reject line to take effect", 30)
    assert not refused.retryable
    assert "refuses the connection" in refused.message
    assert "pg_hba.conf rejects connection" in refused.message
    assert refused.hint.startswith("add a pg_hba.conf line allowing this user")


def refusal(dsn: str) -> SourceError | None:
    """The classified error of a refused connection; None while the reload is pending (the
    postmaster rereads pg_hba.conf asynchronously after SIGHUP)."""
    try:
        SourceDatabase(dsn).connect("test").close()
    except SourceError as exc:
        return exc
    return None


def test_cli_reports_a_setup_error_with_its_fix_and_exit_code(env: Env) -> None:
    """What an operator sees from `dbmazz run` (gRPC off): the message and the fix, exit 1."""
    result = subprocess.run(
        [sys.executable, "-m", "dbmazz", "run"], capture_output=True, text=True, timeout=120,
        env={**os.environ, "SOURCE_URL": env.db.dsn, "TABLES": "public.t,public.nokey",
             "SINK": "duckdb", "DUCKDB_PATH": str(env.tmp / "target.duckdb"),
             "SLOT_NAME": SLOT, "PUBLICATION_NAME": PUBLICATION, "GRPC_PORT": "0"})
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "dbmazz: error: tables without a primary key: public.nokey — dbmazz needs a key to "
        "apply updates and deletes in the target — add a PRIMARY KEY, or create a UNIQUE "
        "index on NOT NULL columns and run `ALTER TABLE ... REPLICA IDENTITY USING INDEX "
        "<index>` (then set REPLICA_IDENTITY=keep)"), result.stderr
    assert_nothing_created(env)


# -- legal but awkward input -----------------------------------------------------------------


def test_a_publication_with_other_tables_is_shared_not_changed(
        env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dbmazz")
    db = env.db
    db.execute("CREATE TABLE public.other (v text)")  # not even a key: never touched
    db.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE public.other")
    config = env.config()
    sink = DuckDBSink(config.duckdb_path)
    with running(build_live_engine(config, sink=sink)) as engine:
        db.execute("INSERT INTO public.t VALUES (1, 'mine'), (2, 'mine too')")
        db.execute("INSERT INTO public.other VALUES ('not configured')")
        db.execute("TRUNCATE public.other")
        db.execute("UPDATE public.t SET v = 'changed' WHERE id = 2")
        wait_until_loaded(engine, mark(db))
    assert (f"publication '{PUBLICATION}' also publishes tables not configured: public.other "
            "(left as they are; their changes are ignored, so a table put back into TABLES "
            "later is loaded again by an on-demand snapshot under SNAPSHOT=initial)"
            ) in caplog.text
    published = db.query("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                         "WHERE pubname = %s ORDER BY 1", (PUBLICATION,))
    assert published == [("public.other",), ("public.t",)]
    with db.connect() as conn:
        assert compare(conn, "public", "t", ["id"],
                       duckdb_fetcher(sink.query, "public", "t")).equal
    # Not replicated: no target table, and its changes never reach the target.
    assert sink.query("SELECT count(*) FROM information_schema.tables "
                      "WHERE table_name = 'other'") == [(0,)]
    sink.close()


#: (schema, table, key column, other columns): every kind of name that needs quoting,
#: including hostile ones; replicated end to end.
AWKWARD = [
    ("Mixed Case", "with space", "id", ["sp ace", "Quo\"te"]),
    ("public", 'weird"name', "Key \"K\"", ["semi;colon", "ünï"]),
    ("public", "semi;colon", "id", ["Robert'); DROP TABLE x;--"]),
    ("public", "Robert'); DROP TABLE x;--", "id", ["v"]),
    ("public", "ünïcødé_表", "ключ", ["значение"]),
    ("public", "MixedCase", "Id", ["Value"]),
]


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _create_awkward(db: Database) -> list[str]:
    db.execute('CREATE SCHEMA "Mixed Case"')
    names = []
    for schema, table, key, others in AWKWARD:
        columns = ", ".join(f"{_ident(c)} text" for c in others)
        db.execute(f"CREATE TABLE {_ident(schema)}.{_ident(table)} "
                   f"({_ident(key)} int PRIMARY KEY, {columns})")
        names.append(f"{_ident(schema)}.{_ident(table)}")
    return names


def _awkward_workload(db: Database) -> None:
    for schema, table, key, others in AWKWARD:
        target = f"{_ident(schema)}.{_ident(table)}"
        cols = ", ".join(_ident(c) for c in [key, *others])
        values = ", ".join(["%s"] * (1 + len(others)))
        for i in range(1, 6):
            db.execute(f"INSERT INTO {target} ({cols}) VALUES ({values})",
                       (i, *[f"{c} {i} '\"; --" for c in others]))
        db.execute(f"UPDATE {target} SET {_ident(others[0])} = 'updated' "
                   f"WHERE {_ident(key)} = 2")
        db.execute(f"UPDATE {target} SET {_ident(key)} = 100 WHERE {_ident(key)} = 3")
        db.execute(f"DELETE FROM {target} WHERE {_ident(key)} = 4")


@pytest.mark.parametrize("sink_kind", ["duckdb", "starrocks"])
def test_names_that_need_quoting_replicate_end_to_end(env: Env, sink_kind: str) -> None:
    db = env.db
    tables = _create_awkward(db)
    hostile_publication = 'pub"; DROP TABLE public.t; --'
    extra = env.starrocks() if sink_kind == "starrocks" else {}
    config = env.config(tables=",".join(tables), publication_name=hostile_publication, **extra)
    engine = build_live_engine(config)
    with running(engine):
        _awkward_workload(db)
        wait_until_loaded(engine, mark(db))
        assert engine.progress.state == RunState.RUNNING
    assert db.query("SELECT to_regclass('public.t') IS NOT NULL") == [(True,)]
    problems = []
    with db.connect() as conn:
        for schema, table, key, _ in AWKWARD:
            if sink_kind == "duckdb":
                sink = engine.sink
                fetch = duckdb_fetcher(sink.query, schema, table)  # type: ignore[attr-defined]
            else:
                fetch = starrocks_fetcher(lambda table=table: env.sr.rows("bad", table))
            diff = compare(conn, schema, table, [key], fetch)
            if not diff.equal:
                problems.append(str(diff))
            elif not diff_has_rows(conn, schema, table):
                problems.append(f"{schema}.{table}: no rows at the source")
    engine.sink.close()
    assert not problems, "\n".join(problems)


def diff_has_rows(conn: Any, schema: str, table: str) -> bool:
    from psycopg import sql

    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
        sql.Identifier(schema, table))).fetchone()
    return bool(row and row[0] == 4)


# -- values the target rejects -----------------------------------------------------------------


def test_a_value_starrocks_rejects_stops_with_the_row_and_the_fix(env: Env) -> None:
    """SETUP=skip with a user-made table whose VARCHAR is too short: the load fails (no
    silent truncation or NULL), dbmazz stops with StarRocks' reason and the rejected row,
    and nothing past the failed batch is confirmed."""
    db = env.db
    env.sr.execute("CREATE DATABASE bad")
    table = ("CREATE TABLE bad.t (id INT NOT NULL, v VARCHAR({}), dbmazz_op_type TINYINT, "
             "dbmazz_is_deleted BOOLEAN, dbmazz_synced_at DATETIME, dbmazz_cdc_version "
             "BIGINT) PRIMARY KEY (id) DISTRIBUTED BY HASH (id)")
    env.sr.execute(table.format(1048576))
    config = env.config(**env.starrocks(setup="skip"))
    engine = build_live_engine(config)
    # Changed by hand after the start-up type check (which refuses VARCHAR(5) for text,
    # tests/ops/test_target_types.py): the load itself must still fail cleanly.
    env.sr.execute("DROP TABLE bad.t")
    env.sr.execute(table.format(5))
    with running(engine):
        db.execute("INSERT INTO public.t VALUES (1, 'short')")
        wait_until_loaded(engine, mark(db))
        confirmed = engine.durable_lsn
        with db.connect() as conn:
            conn.execute("INSERT INTO public.t VALUES (2, 'much too long for five')")
            [(after,)] = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchall()
        poll(lambda: engine.progress.state == RunState.FAILED, "the engine to stop",
             timeout_s=120)
        with pytest.raises(SinkError) as info:
            engine.wait(60)
    error = info.value
    assert error.message.startswith("Stream Load into bad.t failed (label dbmazz-dbmazz_bad-t-")
    assert "too many filtered rows" in error.message.lower()
    assert "much too long for five" in error.message  # the rejected row, from ErrorURL
    assert error.hint == (
        "the rejected rows above do not fit the target table (types, NOT NULL, lengths); fix "
        "the target definition or let dbmazz create it (CREATE_TABLES=true); "
        "REJECTED_ROWS=table sets such rows aside in dbmazz_rejected instead of stopping")
    assert engine.durable_lsn == confirmed  # nothing confirmed past the failed batch
    [(slot_lsn,)] = db.query("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                             "WHERE slot_name = %s", (SLOT,))
    from dbmazz.lsn import parse_lsn

    assert parse_lsn(str(slot_lsn)) < parse_lsn(str(after))  # the failed one is not confirmed
    assert [r["id"] for r in env.sr.rows("bad", "t")] == [1]
    engine.sink.close()


@pytest.mark.parametrize("change", [
    "ALTER TABLE public.t RENAME TO renamed",
    "ALTER TABLE public.t SET SCHEMA elsewhere",
], ids=["rename", "set-schema"])
def test_a_table_renamed_while_streaming_stops_with_the_fix(env: Env, change: str) -> None:
    """Its changes arrive under the new name, which is not in TABLES: passing them over
    would lose them silently. The engine stops, names both names, and confirms nothing
    past the last change it loaded; following the fix loads everything."""
    db = env.db
    db.execute("CREATE SCHEMA elsewhere")
    config = env.config()
    sink = DuckDBSink(config.duckdb_path)
    with running(build_live_engine(config, sink=sink)) as engine:
        db.execute("INSERT INTO public.t VALUES (1, 'before')")
        wait_until_loaded(engine, mark(db))
        db.execute(change)
        new_name = "public.renamed" if "RENAME" in change else "elsewhere.t"
        db.execute(f"INSERT INTO {new_name} VALUES (2, 'after')")
        db.execute(f"UPDATE {new_name} SET v = 'changed' WHERE id = 1")
        with pytest.raises(SetupError) as failed:
            engine.wait(120)
        assert engine.progress.state == RunState.FAILED
        error = failed.value
        assert error.message == (
            f"table public.t was renamed to {new_name} at the source, so its changes now "
            "arrive under a name TABLES does not list")
        assert error.hint == (
            f"put {new_name} in TABLES in place of public.t and restart (TABLE_MAP="
            f"{new_name}:t keeps the target table's name): nothing after the last loaded "
            "change was confirmed")
    assert sink.query("SELECT id, v FROM public.t ORDER BY id") == [(1, "before")]
    fixed = env.config(tables=new_name, table_map=f"{new_name}:t", snapshot="initial")
    # DuckDB keeps the source's schema: a table moved to another schema loads there.
    target = f"{new_name.split('.')[0]}.t"
    with running(build_live_engine(fixed, sink=sink)):
        poll(lambda: sink.query(f"SELECT id, v FROM {target} ORDER BY id")
             == [(1, "changed"), (2, "after")], "the renamed table's changes", 120)
    sink.close()


def test_a_table_renamed_while_stopped_replays_under_its_new_name(env: Env) -> None:
    """A restart with the new name in TABLES replays changes made under the old name before
    the rename: history, not a rename to refuse."""
    db = env.db
    config = env.config()
    sink = DuckDBSink(config.duckdb_path)
    with running(build_live_engine(config, sink=sink)) as engine:
        db.execute("INSERT INTO public.t VALUES (1, 'before')")
        wait_until_loaded(engine, mark(db))
    db.execute("UPDATE public.t SET v = 'old name' WHERE id = 1")
    db.execute("INSERT INTO public.t VALUES (2, 'old name')")
    db.execute("ALTER TABLE public.t RENAME TO renamed")
    db.execute("INSERT INTO public.renamed VALUES (3, 'new name')")
    fixed = env.config(tables="public.renamed", table_map="public.renamed:t",
                       snapshot="initial")
    with running(build_live_engine(fixed, sink=sink)) as engine:
        poll(lambda: sink.query("SELECT id, v FROM public.t ORDER BY id")
             == [(1, "old name"), (2, "old name"), (3, "new name")], "every change", 120)
        db.execute("UPDATE public.renamed SET v = 'later' WHERE id = 2")
        wait_until_loaded(engine, mark(db))
        assert engine.progress.state != RunState.FAILED
    assert sink.query("SELECT v FROM public.t WHERE id = 2") == [("later",)]
    sink.close()


def test_a_source_column_named_like_an_audit_column_is_refused(env: Env) -> None:
    """At setup, and when a column is added while streaming: one clear error, not a
    failure deep in the merge."""
    db = env.db
    db.execute('CREATE TABLE public.clash (id int PRIMARY KEY, "DBMAZZ_IS_DELETED" bool)')
    with pytest.raises(SetupError) as caught:
        build_live_engine(env.config(tables="public.clash,public.t"))
    assert caught.value.message == (
        "tables with columns named like dbmazz's audit columns (dbmazz_op_type, "
        "dbmazz_is_deleted, dbmazz_synced_at, dbmazz_cdc_version): public.clash "
        "(DBMAZZ_IS_DELETED)")
    assert_nothing_created(env)
    sink = DuckDBSink(env.config().duckdb_path)
    with running(build_live_engine(env.config(), sink=sink)) as engine:
        db.execute("INSERT INTO public.t VALUES (1, 'a')")
        wait_until_loaded(engine, mark(db))
        db.execute("ALTER TABLE public.t ADD COLUMN dbmazz_cdc_version bigint")
        db.execute("INSERT INTO public.t VALUES (2, 'b', 7)")
        with pytest.raises(SetupError) as failed:
            engine.wait(120)
    assert failed.value.message.startswith("public.t has column(s) dbmazz_cdc_version:")
    assert sink.query("SELECT id FROM public.t") == [(1,)]
    sink.close()
