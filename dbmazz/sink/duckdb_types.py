"""Does an existing DuckDB table take what dbmazz sends? (tables created by hand; see
:mod:`dbmazz.sink.starrocks.typecheck` for the StarRocks twin and the severities)."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from dbmazz.pipeline.batch import TableSchema
from dbmazz.sink.duckdb import duckdb_type
from dbmazz.sink.starrocks.typecheck import Severity, TypeMismatch, compare

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
    s, a = sent.strip().upper(), actual.strip().upper()
    if s == a or (s == "TIMESTAMPTZ" and a == "TIMESTAMP WITH TIME ZONE"):
        return None
    if s == "TIMESTAMPTZ" and a == "TIMESTAMP":
        return ("lossy", "the time zone is dropped (instants load as UTC wall-clock times)")
    if a.endswith("[]") or s.endswith("[]") or a in ("BLOB", "INTERVAL", "TIME", "JSON",
                                                   "BOOLEAN", "DATE", "UUID"):
        return ("incompatible", f"{sent} values cannot load into {actual}")
    return compare(_compared(s), _compared(a))


def duckdb_mismatches(con: duckdb.DuckDBPyConnection,
                      tables: Sequence[TableSchema]) -> list[TypeMismatch]:
    out = []
    for table in tables:
        actual = dict(con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = ? AND table_name = ?",
            [table.namespace, table.target_name]).fetchall())
        for spec in table.columns:
            have = actual.get(spec.name)
            if have is None:
                continue
            sent = duckdb_type(spec.arrow_type)
            verdict = _verdict(sent, str(have))
            if verdict is not None and verdict[0] != "warning":
                out.append(TypeMismatch(f"{table.namespace}.{table.target_name}", spec.name,
                                        sent, str(have), *verdict))
    return out
