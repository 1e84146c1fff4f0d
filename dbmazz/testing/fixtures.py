"""pytest fixtures over :mod:`dbmazz.testing.postgres` (loaded by tests/conftest.py)."""

from __future__ import annotations

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
)


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
def pg_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server: a private cluster, or DBMAZZ_TEST_PG_DSN."""
    if dsn := os.environ.get("DBMAZZ_TEST_PG_DSN"):
        yield external_server(dsn)
        return
    with temporary_cluster() as cluster:
        yield cluster


@pytest.fixture
def pg_db(pg_server: PostgresServer) -> Iterator[Database]:
    """A new, empty database for one test; dropped with its replication slots afterwards."""
    name = pg_server.create_database()
    try:
        yield Database(pg_server, name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def private_pg_cluster() -> Iterator[PostgresCluster]:
    """A cluster of the test's own, for tests that restart or reconfigure the server."""
    if os.environ.get("DBMAZZ_TEST_PG_DSN"):
        pytest.skip("needs a private cluster; DBMAZZ_TEST_PG_DSN points at a shared server")
    with temporary_cluster() as cluster:
        yield cluster


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
