"""Compare a source table with its replicated target, value by value.

Used by the end-to-end tests and by ``make demo``'s final check. Values are normalised to
a common Python form (UTC-naive datetimes, parsed JSON, bytes, text for network and
interval types) so that PostgreSQL's and the target's drivers can be compared exactly.
Soft-deleted target rows are ignored, as are the audit columns.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

# Types compared through their PostgreSQL text form (drivers disagree on their objects).
_AS_TEXT = {"interval", "time", "timetz", "money", "uuid", "inet", "cidr", "macaddr", "xml",
            "tsvector", "point", "int4range", "tstzrange", "bit", "varbit"}
_JSON = {"json", "jsonb"}


@dataclass
class Difference:
    table: str
    missing_in_target: list[Any] = field(default_factory=list)
    unexpected_in_target: list[Any] = field(default_factory=list)
    different: list[tuple[Any, dict[str, tuple[Any, Any]]]] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return not (self.missing_in_target or self.unexpected_in_target or self.different)

    def __str__(self) -> str:
        if self.equal:
            return f"{self.table}: equal"
        return (
            f"{self.table}: {len(self.missing_in_target)} missing in target "
            f"(e.g. {self.missing_in_target[:3]}), {len(self.unexpected_in_target)} unexpected "
            f"(e.g. {self.unexpected_in_target[:3]}), {len(self.different)} different "
            f"(e.g. {self.different[:2]})"
        )


def normalize(value: Any, pg_type: str = "") -> Any:
    if value is None:
        return None
    if pg_type in _JSON:
        parsed = json.loads(value) if isinstance(value, str | bytes) else value
        return json.dumps(parsed, sort_keys=True)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else value
    if isinstance(value, Decimal):
        return "NaN" if value.is_nan() else value.normalize()
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, list | tuple):
        element = pg_type[1:] if pg_type.startswith("_") else ""
        return tuple(normalize(v, element) for v in value)
    return value


def source_columns(conn: psycopg.Connection, namespace: str, table: str) -> list[tuple[str, str]]:
    """(column, type name) in table order; a domain's is its base type's (two levels)."""
    rows = conn.execute(
        """
        SELECT a.attname, COALESCE(b2.typname, b1.typname, t.typname) FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_type b1 ON t.typtype = 'd' AND b1.oid = t.typbasetype
        LEFT JOIN pg_type b2 ON b1.typtype = 'd' AND b2.oid = b1.typbasetype
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (namespace, table),
    ).fetchall()
    return [(str(name), str(typ)) for name, typ in rows]


def fetch_source(
    conn: psycopg.Connection, namespace: str, table: str, keys: Sequence[str]
) -> tuple[list[str], dict[tuple[Any, ...], tuple[Any, ...]]]:
    columns = source_columns(conn, namespace, table)
    # JSON as its text too: psycopg would hand over the parsed value, which normalize()
    # would parse a second time (the JSON string "123" would become the number 123).
    select = [
        sql.SQL("{}::text").format(sql.Identifier(name))
        if typ.lstrip("_") in _AS_TEXT or typ in _JSON
        else sql.Identifier(name)
        for name, typ in columns
    ]
    query = sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(select), sql.Identifier(namespace, table)
    )
    names = [n for n, _ in columns]
    types = [t for _, t in columns]
    key_index = [names.index(k) for k in keys]
    rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in conn.execute(query).fetchall():
        values = tuple(normalize(v, t) for v, t in zip(row, types, strict=True))
        rows[tuple(values[i] for i in key_index)] = values
    return names, rows


def compare(
    conn: psycopg.Connection,
    namespace: str,
    table: str,
    keys: Sequence[str],
    fetch_target: Callable[[list[str]], list[tuple[Any, ...]]],
) -> Difference:
    """Compare ``namespace.table`` with target rows returned by ``fetch_target(columns)``
    (the target's live rows, same columns in the same order)."""
    names, source = fetch_source(conn, namespace, table, keys)
    types = dict(source_columns(conn, namespace, table))
    key_index = [names.index(k) for k in keys]
    target: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in fetch_target(names):
        values = tuple(
            normalize(_text_if(types[n], v), types[n]) for n, v in zip(names, row, strict=True)
        )
        target[tuple(values[i] for i in key_index)] = values
    diff = Difference(f"{namespace}.{table}")
    for key, values in source.items():
        other = target.get(key)
        if other is None:
            diff.missing_in_target.append(key)
        elif other != values:
            diff.different.append(
                (key, {n: (a, b) for n, a, b in zip(names, values, other, strict=True) if a != b})
            )
    diff.unexpected_in_target = [k for k in target if k not in source]
    return diff


def _text_if(pg_type: str, value: Any) -> Any:
    if value is None or pg_type.lstrip("_") not in _AS_TEXT:
        return value
    return value if isinstance(value, str) else str(value)


def duckdb_fetcher(
    query: Callable[[str], list[tuple[Any, ...]]], namespace: str, table: str
) -> Callable[[list[str]], list[tuple[Any, ...]]]:
    """Live rows of a DuckDB target table (``query`` runs SQL, e.g. DuckDBSink.query)."""

    def fetch(columns: list[str]) -> list[tuple[Any, ...]]:
        cols = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
        target = '"' + namespace.replace('"', '""') + '"."' + table.replace('"', '""') + '"'
        return query(
            f"SELECT {cols} FROM {target} WHERE dbmazz_is_deleted IS NOT TRUE"
        )

    return fetch
