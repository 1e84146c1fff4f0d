"""pytest fixtures over :mod:`dbmazz.testing.postgres` (loaded by tests/conftest.py).

Server selection: ``PG_BINDIR`` names one server's bin directory (default: the system's).
``PG_VERSIONS=14,16,17,18`` runs every selected test once per listed server (test ids get
``[pg14]`` ...); an entry is a major version (a build from :mod:`dbmazz.testing.pgbinaries`,
fetched into ``.pg/`` when missing), ``system``, or a bin directory path. While a version's
tests run, ``PG_BINDIR`` points at its binaries, so clusters a test starts itself (and
subprocesses) use the same server.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
import pytest

from dbmazz.testing.postgres import (
    PostgresCluster,
    PostgresServer,
    external_server,
    temporary_cluster,
    temporary_standby,
)


def _version_entries() -> list[str]:
    return [v.strip() for v in os.environ.get("PG_VERSIONS", "").split(",") if v.strip()]


def _bindir_of(entry: str) -> str | None:
    """The bin directory a PG_VERSIONS entry names (None: the system's)."""
    if entry == "system":
        return None
    if entry.isdigit():
        from dbmazz.testing.pgbinaries import bindir_for

        return str(bindir_for(int(entry)))
    return entry


_VERSIONS = _version_entries()


def _select_bindir(entry: str) -> Iterator[str | None]:
    bindir = _bindir_of(entry)
    saved = os.environ.get("PG_BINDIR")
    if bindir is None:
        os.environ.pop("PG_BINDIR", None)
    else:
        os.environ["PG_BINDIR"] = bindir
    try:
        yield bindir
    finally:
        if saved is None:
            os.environ.pop("PG_BINDIR", None)
        else:
            os.environ["PG_BINDIR"] = saved


if _VERSIONS:
    # Autouse, so that every selected test runs once per server, also those that start a
    # cluster themselves; pytest groups the tests by version (one server at a time).
    @pytest.fixture(
        scope="session",
        autouse=True,
        params=_VERSIONS,
        ids=[f"pg{v}" if v.isdigit() else v for v in _VERSIONS],
    )
    def pg_bindir(request: pytest.FixtureRequest) -> Iterator[str | None]:
        """The server binaries this part of the session runs against (module doc)."""
        yield from _select_bindir(str(request.param))

else:

    @pytest.fixture(scope="session")
    def pg_bindir() -> Iterator[str | None]:
        """The server binaries of this session: ``PG_BINDIR`` or the system's."""
        yield os.environ.get("PG_BINDIR")


def require_pg(server: PostgresServer, major: int, feature: str) -> None:
    """Skip the test on servers older than ``major``, naming the version and the feature."""
    have = server.major
    if have < major:
        pytest.skip(f"{feature} needs PostgreSQL {major}+; this server is PostgreSQL {have}")


@dataclass
class Database:
    """One freshly created database on the test server."""

    server: PostgresServer
    name: str

    @property
    def dsn(self) -> str:
        return self.server.dsn(self.name)

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return self.server.connect(self.name, autocommit=autocommit)

    def execute(self, statement: str, params: object = None) -> None:
        with self.connect() as conn:
            conn.execute(statement, params)  # type: ignore[call-overload]

    def query(self, statement: str, params: object = None) -> list[tuple[object, ...]]:
        with self.connect() as conn:
            return conn.execute(statement, params).fetchall()  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def pg_server(pg_bindir: str | None) -> Iterator[PostgresServer]:
    """The session's PostgreSQL server: a private cluster, or DBMAZZ_TEST_PG_DSN."""
    if dsn := os.environ.get("DBMAZZ_TEST_PG_DSN"):
        yield external_server(dsn)
        return
    with temporary_cluster() as cluster:
        yield cluster


@contextlib.contextmanager
def fresh_database(server: PostgresServer) -> Iterator[Database]:
    """A new, empty database on ``server``; dropped with its replication slots at exit."""
    name = server.create_database()
    try:
        yield Database(server, name)
    finally:
        server.drop_database(name)


@pytest.fixture
def pg_db(pg_server: PostgresServer) -> Iterator[Database]:
    """A new, empty database for one test; dropped with its replication slots afterwards."""
    with fresh_database(pg_server) as db:
        yield db


@pytest.fixture
def private_pg_cluster(pg_bindir: str | None) -> Iterator[PostgresCluster]:
    """A cluster of the test's own, for tests that restart or reconfigure the server."""
    if os.environ.get("DBMAZZ_TEST_PG_DSN"):
        pytest.skip("needs a private cluster; DBMAZZ_TEST_PG_DSN points at a shared server")
    with temporary_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def tls_pg_server(pg_bindir: str | None) -> Iterator[PostgresCluster]:
    """A cluster serving TLS with a throwaway CA (``server.tls.ca_file``) for localhost."""
    if os.environ.get("DBMAZZ_TEST_PG_DSN"):
        pytest.skip("needs a private cluster; DBMAZZ_TEST_PG_DSN points at a shared server")
    with temporary_cluster(tls=True) as cluster:
        yield cluster


@pytest.fixture
def tls_db(tls_pg_server: PostgresCluster) -> Iterator[Database]:
    """A new, empty database on the TLS cluster for one test; dropped afterwards."""
    with fresh_database(tls_pg_server) as db:
        yield db


@dataclass
class StandbyPair:
    """A primary and its hot standby (both private clusters)."""

    primary: PostgresCluster
    standby: PostgresCluster


@pytest.fixture
def pg_standby_pair(pg_bindir: str | None) -> Iterator[StandbyPair]:
    """A primary + hot standby pair, for logical decoding from a standby (PostgreSQL 16+).

    Skipped (with the version) on servers that cannot decode on a standby.
    """
    if os.environ.get("DBMAZZ_TEST_PG_DSN"):
        pytest.skip("needs private clusters; DBMAZZ_TEST_PG_DSN points at a shared server")
    with temporary_cluster() as primary:
        require_pg(primary, 16, "logical decoding on a standby")
        with temporary_standby(primary) as standby:
            yield StandbyPair(primary, standby)


# -- StarRocks emulator (dbmazz.testing.starrocks) ------------------------------------------

if TYPE_CHECKING:
    from dbmazz.testing.starrocks import StarRocksEmulator


@pytest.fixture
def starrocks(request: pytest.FixtureRequest) -> Iterator[StarRocksEmulator]:
    """A fresh StarRocks emulator (FE/BE HTTP + MySQL on 127.0.0.1) for one test.

    Two BEs, user ``root`` with no password. Pass emulator options through indirect
    parametrisation: ``@pytest.mark.parametrize("starrocks", [{"alter_delay": 0.2}],
    indirect=True)``.
    """
    from dbmazz.testing.starrocks import StarRocksEmulator

    options = {"be_count": 2, **getattr(request, "param", {})}
    with StarRocksEmulator(**options) as emulator:
        yield emulator
