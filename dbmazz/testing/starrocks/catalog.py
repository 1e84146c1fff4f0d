"""Databases, tables, columns and asynchronous schema-change jobs.

Database and table names are case-sensitive, column names are not (as in StarRocks).
All mutation happens under ``Catalog.lock``, which loads also take while applying rows.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from dbmazz.testing.starrocks.clock import Clock
from dbmazz.testing.starrocks.coltypes import (
    ConversionError,
    SRType,
    convert_text,
    render,
    zero_value,
)
from dbmazz.testing.starrocks.errors import (
    ER_BAD_DB_ERROR,
    ER_BAD_TABLE_ERROR,
    ER_DB_CREATE_EXISTS,
    ER_DB_DROP_EXISTS,
    ER_TABLE_EXISTS_ERROR,
    SRError,
)
from dbmazz.testing.starrocks.store import TableData

KeysType = Literal["PRIMARY_KEYS", "DUP_KEYS"]


class Ids:
    """Monotonic ids, one sequence per kind, like the FE's id generator."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters = {
            "db": itertools.count(10001),
            "table": itertools.count(20001),
            "txn": itertools.count(1001),
            "job": itertools.count(30001),
        }

    def next(self, kind: str) -> int:
        with self._lock:
            return next(self._counters[kind])


@dataclass
class Default:
    value: Any = None
    current_timestamp: bool = False
    # As written in the DDL, for information_schema.COLUMN_DEFAULT and SHOW CREATE TABLE.
    text: str | None = None


@dataclass
class Column:
    name: str
    type: SRType
    nullable: bool = True
    default: Default | None = None
    is_key: bool = False
    comment: str = ""

    @property
    def lname(self) -> str:
        return self.name.lower()

    def fill_value(self, now: float) -> Any:
        """Value for a row that does not supply this column."""
        if self.default is not None:
            if self.default.current_timestamp:
                return datetime.fromtimestamp(now).replace(microsecond=0)
            return self.default.value
        if self.nullable:
            return None
        return zero_value(self.type)

    def sql(self) -> str:
        parts = [f"`{self.name}` {self.type.sql()}", "NULL" if self.nullable else "NOT NULL"]
        if self.default is not None:
            if self.default.current_timestamp:
                parts.append("DEFAULT CURRENT_TIMESTAMP")
            elif self.default.value is None:
                parts.append("DEFAULT NULL")
            else:
                parts.append(f'DEFAULT "{render(self.default.value)}"')
        if self.comment:
            parts.append(f'COMMENT "{self.comment}"')
        return " ".join(parts)


@dataclass
class Table:
    id: int
    db_name: str
    name: str
    columns: list[Column]
    keys_type: KeysType
    key_names: list[str]
    distribution: list[str] = field(default_factory=list)
    buckets: int | None = None
    properties: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    create_time: float = 0.0
    update_time: float = 0.0
    data: TableData = field(init=False)
    # Each finished schema change bumps this, as StarRocks' schema version does.
    schema_version: int = 0

    def __post_init__(self) -> None:
        self.data = TableData(
            primary=self.keys_type == "PRIMARY_KEYS",
            key_names=[k.lower() for k in self.key_names],
        )

    @property
    def primary(self) -> bool:
        return self.keys_type == "PRIMARY_KEYS"

    def column(self, name: str) -> Column | None:
        lowered = name.lower()
        for c in self.columns:
            if c.lname == lowered:
                return c
        return None

    @property
    def key_columns(self) -> list[Column]:
        return [c for c in self.columns if c.is_key]

    def complete_row(self, values: dict[str, Any], now: float) -> dict[str, Any]:
        return {
            c.lname: values[c.lname] if c.lname in values else c.fill_value(now)
            for c in self.columns
        }

    def rows(self) -> list[dict[str, Any]]:
        """Stored rows with the table's column names, in key order."""
        out = []
        for row in self.data.snapshot():
            out.append({c.name: row.get(c.lname) for c in self.columns})
        return out

    def create_sql(self) -> str:
        cols = ",\n  ".join(c.sql() for c in self.columns)
        keys = ", ".join(f"`{k}`" for k in self.key_names)
        kind = "PRIMARY KEY" if self.primary else "DUPLICATE KEY"
        sql = f"CREATE TABLE `{self.name}` (\n  {cols}\n) ENGINE=OLAP\n{kind}({keys})"
        if self.comment:
            sql += f'\nCOMMENT "{self.comment}"'
        if self.distribution:
            dist = ", ".join(f"`{c}`" for c in self.distribution)
            sql += f"\nDISTRIBUTED BY HASH({dist})"
            if self.buckets:
                sql += f" BUCKETS {self.buckets}"
        props = dict(self.properties)
        props.setdefault("replication_num", "1")
        body = ",\n".join(f'"{k}" = "{v}"' for k, v in props.items())
        return sql + f"\nPROPERTIES (\n{body}\n);"


@dataclass
class Database:
    id: int
    name: str
    tables: dict[str, Table] = field(default_factory=dict)


@dataclass
class AlterAction:
    kind: Literal["ADD", "DROP", "MODIFY"]
    name: str
    column: Column | None = None
    # ("FIRST", None) or ("AFTER", column name)
    position: tuple[str, str | None] | None = None


@dataclass
class AlterJob:
    job_id: int
    db_name: str
    table_name: str
    create_time: float
    delay: float
    transaction_id: int
    actions: list[AlterAction]
    state: str = "RUNNING"
    finish_time: float | None = None
    msg: str = ""
    cancel_msg: str | None = None
    timeout: int = 86400

    @property
    def done(self) -> bool:
        return self.state in ("FINISHED", "CANCELLED")


def fmt_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


class Catalog:
    def __init__(self, clock: Clock, ids: Ids, alter_delay: float = 0.0) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.ids = ids
        self.alter_delay = alter_delay
        self.databases: dict[str, Database] = {}
        self.jobs: list[AlterJob] = []
        # Consulted when a schema-change job is created: returns a cancel message or None.
        self.cancel_hook: Callable[[str, str], str | None] = lambda db, table: None

    # -- databases ------------------------------------------------------------------------

    def create_database(self, name: str, if_not_exists: bool = False) -> None:
        with self.lock:
            if name in self.databases:
                if if_not_exists:
                    return
                raise SRError(
                    f"Can't create database '{name}'; database exists", ER_DB_CREATE_EXISTS
                )
            self.databases[name] = Database(self.ids.next("db"), name)

    def drop_database(self, name: str, if_exists: bool = False) -> None:
        with self.lock:
            if name not in self.databases:
                if if_exists:
                    return
                raise SRError(
                    f"Can't drop database '{name}'; database doesn't exist", ER_DB_DROP_EXISTS
                )
            del self.databases[name]

    def database(self, name: str) -> Database:
        with self.lock:
            db = self.databases.get(name)
            if db is None:
                raise SRError(f"Unknown database '{name}'", ER_BAD_DB_ERROR)
            return db

    # -- tables ---------------------------------------------------------------------------

    def table(self, db_name: str, name: str) -> Table:
        with self.lock:
            self.advance()
            table = self.database(db_name).tables.get(name)
            if table is None:
                raise SRError(f"Unknown table '{db_name}.{name}'", ER_BAD_TABLE_ERROR)
            return table

    def find_table(self, db_name: str, name: str) -> Table | None:
        with self.lock:
            self.advance()
            db = self.databases.get(db_name)
            return None if db is None else db.tables.get(name)

    def create_table(self, table: Table, if_not_exists: bool = False) -> None:
        with self.lock:
            db = self.database(table.db_name)
            if table.name in db.tables:
                if if_not_exists:
                    return
                raise SRError(f"Table '{table.name}' already exists", ER_TABLE_EXISTS_ERROR)
            now = self.clock.time()
            table.create_time = table.update_time = now
            db.tables[table.name] = table

    def drop_table(self, db_name: str, name: str, if_exists: bool = False) -> None:
        with self.lock:
            db = self.database(db_name)
            if name not in db.tables:
                if if_exists:
                    return
                raise SRError(f"Unknown table '{name}'", ER_BAD_TABLE_ERROR)
            del db.tables[name]
            self.jobs = [
                j for j in self.jobs if not (j.db_name == db_name and j.table_name == name)
            ]

    # -- schema change --------------------------------------------------------------------

    def submit_alter(self, db_name: str, name: str, actions: list[AlterAction]) -> AlterJob:
        with self.lock:
            table = self.table(db_name, name)
            if any(not j.done for j in self.jobs if j.db_name == db_name and j.table_name == name):
                raise SRError(
                    f"Table[{name}]'s state is not NORMAL. Do not allow doing ALTER ops"
                )
            _validate_actions(table, actions)
            job = AlterJob(
                job_id=self.ids.next("job"),
                db_name=db_name,
                table_name=name,
                create_time=self.clock.time(),
                delay=self.alter_delay,
                transaction_id=self.ids.next("txn"),
                actions=actions,
                cancel_msg=self.cancel_hook(db_name, name),
            )
            self.jobs.append(job)
            self.advance()
            return job

    def advance(self) -> None:
        """Finish schema-change jobs whose time has come (lazily, on every access)."""
        with self.lock:
            now = self.clock.time()
            for job in self.jobs:
                if job.done or now < job.create_time + job.delay:
                    continue
                job.finish_time = now
                if job.cancel_msg is not None:
                    job.state, job.msg = "CANCELLED", job.cancel_msg
                    continue
                db = self.databases.get(job.db_name)
                table = db.tables.get(job.table_name) if db else None
                if table is None:
                    job.state, job.msg = "CANCELLED", "table does not exist"
                    continue
                for action in job.actions:
                    _apply_action(table, action, now)
                table.schema_version += 1
                table.update_time = now
                job.state = "FINISHED"

    def jobs_of(self, db_name: str) -> list[AlterJob]:
        with self.lock:
            self.advance()
            return [j for j in self.jobs if j.db_name == db_name]


def _validate_actions(table: Table, actions: list[AlterAction]) -> None:
    names = {c.lname for c in table.columns}
    for action in actions:
        lowered = action.name.lower()
        if action.kind == "ADD":
            if lowered in names:
                raise SRError(
                    f"Can not add column which already exists in base table: {action.name}"
                )
            if action.column is not None and action.column.is_key:
                raise SRError("Can not add key column to a primary key table")
            names.add(lowered)
        else:
            existing = table.column(action.name)
            if existing is None or lowered not in names:
                raise SRError(f"Column[{action.name}] does not exists")
            if existing.is_key:
                verb = "drop" if action.kind == "DROP" else "modify"
                raise SRError(f"Can not {verb} key column {action.name} of a primary key table")
            if action.kind == "DROP":
                names.discard(lowered)
        if action.position is not None and action.position[0] == "AFTER":
            after = action.position[1] or ""
            if after.lower() not in names:
                raise SRError(f"Column[{after}] does not exists")


def _apply_action(table: Table, action: AlterAction, now: float) -> None:
    if action.kind == "DROP":
        existing = table.column(action.name)
        if existing is not None:
            table.columns.remove(existing)
            table.data.drop_column(existing.lname)
        return
    column = action.column
    assert column is not None
    if action.kind == "MODIFY":
        existing = table.column(action.name)
        if existing is None:
            return
        index = table.columns.index(existing)
        column.is_key = existing.is_key
        table.columns[index] = column
        _reconvert(table, column)
    else:
        table.columns.append(column)
        table.data.add_column(column.lname, lambda: column.fill_value(now))
    if action.position is not None:
        table.columns.remove(column)
        if action.position[0] == "FIRST":
            table.columns.insert(0, column)
        else:
            after = table.column(action.position[1] or "")
            index = table.columns.index(after) + 1 if after is not None else len(table.columns)
            table.columns.insert(index, column)


def _reconvert(table: Table, column: Column) -> None:
    for row in table.data.rows.values():
        value = row.get(column.lname)
        if value is None:
            continue
        try:
            row[column.lname] = convert_text(render(value), column.type)
        except ConversionError:
            row[column.lname] = None
