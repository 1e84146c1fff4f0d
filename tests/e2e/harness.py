"""Shared pieces of the end-to-end tests: configs, waiting for catch-up, comparing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dbmazz.api.client import Client
from dbmazz.api.server import GrpcServer
from dbmazz.config import Config
from dbmazz.engine.core import Engine, RunState
from dbmazz.engine.service import EngineService
from dbmazz.lsn import parse_lsn
from dbmazz.sink.base import Sink
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.testing.compare import Difference, compare, duckdb_fetcher
from dbmazz.testing.fixtures import Database


def duckdb_config(db: Database, tmp_path: Path, tables: list[str], **extra: Any) -> Config:
    return Config.load(
        {
            "source_url": db.dsn,
            "tables": ",".join(tables),
            "sink": "duckdb",
            "duckdb_path": str(tmp_path / "target.duckdb"),
            "slot_name": "dbmazz_e2e",
            "publication_name": "dbmazz_e2e",
            "flush_interval_ms": 100,
            "grpc_port": 0,
            **extra,
        },
        env_file=None,
    )


def mark(db: Database) -> int:
    """Write a transactional logical message and return its LSN: once the engine's durable
    LSN passes it, every change committed before the call is loaded."""
    [(lsn,)] = db.query("SELECT pg_logical_emit_message(true, 'dbmazz_test_marker', 'x')::text")
    return parse_lsn(str(lsn))


def wait_until_loaded(engine: Engine, lsn: int, timeout_s: float = 180.0) -> None:
    if not engine.wait_durable(lsn, timeout_s):
        raise AssertionError(
            f"engine did not load up to {lsn} within {timeout_s}s "
            f"(durable {engine.durable_lsn}, progress {engine.progress})"
        )


def diff_table(db: Database, sink: DuckDBSink, namespace: str, table: str,
               keys: list[str]) -> Difference:
    with db.connect() as conn:
        return compare(conn, namespace, table, keys, duckdb_fetcher(sink.query, namespace, table))


def assert_replicated(db: Database, sink: DuckDBSink,
                      tables: dict[str, list[str]]) -> None:
    problems = []
    for name, keys in tables.items():
        namespace, table = name.split(".", 1)
        diff = diff_table(db, sink, namespace, table, keys)
        if not diff.equal:
            problems.append(str(diff))
    assert not problems, "\n".join(problems)


@contextlib.contextmanager
def served(config: Config, sink: Sink, *, setup_timeout_s: float = 120
           ) -> Iterator[tuple[EngineService, GrpcServer, Client]]:
    """An engine service as `dbmazz run` serves it: gRPC server and a client, setup
    finished and not FAILED on entry; stopped (and the sink closed) on exit."""
    from tests.scripted import eventually

    service = EngineService(config, sink=sink)
    server = GrpcServer(service, port=0)
    server.start()
    service.start()
    client = Client(server.address)
    try:
        eventually(lambda: service.state != RunState.STARTING, "setup to finish",
                   setup_timeout_s)
        assert not service.failed, service.error
        yield service, server, client
    finally:
        client.close()
        service.stop(timeout=60)
        server.stop(grace=0)
        sink.close()
