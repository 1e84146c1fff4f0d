"""DuckDB column types: the one dbmazz creates for each in-flight Arrow type, and whether an
existing table (created by hand) takes what dbmazz sends (see
:mod:`dbmazz.sink.starrocks.typecheck` for the StarRocks twin and the severities; imported
lazily, so the DuckDB sink does not load the StarRocks one)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from dbmazz.pipeline.batch import TableSchema

if TYPE_CHECKING:
    from dbmazz.sink.starrocks.typecheck import Severity, TypeMismatch


def duckdb_type(arrow_type: pa.DataType) -> str:
    """DuckDB column type for an in-flight Arrow type (DESIGN.md §5)."""
    t = arrow_type
    simple = {
        pa.bool_(): "BOOLEAN",
        pa.int8(): "TINYINT",
        pa.int16(): "SMALLINT",
        pa.int32(): "INTEGER",
        pa.int64(): "BIGINT",
        pa.uint32(): "UINTEGER",
        pa.uint64(): "UBIGINT",
        pa.float32(): "REAL",
        pa.float64(): "DOUBLE",
        pa.date32(): "DATE",
    }
    if t in simple:
        return simple[t]
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision},{t.scale})"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "VARCHAR"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return "BLOB"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_duration(t):
        return "INTERVAL"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{duckdb_type(t.value_type)}[]"
    return "VARCHAR"


#: DuckDB type names in the vocabulary :func:`compare` speaks.
_AS_COMPARED = {"INTEGER": "INT", "HUGEINT": "LARGEINT", "REAL": "FLOAT", "FLOAT4": "FLOAT",
                "FLOAT8": "DOUBLE", "INT4": "INT", "INT8": "BIGINT", "INT2": "SMALLINT",
                "VARCHAR": "VARCHAR(1048576)", "TEXT": "VARCHAR(1048576)",
                "TIMESTAMP": "DATETIME", "TIMESTAMP WITH TIME ZONE": "DATETIME",
                "TIMESTAMPTZ": "DATETIME", "UINTEGER": "BIGINT", "UBIGINT": "LARGEINT"}


def _compared(type_name: str) -> str:
    name = type_name.strip().upper()
    return _AS_COMPARED.get(name, name)


def _verdict(sent: str, actual: str) -> tuple[Severity, str] | None:
    from dbmazz.sink.starrocks.typecheck import compare

    s, a = sent.strip().upper(), actual.strip().upper()
    if s == a or (s == "TIMESTAMPTZ" and a == "TIMESTAMP WITH TIME ZONE"):
        return None
    if s == "TIMESTAMPTZ" and a == "TIMESTAMP":
        return ("lossy", "the time zone is dropped (instants load as UTC wall-clock times)")
    if a.endswith("[]") or s.endswith("[]") or a in ("BLOB", "INTERVAL", "TIME", "JSON",
                                                   "BOOLEAN", "DATE", "UUID"):
        return ("incompatible", f"{sent} values cannot load into {actual}")
    return compare(_compared(s), _compared(a))


def holds(sent: str, actual: str) -> bool:
    """Whether a column of DuckDB type ``actual`` keeps every value of type ``sent`` as it
    is, meaning the same (a TIMESTAMP and a TIMESTAMPTZ do not: DuckDB casts between them
    in its session time zone)."""
    zoned = {"TIMESTAMPTZ", "TIMESTAMP WITH TIME ZONE"}
    s, a = sent.strip().upper(), actual.strip().upper()
    if s.startswith("TIMESTAMP") and a.startswith("TIMESTAMP") and (s in zoned) != (a in zoned):
        return False
    verdict = _verdict(sent, actual)
    return verdict is None or verdict[0] == "warning"


def column_types(con: duckdb.DuckDBPyConnection, table: TableSchema) -> dict[str, str]:
    """The target table's column types by lower-case name, as DuckDB compares column names
    (empty when the table does not exist)."""
    return {str(name).lower(): str(kind) for name, kind in con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE lower(table_schema) = lower(?) AND lower(table_name) = lower(?)",
        [table.namespace, table.target_name]).fetchall()}


def duckdb_mismatches(con: duckdb.DuckDBPyConnection,
                      tables: Sequence[TableSchema]) -> list[TypeMismatch]:
    from dbmazz.sink.starrocks.typecheck import TypeMismatch

    out = []
    for table in tables:
        actual = column_types(con, table)
        for spec in table.columns:
            have = actual.get(spec.name.lower())
            if have is None:
                continue
            sent = duckdb_type(spec.arrow_type)
            verdict = _verdict(sent, str(have))
            if verdict is not None and verdict[0] != "warning":
                out.append(TypeMismatch(f"{table.namespace}.{table.target_name}", spec.name,
                                        sent, str(have), *verdict))
    return out
