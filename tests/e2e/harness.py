"""Shared pieces of the end-to-end tests: configs, waiting for catch-up, comparing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbmazz.config import Config
from dbmazz.engine.core import Engine
from dbmazz.lsn import parse_lsn
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
