"""The throwaway PostgreSQL cluster really runs a logical-level server."""

from __future__ import annotations

import psycopg
import pytest

from dbmazz.testing.fixtures import Database
from dbmazz.testing.postgres import PostgresBinariesNotFound, PostgresCluster, find_bindir


def test_server_is_logical_and_accepts_replication(pg_db: Database) -> None:
    [(wal_level,)] = pg_db.query("SHOW wal_level")
    assert wal_level == "logical"
    with psycopg.connect(pg_db.dsn + "?replication=database", autocommit=True) as conn:
        row = conn.execute("IDENTIFY_SYSTEM").fetchone()
        assert row is not None and row[3] == pg_db.name


def test_each_test_gets_an_empty_database(pg_db: Database) -> None:
    rows = pg_db.query(
        "SELECT count(*) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    )
    assert rows == [(0,)]


def test_wrong_password_is_rejected(pg_db: Database) -> None:
    bad = pg_db.dsn.replace(pg_db.server.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(bad)


def test_private_cluster_restarts(private_pg_cluster: PostgresCluster) -> None:
    private_pg_cluster.execute("CREATE TABLE survives (id int)")
    private_pg_cluster.restart()
    rows = private_pg_cluster.connect().execute("SELECT count(*) FROM survives").fetchall()
    assert rows == [(0,)]


def test_missing_binaries_name_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("PG_BINDIR", str(tmp_path))
    monkeypatch.setattr("glob.glob", lambda pattern: [])
    with pytest.raises(PostgresBinariesNotFound, match="apt-get install -y postgresql"):
        find_bindir()
