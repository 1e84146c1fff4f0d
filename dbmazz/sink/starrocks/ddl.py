"""Type mapping (DESIGN.md §5, protocol reference §5–§6) and DDL text for StarRocks.

Choices worth knowing:

* Key columns come first, NOT NULL, in key order; StarRocks refuses FLOAT/DOUBLE/DECIMAL,
  JSON, VARBINARY and ARRAY keys, so those key columns become VARCHAR holding the value's
  text (decimal text, hex for bytea) — as Flink CDC does for DECIMAL keys.
* ``numeric`` without precision arrives as exact text; it becomes DECIMAL(38,9) by default
  (38 digits, 9 of them fractional: wider than DECIMAL(38,0), which loses every fraction)
  or STRING when exactness beyond that matters (``unconstrained_numeric="string"``).
  ``numeric(p,s)`` with p > 38 cannot fit a StarRocks DECIMAL and always becomes STRING.
* ``varchar(n)``/``char(n)`` become VARCHAR(4n) (StarRocks counts bytes, UTF-8 uses ≤ 4);
  other text is VARCHAR(1048576), StarRocks' largest string (STRING holds only 65,533 bytes,
  and a longer TOASTed text would not fit); VARCHAR(65533) as a key (keys are short anyway).
* json/jsonb → JSON; bytea → VARBINARY; interval → BIGINT microseconds; time → VARCHAR(32);
  timestamp and timestamptz → DATETIME (timestamptz stored as UTC); arrays → ARRAY<T>,
  except bytea[] → ARRAY<VARCHAR> of lowercase hex (a load cannot decode array items).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from dbmazz.contract import AUDIT_COLUMNS
from dbmazz.pipeline.batch import ColumnSpec, TableSchema
from dbmazz.sink.starrocks.mysql import quote_ident

VARCHAR_MAX = 1_048_576
STRING_KEY = "VARCHAR(65533)"
#: Unbounded text: StarRocks' largest VARCHAR (STRING is only VARCHAR(65533)).
TEXT = f"VARCHAR({VARCHAR_MAX})"
JSON_TYPES = frozenset({"json", "jsonb"})
AUDIT_SQL: Mapping[str, str] = {
    "dbmazz_op_type": "TINYINT",
    "dbmazz_is_deleted": "BOOLEAN",
    "dbmazz_synced_at": "DATETIME",
    "dbmazz_cdc_version": "BIGINT",
}
assert set(AUDIT_SQL) == {name for name, _ in AUDIT_COLUMNS}

NumericMode = Literal["decimal", "string"]


class UnsupportedType(ValueError):
    """A source column StarRocks cannot hold the way it is used (e.g. an array key)."""


@dataclass(frozen=True, slots=True)
class TypeOptions:
    unconstrained_numeric: NumericMode = "decimal"


def _pg_name(spec: ColumnSpec) -> str:
    return spec.pg_type_name.lower().strip()


def _char_length(spec: ColumnSpec) -> int | None:
    """n of varchar(n)/char(n); PostgreSQL's typmod is n + 4, -1 when unbounded."""
    names = ("varchar", "bpchar", "char", "character varying", "character")
    if _pg_name(spec) in names and spec.pg_type_modifier > 4:
        return spec.pg_type_modifier - 4
    return None


def column_type(spec: ColumnSpec, *, key: bool = False, opts: TypeOptions | None = None) -> str:
    """The StarRocks type for one source column."""
    opts = opts or TypeOptions()
    pg = _pg_name(spec)
    t = spec.arrow_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if _is_text(t):
        if pg in JSON_TYPES:
            return STRING_KEY if key else "JSON"
        if pg == "numeric":
            if not key and opts.unconstrained_numeric == "decimal" and spec.pg_type_modifier < 0:
                return "DECIMAL(38,9)"
            return STRING_KEY if key else TEXT
        if pg in ("time", "timetz", "time without time zone", "time with time zone"):
            return "VARCHAR(32)"
        n = _char_length(spec)
        if n is not None:
            return f"VARCHAR({min(4 * n, VARCHAR_MAX)})"
        return STRING_KEY if key else TEXT
    return arrow_type_sql(t, key=key)


def arrow_type_sql(t: pa.DataType, *, key: bool = False) -> str:
    """The StarRocks type for an Arrow type (no PostgreSQL hints available)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_integer(t):
        signed = {8: "TINYINT", 16: "SMALLINT", 32: "INT", 64: "BIGINT"}
        unsigned = {8: "SMALLINT", 16: "INT", 32: "BIGINT", 64: "LARGEINT"}
        return (signed if pa.types.is_signed_integer(t) else unsigned)[t.bit_width]
    if pa.types.is_floating(t):
        if key:
            return "VARCHAR(64)"
        return "DOUBLE" if t.bit_width == 64 else "FLOAT"
    if pa.types.is_decimal(t):
        if t.precision > 38:
            return STRING_KEY if key else TEXT
        if key:
            # Sign, point, and the leading 0 of a scale-only decimal ("-0.99" for (2,2)).
            return f"VARCHAR({t.precision + (3 if t.scale >= t.precision else 2)})"
        return f"DECIMAL({t.precision},{t.scale})"
    if _is_text(t) or pa.types.is_null(t):
        return STRING_KEY if key else TEXT
    if _is_binary(t):
        return STRING_KEY if key else "VARBINARY"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "DATETIME"
    if pa.types.is_time(t):
        return "VARCHAR(32)"
    if pa.types.is_duration(t):
        return "BIGINT"
    if is_list_type(t):
        if key:
            raise UnsupportedType("an array cannot be part of a StarRocks primary key")
        element = t.value_type
        if _is_binary(element):
            # A load maps only whole columns (to_binary for bytea); array items arrive as
            # their hex text, which an ARRAY<VARBINARY> would keep as the text's bytes.
            return f"ARRAY<{TEXT}>"
        return f"ARRAY<{arrow_type_sql(element)}>"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        if key:
            raise UnsupportedType("a composite value cannot be part of a StarRocks primary key")
        return "JSON"
    return STRING_KEY if key else TEXT


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def is_list_type(t: pa.DataType) -> bool:
    """Any Arrow list layout (StarRocks ARRAY; serialized as nested JSON)."""
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def is_binary_column(spec: ColumnSpec) -> bool:
    return _is_binary(spec.arrow_type)


def is_json_column(spec: ColumnSpec) -> bool:
    return _pg_name(spec) in JSON_TYPES and _is_text(spec.arrow_type)


# -- statements ----------------------------------------------------------------------------


def qualified(db: str, table: str) -> str:
    return f"{quote_ident(db)}.{quote_ident(table)}"


def _quote_property(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def column_definitions(
    schema: TableSchema, opts: TypeOptions | None = None
) -> list[tuple[str, str, bool]]:
    """(name, type, is_key) for every target column: keys first, then the rest, then audit."""
    keys = list(schema.key_columns)
    if not keys:
        raise UnsupportedType(
            f"{schema.source_name} has no primary key; a StarRocks Primary Key table needs one"
        )
    by_name = {c.name: c for c in schema.columns}
    missing = [k for k in keys if k not in by_name]
    if missing:
        raise UnsupportedType(f"key columns {missing} are not columns of {schema.source_name}")
    out = [(k, column_type(by_name[k], key=True, opts=opts), True) for k in keys]
    out += [
        (c.name, column_type(c, opts=opts), False) for c in schema.columns if c.name not in keys
    ]
    taken = {c.name.lower() for c in schema.columns}
    out += [(name, sql, False) for name, sql in AUDIT_SQL.items() if name not in taken]
    return out


def column_sql(name: str, sql_type: str, *, key: bool) -> str:
    return f"{quote_ident(name)} {sql_type} {'NOT NULL' if key else 'NULL'}"


def create_table_sql(
    db: str,
    schema: TableSchema,
    *,
    properties: Mapping[str, str] | None = None,
    opts: TypeOptions | None = None,
) -> str:
    cols = column_definitions(schema, opts)
    keys = ", ".join(quote_ident(k) for k in schema.key_columns)
    body = ",\n  ".join(column_sql(n, t, key=k) for n, t, k in cols)
    props = dict(properties or {})
    props.setdefault("replication_num", "1")
    rendered = ", ".join(f"{_quote_property(k)} = {_quote_property(v)}" for k, v in props.items())
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(db, schema.target_name)} (\n  {body}\n)\n"
        f"PRIMARY KEY ({keys})\nDISTRIBUTED BY HASH ({keys})\nPROPERTIES ({rendered})"
    )


def add_columns_sql(db: str, table: str, columns: Sequence[tuple[str, str]]) -> str:
    """One ALTER for several columns: one schema-change job instead of one per column."""
    defs = [column_sql(n, t, key=False) for n, t in columns]
    if len(defs) == 1:
        return f"ALTER TABLE {qualified(db, table)} ADD COLUMN {defs[0]}"
    return f"ALTER TABLE {qualified(db, table)} ADD COLUMN ({', '.join(defs)})"


def modify_column_sql(db: str, table: str, name: str, sql_type: str) -> str:
    return (
        f"ALTER TABLE {qualified(db, table)} MODIFY COLUMN {column_sql(name, sql_type, key=False)}"
    )


# -- widening ------------------------------------------------------------------------------

_INT_RANK = {"TINYINT": 1, "SMALLINT": 2, "INT": 3, "BIGINT": 4, "LARGEINT": 5}


def _parse(sql_type: str) -> tuple[str, tuple[int, ...]]:
    text = sql_type.strip().upper()
    if "(" in text and text.endswith(")") and not text.startswith("ARRAY"):
        name, _, args = text[:-1].partition("(")
        try:
            return name.strip(), tuple(int(a) for a in args.split(","))
        except ValueError:
            return text, ()
    return text, ()


def parse_type(sql_type: str) -> tuple[str, tuple[int, ...]]:
    """``'DECIMAL(10,2)'`` → ``('DECIMAL', (10, 2))``; ``'ARRAY<INT>'`` → itself, ``()``."""
    return _parse(sql_type)


def same_type(a: str, b: str) -> bool:
    return _norm(a) == _norm(b)


def _norm(sql_type: str) -> str:
    name, args = _parse(sql_type)
    if name == "STRING" or (name == "VARCHAR" and args == (65533,)):
        return "VARCHAR(65533)"
    return name + (f"({','.join(map(str, args))})" if args else "")


def is_safe_widening(old: str, new: str) -> bool:
    """Whether MODIFY COLUMN from ``old`` to ``new`` keeps every stored value exactly."""
    if same_type(old, new):
        return True
    (on, oa), (nn, na) = _parse(old), _parse(new)
    if on in _INT_RANK and nn in _INT_RANK:
        return _INT_RANK[nn] > _INT_RANK[on]
    if on == "FLOAT" and nn == "DOUBLE":
        return True
    if on == "DECIMAL" and nn == "DECIMAL" and len(oa) == 2 and len(na) == 2:
        return na[1] == oa[1] and na[0] >= oa[0]
    if on == "VARCHAR" and nn in ("VARCHAR", "STRING"):
        new_len = na[0] if na else 65533  # bare STRING
        return bool(oa) and new_len >= oa[0]
    return False


def missing_columns(wanted: Iterable[str], present: Iterable[str]) -> list[str]:
    """Names in ``wanted`` absent from ``present`` (StarRocks column names ignore case)."""
    have = {p.lower() for p in present}
    return [w for w in wanted if w.lower() not in have]
