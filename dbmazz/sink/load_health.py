"""Which tables' loads are failing right now, since when, and how often.

The retry loops (CDC applier, snapshot loader, the sink's own) decide when to try again;
this only observes outcomes at the one place every load passes (the live engine's
:class:`~dbmazz.snapshot.sink.SnapshotAwareSink`), so Status, Prometheus, ``dbmazz
top`` and health see a pipeline that cannot load while it retries, not only once it gives
up.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadFailure:
    """A table whose latest load attempt failed."""

    table: str
    message: str
    #: Unix time of the first failure since the table's last successful load.
    since: float
    #: Failed attempts since the last successful load.
    attempts: int

    def failing_for(self, now: float | None = None) -> float:
        return max(0.0, (now or time.time()) - self.since)

    @property
    def text(self) -> str:
        return (f"loads of {self.table} failing for {self.failing_for():.0f}s "
                f"({self.attempts} failed attempt{'s' if self.attempts != 1 else ''}), "
                f"retrying: {self.message}")


class LoadHealth:
    """Thread-safe record of load outcomes per table (target table loads only)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing: dict[str, LoadFailure] = {}
        self._failed_attempts: dict[str, int] = {}
        self._snapshot_rows: dict[str, int] = {}
        self._rejected_rows: dict[str, int] = {}

    def failed(self, table: str, message: str) -> None:
        with self._lock:
            self._failed_attempts[table] = self._failed_attempts.get(table, 0) + 1
            current = self._failing.get(table)
            self._failing[table] = LoadFailure(
                table, message, current.since if current else time.time(),
                (current.attempts if current else 0) + 1)

    def succeeded(self, table: str) -> None:
        if table in self._failing:  # racy read is fine: the pop below is locked
            with self._lock:
                self._failing.pop(table, None)

    def snapshot_loaded(self, table: str, rows: int) -> None:
        """Rows a snapshot chunk wrote (CDC rows are counted by the applier)."""
        with self._lock:
            self._snapshot_rows[table] = self._snapshot_rows.get(table, 0) + rows

    def snapshot_tables(self) -> list[str]:
        """Tables a snapshot loaded rows into (an on-demand one may precede any CDC)."""
        with self._lock:
            return list(self._snapshot_rows)

    def snapshot_rows(self, table: str) -> int:
        with self._lock:
            return self._snapshot_rows.get(table, 0)

    def rejected(self, table: str, rows: int) -> None:
        """Rows of a load the target rejected and the sink recorded (REJECTED_ROWS=table)."""
        with self._lock:
            self._rejected_rows[table] = self._rejected_rows.get(table, 0) + rows

    def rejected_rows(self, table: str) -> int:
        with self._lock:
            return self._rejected_rows.get(table, 0)

    def failed_attempts(self, table: str) -> int:
        """Failed load attempts of ``table`` since the engine started (CDC and snapshot)."""
        with self._lock:
            return self._failed_attempts.get(table, 0)

    def current(self) -> LoadFailure | None:
        """The longest-failing table, or None while every load succeeds."""
        with self._lock:
            failing = list(self._failing.values())
        return min(failing, key=lambda f: f.since) if failing else None

    def failing_for(self) -> float:
        """Seconds the longest-failing table has been failing (0 when none is)."""
        current = self.current()
        return current.failing_for() if current else 0.0
