"""Snapshot progress: in memory as a snapshot runs (:class:`SnapshotProgress`, for Status,
metrics and progress bars), and per chunk in the source database beside the checkpoints.

Table ``dbmazz_snapshot_progress (slot_name, table_name, chunk, pages, rows, done_at, …)``:
one row per planned chunk. A plan is written in one transaction before any chunk is read;
a chunk's row gets ``rows`` and ``done_at`` once the sink acknowledged its rows. After a
crash only chunks without ``done_at`` are read again. ``version`` is the
``dbmazz_cdc_version`` the chunk's rows carry; ``kind`` tells the initial snapshot from an
on-demand one (whose tables are replicated from then on, see :mod:`dbmazz.snapshot.stage`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import psycopg
from psycopg import sql

from dbmazz.errors import SourceConnectionError
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.retry import first_line
from dbmazz.snapshot.read import Chunk, TableLayout
from dbmazz.source.database import SourceDatabase

TABLE = "dbmazz_snapshot_progress"
INITIAL, ON_DEMAND = "initial", "on_demand"


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    chunk: Chunk
    version: int
    kind: str
    rows: int | None
    done: bool


class SlotRowsStore:
    """One slot's rows of a bookkeeping table beside the checkpoints. One connection
    (purpose ``snapshot-progress``), opened at first use — creating the table when it is
    missing — and again after one was lost."""

    #: The table, and its columns' definition.
    TABLE: ClassVar[str]
    COLUMNS: ClassVar[str]

    def __init__(self, source: SourceDatabase, slot: str, schema: str = "public") -> None:
        self.slot = slot
        self._source = source
        self._table = sql.Identifier(schema, self.TABLE)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._source.connect("snapshot-progress")
            self._conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + self.COLUMNS + ")"
                                       ).format(self._table))
        return self._conn

    @contextlib.contextmanager
    def _transaction(self, work: str, hint: str) -> Iterator[psycopg.Connection]:
        """The connection, inside one transaction; a lost connection is a
        :class:`SourceConnectionError` saying what ``work`` it interrupted."""
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    yield conn
            except psycopg.OperationalError as exc:
                self._conn = None
                raise SourceConnectionError(
                    f"lost the connection while {work}: {first_line(exc)}", hint) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class SnapshotProgressStore(SlotRowsStore):
    """``slot``'s rows of the progress table."""

    TABLE = TABLE
    COLUMNS = (" slot_name text NOT NULL, table_name text NOT NULL, chunk int NOT NULL,"
               " pages int8range NOT NULL, rows bigint, done_at timestamptz,"
               " version pg_lsn NOT NULL, kind text NOT NULL DEFAULT 'initial',"
               " planned_at timestamptz NOT NULL DEFAULT now(),"
               " PRIMARY KEY (slot_name, table_name, chunk)")

    def _execute(self, query: sql.Composed, params: Sequence[object] = ()) -> list[Any]:
        with self._transaction("recording snapshot progress", "restart dbmazz; the snapshot "
                               "resumes from the last finished chunk") as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

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
        with self._transaction("saving the snapshot plan", "restart dbmazz") as conn:
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

    def mark_done(self, chunk: Chunk, rows: int) -> None:
        self._execute(sql.SQL(
            "UPDATE {} SET rows = %s, done_at = now()"
            " WHERE slot_name = %s AND table_name = %s AND chunk = %s"
        ).format(self._table), (rows, self.slot, chunk.table, chunk.index))

    def reset(self, tables: Sequence[str], kind: str) -> None:
        """Mark every ``kind`` chunk of ``tables`` as not done (to be read again)."""
        self._execute(sql.SQL(
            "UPDATE {} SET rows = NULL, done_at = NULL"
            " WHERE slot_name = %s AND kind = %s AND table_name = ANY(%s)"
        ).format(self._table), (self.slot, kind, list(tables)))

    def forget(self, tables: Sequence[str], kind: str) -> None:
        """Delete the ``kind`` plan rows of ``tables``."""
        self._execute(sql.SQL(
            "DELETE FROM {} WHERE slot_name = %s AND kind = %s AND table_name = ANY(%s)"
        ).format(self._table), (self.slot, kind, list(tables)))


# --- in memory ------------------------------------------------------------------------------
@dataclass
class TableProgress:
    """One table of a snapshot, for Status, metrics and progress bars."""

    table: str
    pages: int
    rows_estimate: int
    chunks_total: int
    chunks_done: int = 0
    rows_done: int = 0
    started_at: float | None = None  # unix time of the first chunk started
    finished_at: float | None = None

    @property
    def done(self) -> bool:
        return self.chunks_done >= self.chunks_total

    @property
    def rows_per_s(self) -> float:
        if self.started_at is None or not self.rows_done:
            return 0.0
        end = self.finished_at or time.time()
        return self.rows_done / max(end - self.started_at, 1e-6)

    @property
    def rows_expected(self) -> int:
        """Best guess of the table's rows: the planner's estimate, else extrapolated from
        the chunks done (an empty or never analyzed table has no estimate)."""
        if self.done:
            return self.rows_done
        guess = self.rows_estimate
        if self.chunks_done:
            guess = max(guess, self.rows_done * self.chunks_total // self.chunks_done)
        return max(guess, self.rows_done)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (None: unknown)."""
        if self.done:
            return 0.0
        rate = self.rows_per_s
        if not rate:
            return None
        return max(self.rows_expected - self.rows_done, 0) / rate


@dataclass
class SnapshotProgress:
    """A snapshot (initial or on demand) as it runs: a plain object, read from any thread."""

    kind: str  # 'initial' | 'on_demand'
    version: int = 0
    active: bool = False
    tables: dict[str, TableProgress] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    #: What the snapshot waits for, if anything (e.g. CDC reaching the watermark).
    waiting: str = ""
    error: str | None = None
    reader: str = ""

    @property
    def tables_total(self) -> int:
        return len(self.tables)

    @property
    def tables_done(self) -> int:
        return sum(1 for t in self.tables.values() if t.done)

    @property
    def rows_copied(self) -> int:
        return sum(t.rows_done for t in self.tables.values())

    @property
    def rows_estimate(self) -> int:
        return sum(t.rows_expected for t in self.tables.values())

    def copy(self) -> SnapshotProgress:
        return replace(self, tables={k: replace(v) for k, v in self.tables.items()})


def progress_for(kind: str, version: int, layouts: Sequence[TableLayout],
                 chunks: Sequence[Chunk], done: dict[str, tuple[int, int]] | None = None
                 ) -> SnapshotProgress:
    """``done``: table → (chunks, rows) already loaded by an earlier (interrupted) run."""
    done = done or {}
    tables = {}
    for layout in layouts:
        total = sum(1 for c in chunks if c.table == layout.table)
        chunks_done, rows_done = done.get(layout.table, (0, 0))
        tables[layout.table] = TableProgress(layout.table, layout.pages, layout.rows_estimate,
                                             total + chunks_done, chunks_done, rows_done)
    return SnapshotProgress(kind=kind, version=version, tables=tables)
