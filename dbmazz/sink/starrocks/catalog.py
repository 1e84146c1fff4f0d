"""What the target database holds, and changing it: tables, columns, schema-change jobs.

Reads go to ``information_schema.COLUMNS`` (the query the Flink connector uses). Schema
changes are asynchronous in StarRocks: ``ALTER TABLE`` returns at once and a job runs, so
:meth:`Catalog.alter` waits for that job (``SHOW ALTER TABLE COLUMN``) to finish before
returning, bounded by a deadline. Every name is backtick-quoted, every value quoted.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dbmazz.errors import SetupError
from dbmazz.retry import Cancelled, Waiter
from dbmazz.sink.starrocks.ddl import qualified
from dbmazz.sink.starrocks.mysql import (
    FeClient,
    FeConnectionError,
    FeError,
    quote_ident,
    quote_literal,
)

log = logging.getLogger("dbmazz.sink.starrocks")

_NOT_NORMAL = "is not normal"
_INT_DISPLAY = re.compile(r"^(tinyint|smallint|int|bigint)\(\d+\)( unsigned)?$")


def normalise_info_type(column_type: str) -> str:
    """information_schema COLUMN_TYPE → the type text :mod:`.ddl` produces."""
    text = column_type.strip().lower()
    match = _INT_DISPLAY.match(text)
    if match:
        name, unsigned = match.groups()
        if unsigned:
            return "LARGEINT"
        if text == "tinyint(1)":
            return "BOOLEAN"
        return name.upper()
    return text.upper()


@dataclass(frozen=True, slots=True)
class TargetColumn:
    name: str
    data_type: str
    column_type: str
    is_key: bool


@dataclass(frozen=True, slots=True)
class TargetTable:
    db: str
    name: str
    columns: tuple[TargetColumn, ...]

    def column(self, name: str) -> TargetColumn | None:
        lowered = name.lower()
        for c in self.columns:
            if c.name.lower() == lowered:
                return c
        return None

    def has(self, name: str) -> bool:
        return self.column(name) is not None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)


def _get(row: dict[str, Any], key: str) -> Any:
    """Column of a result row, whatever case the server used for its label."""
    if key in row:
        return row[key]
    lowered = key.lower()
    for k, v in row.items():
        if k.lower() == lowered:
            return v
    return None


class Catalog:
    def __init__(
        self,
        client: FeClient,
        db: str,
        *,
        waiter: Waiter | None = None,
        alter_timeout: float = 600.0,
        poll_min: float = 0.05,
        poll_max: float = 3.0,
    ) -> None:
        self.client = client
        self.db = db
        self.waiter = waiter or Waiter()
        self.alter_timeout = alter_timeout
        self.poll_min = poll_min
        self.poll_max = poll_max

    def _query(self, sql: str, doing: str) -> list[dict[str, Any]]:
        try:
            return self.client.query(sql)
        except FeConnectionError as exc:
            if exc.auth:
                raise SetupError(
                    f"StarRocks: {exc}", "check STARROCKS_USER and STARROCKS_PASSWORD"
                ) from None
            error = SetupError(
                f"StarRocks: {exc}",
                "check STARROCKS_URL (its host is used for MySQL), STARROCKS_MYSQL_PORT and "
                "that the FE is running",
            )
            error.retryable = True
            raise error from None
        except FeError as exc:
            raise SetupError(
                f"StarRocks refused to {doing}: {exc.message} (error {exc.code})"
            ) from None

    # -- reads ---------------------------------------------------------------------------

    def version(self) -> str:
        rows = self._query("SELECT current_version() AS v", "report its version")
        return str(next(iter(rows[0].values()))) if rows else "unknown"

    def database_exists(self) -> bool:
        rows = self._query("SHOW DATABASES", "list databases")
        return any(self.db in (str(v) for v in row.values()) for row in rows)

    def describe(self, table: str) -> TargetTable | None:
        """The table's columns in order, or None when it does not exist."""
        rows = self._query(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, ORDINAL_POSITION, COLUMN_KEY "
            "FROM information_schema.COLUMNS "
            f"WHERE TABLE_SCHEMA = {quote_literal(self.db)} "
            f"AND TABLE_NAME = {quote_literal(table)} "
            "ORDER BY ORDINAL_POSITION",
            f"describe {self.db}.{table}",
        )
        if not rows:
            return None
        columns = tuple(
            TargetColumn(
                name=str(_get(r, "COLUMN_NAME")),
                data_type=str(_get(r, "DATA_TYPE") or "").lower(),
                column_type=str(_get(r, "COLUMN_TYPE") or "").lower(),
                is_key=str(_get(r, "COLUMN_KEY") or "").upper() == "PRI",
            )
            for r in rows
        )
        return TargetTable(self.db, table, columns)

    # -- changes -------------------------------------------------------------------------

    def ensure_database(self) -> bool:
        """Create the database when missing; True when it was created."""
        if self.database_exists():
            return False
        self._query(
            f"CREATE DATABASE IF NOT EXISTS {quote_ident(self.db)}", f"create database {self.db}"
        )
        log.info("created StarRocks database %s", self.db)
        return True

    def execute(self, sql: str, doing: str) -> None:
        self._query(sql, doing)

    def truncate(self, table: str) -> None:
        self._query(f"TRUNCATE TABLE {qualified(self.db, table)}", f"truncate {self.db}.{table}")

    def keys_older_than(self, target: TargetTable, version_column: str,
                        version: int) -> list[dict[str, Any]]:
        """The keys of ``target``'s rows whose ``version_column`` is below ``version``."""
        keys = ", ".join(quote_ident(k) for k in target.key_names)
        return self._query(
            f"SELECT {keys} FROM {qualified(self.db, target.name)} "
            f"WHERE {quote_ident(version_column)} < {int(version)}",
            f"read rows of {self.db}.{target.name} older than its truncate")

    def _wait(self, seconds: float) -> None:
        try:
            self.waiter.wait(seconds)
        except Cancelled:
            raise SetupError("cancelled while waiting for a StarRocks schema change") from None

    def _latest_job(self, table: str) -> dict[str, Any] | None:
        rows = self._query(
            f"SHOW ALTER TABLE COLUMN FROM {quote_ident(self.db)} "
            f"WHERE TableName = {quote_literal(table)} ORDER BY JobId DESC LIMIT 1",
            f"show schema-change jobs of {self.db}.{table}",
        )
        return rows[0] if rows else None

    def alter(self, table: str, sql: str, done: Callable[[TargetTable], bool]) -> None:
        """Run an ALTER TABLE and wait for its schema-change job.

        ``done`` recognises the finished schema from information_schema; it covers servers
        whose fast schema evolution finishes without a visible job.
        """
        waited = 0.0
        delay = self.poll_min
        before = self._latest_job(table)
        before_id = int(_get(before, "JobId") or 0) if before else 0
        while True:
            try:
                self.client.execute(sql)
                break
            except FeError as exc:
                # Another schema change on this table is running: wait for it, then retry.
                if _NOT_NORMAL not in exc.message.lower() or waited >= self.alter_timeout:
                    raise SetupError(
                        f"StarRocks refused to alter {self.db}.{table}: {exc.message}",
                        f"statement: {sql}",
                    ) from None
            except FeConnectionError as exc:
                raise SetupError(f"StarRocks: {exc}") from None
            self._wait(delay)
            waited += delay
            delay = min(self.poll_max, delay * 2)
        delay = self.poll_min
        while True:
            job = self._latest_job(table)
            job_id = int(_get(job, "JobId") or 0) if job else 0
            if job is not None and job_id > before_id:
                state = str(_get(job, "State") or "").upper()
                if state == "FINISHED":
                    return
                if state == "CANCELLED":
                    raise SetupError(
                        f"schema change of {self.db}.{table} was cancelled by StarRocks: "
                        f"{_get(job, 'Msg') or 'no reason given'}",
                        f"statement: {sql}; fix the cause and restart dbmazz to retry it",
                    )
            else:
                current = self.describe(table)
                if current is not None and done(current):
                    return
            if waited >= self.alter_timeout:
                raise SetupError(
                    f"schema change of {self.db}.{table} still running after "
                    f"{self.alter_timeout:.0f}s",
                    "check SHOW ALTER TABLE COLUMN on StarRocks; dbmazz retries on restart",
                )
            self._wait(delay)
            waited += delay
            delay = min(self.poll_max, delay * 2)
