"""The throwaway PostgreSQL cluster really runs a logical-level server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

from dbmazz.testing.fixtures import Database, StandbyPair
from dbmazz.testing.postgres import (
    PostgresBinariesNotFound,
    PostgresCluster,
    PostgresServer,
    find_bindir,
    wait_for_replay,
)


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


def test_tls_cluster_serves_verify_full_for_localhost(tls_pg_server: PostgresCluster) -> None:
    assert tls_pg_server.tls is not None
    ca = str(tls_pg_server.tls.ca_file)
    for host in ("localhost", "127.0.0.1"):
        dsn = tls_pg_server.dsn(sslmode="verify-full", sslrootcert=ca).replace(
            "@127.0.0.1:", f"@{host}:")
        with psycopg.connect(dsn) as conn:
            assert conn.pgconn.ssl_in_use
            [(ssl,)] = conn.execute(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchall()
            assert ssl is True
    # A client that trusts another CA refuses the server (the certificate is really checked).
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        psycopg.connect(tls_pg_server.dsn(sslmode="verify-full",
                                          sslrootcert=str(tls_pg_server.tls.cert_file)))


def test_standby_pair_replays_the_primary(pg_standby_pair: StandbyPair) -> None:
    primary, standby = pg_standby_pair.primary, pg_standby_pair.standby
    primary.execute("CREATE TABLE on_primary (id int)")
    primary.execute("INSERT INTO on_primary VALUES (1), (2)")
    wait_for_replay(primary, standby)
    with standby.connect() as conn:
        [(recovering,)] = conn.execute("SELECT pg_is_in_recovery()").fetchall()
        assert recovering is True
        assert conn.execute("SELECT count(*) FROM on_primary").fetchall() == [(2,)]
        [(wal_level,)] = conn.execute("SHOW wal_level").fetchall()
        assert wal_level == "logical"


def test_server_major_matches_the_selected_binaries(pg_server: PostgresServer) -> None:
    bindir = os.environ.get("PG_BINDIR")
    if not bindir or os.environ.get("DBMAZZ_TEST_PG_DSN"):
        pytest.skip("no PG_BINDIR selected")
    out = subprocess.run([str(Path(bindir) / "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert f" {pg_server.major}." in out
