"""Heartbeats: a transactional logical message written into the source's WAL.

When the published tables are quiet, nothing reaches dbmazz and nothing is confirmed, so
a slot on a busy server would hold WAL back. A heartbeat transaction carries only a
logical message (``pg_logical_emit_message(true, 'dbmazz_heartbeat', '')``); the stream
is opened with ``messages 'true'``, so it arrives as a commit of its own, which the engine
confirms like any other: the slot's ``confirmed_flush_lsn`` moves on.
"""

from __future__ import annotations

import contextlib
import threading

import psycopg

from dbmazz.errors import SourceConnectionError
from dbmazz.retry import first_line
from dbmazz.source.database import SourceDatabase

PREFIX = "dbmazz_heartbeat"


class Heartbeat:
    """Callable that writes one heartbeat; keeps one ordinary connection (purpose
    ``heartbeat``), reopened after a failure. Raises a :class:`~dbmazz.errors.SourceError`
    (never with the DSN in it): :class:`SourceConnectionError` when the write fails, or
    what :class:`SourceDatabase` classified a failure to connect as."""

    def __init__(self, source: SourceDatabase) -> None:
        self._source = source
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    # Bounded: the engine's heartbeat thread must not hang on a dead host.
                    self._conn = self._source.connect("heartbeat", connect_timeout=10)
                self._conn.execute("SELECT pg_logical_emit_message(true, %s, '')", (PREFIX,))
            except psycopg.Error as exc:
                self._close()
                raise SourceConnectionError(
                    f"cannot write a heartbeat to {self._source.target}: {first_line(exc)}",
                    "the stream reconnects on its own; set HEARTBEAT_INTERVAL_S=0 to turn "
                    "heartbeats off",
                ) from None

    def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._close()
