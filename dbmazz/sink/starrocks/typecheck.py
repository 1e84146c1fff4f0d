"""Does an existing StarRocks table take what dbmazz sends? Every column's type is compared
with the type dbmazz would create for it (docs/types.md), so a table made by hand
(``SETUP=skip``) fails before the first load, with every mismatch named at once, instead of
at run time one load at a time.

A mismatch is *rejecting* (strict mode refuses some values: a load fails), *lossy* (values
load but change: rounded decimals, dropped time of day, float precision) or *incompatible*
(the column cannot hold the values at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dbmazz.pipeline.batch import TableSchema
from dbmazz.sink.starrocks.catalog import TargetTable, normalise_info_type
from dbmazz.sink.starrocks.ddl import (
    VARCHAR_MAX,
    TypeOptions,
    UnsupportedType,
    column_definitions,
    is_safe_widening,
    parse_type,
)

Severity = Literal["rejecting", "rejecting and lossy", "lossy", "incompatible", "warning"]

_INT_RANK = {"TINYINT": 1, "SMALLINT": 2, "INT": 3, "BIGINT": 4, "LARGEINT": 5}
_INT_DIGITS = {"TINYINT": 3, "SMALLINT": 5, "INT": 10, "BIGINT": 19, "LARGEINT": 39}
_TEXTUAL = ("VARCHAR", "CHAR", "STRING")


@dataclass(frozen=True)
class TypeMismatch:
    table: str  # target db.table
    column: str
    sent: str  # the type dbmazz would create (what it sends)
    actual: str
    severity: Severity
    why: str

    @property
    def text(self) -> str:
        return (f"{self.table}.{self.column}: {self.actual} cannot take {self.sent} "
                f"({self.severity}: {self.why})")


def _length(name: str, args: tuple[int, ...]) -> int:
    if name == "STRING" or not args:
        return 65533
    return args[0]


def compare(sent: str, actual: str) -> tuple[Severity, str] | None:
    """None when ``actual`` holds every value of ``sent`` unchanged, else why not."""
    if is_safe_widening(sent, actual):
        return None
    (sn, sa), (an, aa) = parse_type(sent), parse_type(actual)
    if an in _TEXTUAL:
        length = _length(an, aa)
        if sn in _TEXTUAL or sn == "JSON":
            if sn == "VARCHAR" and sa == (VARCHAR_MAX,) and length >= 65533:
                return ("warning", f"values longer than {length} bytes would be rejected")
            if sn != "JSON" and _length(sn, sa) <= length:
                return None
            return ("rejecting", f"values longer than {length} bytes are rejected")
        return None if length >= 64 else ("rejecting", f"values longer than {length} "
                                          "bytes are rejected")
    if sn in _INT_RANK:
        if an in _INT_RANK:
            return ("rejecting", "values out of its range are rejected")
        if an == "DECIMAL" and len(aa) == 2:
            return None if aa[0] - aa[1] >= _INT_DIGITS[sn] else (
                "rejecting", "values with more integer digits are rejected")
        if an == "DOUBLE":
            return None if _INT_RANK[sn] <= 3 else ("lossy", "integers above 2^53 are rounded")
        if an == "FLOAT":
            return ("lossy", "integers above 2^24 are rounded")
        return ("incompatible", "numbers cannot load into it")
    if sn == "DECIMAL" and len(sa) == 2:
        if an == "DECIMAL" and len(aa) == 2:
            if aa[0] - aa[1] < sa[0] - sa[1]:
                digits = f"values with more than {aa[0] - aa[1]} integer digits are rejected"
                if aa[1] < sa[1]:
                    return ("rejecting and lossy", f"{digits}; decimals beyond {aa[1]} are "
                            "rounded")
                return ("rejecting", digits)
            return None if aa[1] >= sa[1] else ("lossy", f"decimals beyond {aa[1]} are rounded")
        if an in ("DOUBLE", "FLOAT"):
            return ("lossy", "decimal values become binary floating point")
        return ("incompatible", "decimal values cannot load into it")
    if sn == "DOUBLE" and an == "FLOAT":
        return ("lossy", "double precision is rounded to single")
    if sn == "DATETIME" and an == "DATE":
        return ("lossy", "the time of day is dropped")
    if sn == "JSON" and an == "JSON":
        return None
    if sent.startswith("ARRAY<VARCHAR") and actual.startswith("ARRAY<VARBINARY"):
        return ("lossy", "items are stored as the bytes of their text (bytea[] items: of "
                "their hex text, as a load cannot decode array items)")
    return ("incompatible", f"{sent} values cannot load into {actual}")


def type_mismatches(schema: TableSchema, target: TargetTable,
                    opts: TypeOptions | None = None) -> list[TypeMismatch]:
    """Every source column whose target column cannot take what dbmazz sends."""
    try:
        wanted = column_definitions(schema, opts)
    except UnsupportedType:
        return []  # reported by setup itself
    out = []
    source_columns = {c.name.lower() for c in schema.columns}
    for name, sent, _key in wanted:
        column = target.column(name)
        if column is None or name.lower() not in source_columns:
            continue  # missing columns and audit columns are setup's to report
        actual = normalise_info_type(column.column_type)
        verdict = compare(sent, actual)
        if verdict is not None:
            out.append(TypeMismatch(f"{target.db}.{target.name}", column.name, sent, actual,
                                    *verdict))
    return out


def describe_mismatches(mismatches: list[TypeMismatch]) -> str:
    """One line per mismatch, for an error message."""
    return "; ".join(m.text for m in mismatches)
