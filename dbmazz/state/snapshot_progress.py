"""Snapshot chunk progress, kept in the source database beside the checkpoints.

Table ``dbmazz_snapshot_progress (slot_name, table_name, chunk, pages, rows, done_at, …)``:
one row per planned chunk. A plan is written in one transaction before any chunk is read;
a chunk's row gets ``rows`` and ``done_at`` once the sink acknowledged its rows. After a
crash only chunks without ``done_at`` are read again. ``version`` is the
``dbmazz_cdc_version`` the chunk's rows carry; ``kind`` tells the initial snapshot from an
on-demand one (whose tables are replicated from then on, see :mod:`dbmazz.engine.snapshot`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from dbmazz.errors import SourceConnectionError
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.source.snapshot import Chunk

TABLE = "dbmazz_snapshot_progress"
INITIAL, ON_DEMAND = "initial", "on_demand"


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    chunk: Chunk
    version: int
    kind: str
    rows: int | None
    done: bool


class SnapshotProgressStore:
    def __init__(self, dsn: str, slot: str, schema: str = "public") -> None:
        self.slot = slot
        self._dsn = dsn
        self._table = sql.Identifier(schema, TABLE)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._dsn, autocommit=True,
                                             application_name="dbmazz-snapshot-progress")
            except psycopg.OperationalError as exc:
                raise SourceConnectionError(
                    f"cannot reach PostgreSQL to record snapshot progress: {_first_line(exc)}",
                    "check SOURCE_URL and that the server is up",
                ) from None
            self._conn.execute(sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " slot_name text NOT NULL, table_name text NOT NULL, chunk int NOT NULL,"
                " pages int8range NOT NULL, rows bigint, done_at timestamptz,"
                " version pg_lsn NOT NULL, kind text NOT NULL DEFAULT 'initial',"
                " planned_at timestamptz NOT NULL DEFAULT now(),"
                " PRIMARY KEY (slot_name, table_name, chunk))"
            ).format(self._table))
        return self._conn

    def _execute(self, query: sql.Composed, params: Sequence[object] = ()) -> list[Any]:
        with self._lock:
            try:
                cursor = self._connection().execute(query, params)
                return cursor.fetchall() if cursor.description else []
            except psycopg.OperationalError as exc:
                self._conn = None
                raise SourceConnectionError(
                    f"lost the connection while recording snapshot progress: "
                    f"{_first_line(exc)}",
                    "restart dbmazz; the snapshot resumes from the last finished chunk",
                ) from None

    def load(self, kind: str | None = None) -> list[ChunkRecord]:
        rows = self._execute(sql.SQL(
            "SELECT table_name, chunk, lower(pages), upper(pages), rows, done_at IS NOT NULL,"
            " version::text, kind FROM {} WHERE slot_name = %s"
            " AND (%s::text IS NULL OR kind = %s) ORDER BY table_name, chunk"
        ).format(self._table), (self.slot, kind, kind))
        return [
            ChunkRecord(Chunk(str(table), int(chunk), int(lo or 0),
                              None if hi is None else int(hi)),
                        parse_lsn(str(version)), str(k), None if n is None else int(n),
                        bool(done))
            for table, chunk, lo, hi, n, done, version, k in rows
        ]

    def save_plan(self, chunks: Sequence[Chunk], version: int, kind: str,
                  replace_tables: Sequence[str] | None = None) -> None:
        """Record a new plan; replaces earlier rows of ``replace_tables`` (default: all rows
        of this slot — a new slot invalidates any earlier plan under its name)."""
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction():
                    if replace_tables is None:
                        conn.execute(sql.SQL("DELETE FROM {} WHERE slot_name = %s").format(
                            self._table), (self.slot,))
                    else:
                        conn.execute(sql.SQL(
                            "DELETE FROM {} WHERE slot_name = %s AND table_name = ANY(%s)"
                        ).format(self._table), (self.slot, list(replace_tables)))
                    with conn.cursor() as cursor:
                        cursor.executemany(sql.SQL(
                            "INSERT INTO {} (slot_name, table_name, chunk, pages, version, kind)"
                            " VALUES (%s, %s, %s, int8range(%s, %s), %s, %s)"
                        ).format(self._table), [
                            (self.slot, c.table, c.index, c.first_page, c.end_page,
                             format_lsn(version), kind)
                            for c in chunks
                        ])
            except psycopg.OperationalError as exc:
                self._conn = None
                raise SourceConnectionError(
                    f"lost the connection while saving the snapshot plan: {_first_line(exc)}",
                    "restart dbmazz",
                ) from None

    def mark_done(self, chunk: Chunk, rows: int) -> None:
        self._execute(sql.SQL(
            "UPDATE {} SET rows = %s, done_at = now()"
            " WHERE slot_name = %s AND table_name = %s AND chunk = %s"
        ).format(self._table), (rows, self.slot, chunk.table, chunk.index))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
