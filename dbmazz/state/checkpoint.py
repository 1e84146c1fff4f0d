"""Checkpoints: the last commit LSN whose changes the sink has durably applied.

Stored in the source database, table ``dbmazz_checkpoints (slot_name, lsn, updated_at)``,
so it lives and dies with the slot it describes. A checkpoint only moves forward; the
engine writes it after the sink acknowledged, then confirms the same LSN to PostgreSQL —
never before: a write that fails is retried, and the confirmation waits for it.
"""

from __future__ import annotations

import threading
from typing import Protocol

import psycopg
from psycopg import sql

from dbmazz.errors import SourceConnectionError
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.retry import first_line, is_transient
from dbmazz.source.database import SourceDatabase

TABLE = "dbmazz_checkpoints"
#: Set on a checkpoint row whose slot was found moved behind dbmazz's back (the reason).
#: Added to the table only then: ordinary runs never take the lock an ALTER TABLE needs.
LOST_COLUMN = "slot_lost"


def _create_table(conn: psycopg.Connection, table: sql.Identifier) -> None:
    conn.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (slot_name text PRIMARY KEY, lsn pg_lsn NOT "
            "NULL, updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(table)
    )


class CheckpointStore(Protocol):
    def load(self) -> int | None:
        """The stored LSN, or None when this slot has none yet."""

    def save(self, lsn: int) -> None:
        """Record ``lsn`` (never lowers the stored value)."""

    def close(self) -> None: ...


class MemoryCheckpointStore:
    """For replays and tests: nothing outlives the process."""

    def __init__(self) -> None:
        self.lsn: int | None = None
        self.history: list[int] = []

    def load(self) -> int | None:
        return self.lsn

    def save(self, lsn: int) -> None:
        if self.lsn is None or lsn > self.lsn:
            self.lsn = lsn
            self.history.append(lsn)

    def close(self) -> None:
        pass


class PostgresCheckpointStore:
    """The checkpoint row of ``slot`` in the source (on a standby: the primary) database.

    Keeps one connection (purpose ``checkpoint``), opened at first use and again after a
    write lost it. A failure to connect is classified by :class:`SourceDatabase`: the
    server unreachable or restarting is a :class:`SourceConnectionError` the engine retries
    (holding the confirmation); wrong credentials, pg_hba or a dropped database are not
    retryable, as they are for the stream's own reconnect."""

    def __init__(self, source: SourceDatabase, slot: str, schema: str = "public") -> None:
        self.slot = slot
        self._table = sql.Identifier(schema, TABLE)
        self._source = source
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._last: int | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._source.connect("checkpoint")
            _create_table(self._conn, self._table)
        return self._conn

    def load(self) -> int | None:
        with self._lock:
            row = self._connection().execute(
                sql.SQL("SELECT lsn::text FROM {} WHERE slot_name = %s").format(self._table),
                (self.slot,),
            ).fetchone()
            self._last = parse_lsn(row[0]) if row else None
            return self._last

    def save(self, lsn: int) -> None:
        with self._lock:
            if self._last is not None and lsn <= self._last:
                return
            try:
                try:
                    self._write(lsn)
                except psycopg.errors.UndefinedTable:
                    # Dropped by hand while dbmazz runs: the slot is still this pipeline's
                    # and ``lsn`` is durable, so the table is made again and written.
                    _create_table(self._connection(), self._table)
                    self._write(lsn)
            except psycopg.Error as exc:
                if not is_transient(exc):
                    raise
                # Lost, or the server is shutting down: the next attempt opens a new one.
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise SourceConnectionError(
                    f"could not write the checkpoint: {first_line(exc)}",
                    "dbmazz reconnects and retries; the confirmation waits for the checkpoint",
                ) from None
            self._last = lsn

    def _write(self, lsn: int) -> None:
        self._connection().execute(
            sql.SQL(
                "INSERT INTO {t} (slot_name, lsn, updated_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, "
                "updated_at = now() WHERE {t}.lsn < EXCLUDED.lsn"
            ).format(t=self._table),
            (self.slot, format_lsn(lsn)),
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def forget_checkpoint(source: SourceDatabase, slot: str, schema: str = "public") -> bool:
    """Delete ``slot``'s checkpoint (the slot was dropped on request): without it, a later
    run creates a new slot instead of reporting the old one as lost. True if one existed."""
    table = sql.Identifier(schema, TABLE)
    with source.connect("checkpoint") as conn:
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL",
                              (f"{schema}.{TABLE}",)).fetchone()
        if not exists or not exists[0]:
            return False
        cur = conn.execute(sql.SQL("DELETE FROM {} WHERE slot_name = %s").format(table), (slot,))
        return cur.rowcount > 0


def mark_slot_lost(source: SourceDatabase, slot: str, reason: str,
                   schema: str = "public") -> None:
    """Record on ``slot``'s checkpoint row that the slot cannot be trusted (``reason``): a
    restart (a service manager restarting dbmazz after the fatal error) must refuse it too,
    and nothing else tells it apart from a slot the idle rule moved past the checkpoint.
    :func:`forget_checkpoint` (``dbmazz slots drop``) clears it with the row."""
    table = sql.Identifier(schema, TABLE)
    with source.connect("checkpoint") as conn:
        _create_table(conn, table)
        conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} text").format(
            table, sql.Identifier(LOST_COLUMN)))
        # No row yet (nothing was checkpointed): 0/0 is "from the start", as no row is.
        conn.execute(
            sql.SQL("INSERT INTO {t} (slot_name, lsn, {c}) VALUES (%s, '0/0', %s) "
                    "ON CONFLICT (slot_name) DO UPDATE SET {c} = EXCLUDED.{c}").format(
                t=table, c=sql.Identifier(LOST_COLUMN)),
            (slot, reason),
        )


def slot_lost_reason(conn: psycopg.Connection, slot: str, schema: str = "public") -> str | None:
    """What :func:`mark_slot_lost` recorded for ``slot``, or None (no mark, no column)."""
    row = conn.execute(
        "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
        "AND NOT attisdropped", (f"{schema}.{TABLE}", LOST_COLUMN)).fetchone()
    if row is None:
        return None
    found = conn.execute(
        sql.SQL("SELECT {} FROM {} WHERE slot_name = %s").format(
            sql.Identifier(LOST_COLUMN), sql.Identifier(schema, TABLE)),
        (slot,),
    ).fetchone()
    return str(found[0]) if found is not None and found[0] is not None else None
