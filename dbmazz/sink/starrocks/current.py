"""Reading current rows of some keys back over the FE MySQL port (RowReader for StarRocks).

Used only for primary-key changes whose unchanged TOAST values live in the target under an
old key (:mod:`dbmazz.pipeline.carry`). One ``SELECT … WHERE key IN (…)`` (composite keys:
``(a = … AND b = …) OR …``) per :data:`CHUNK` keys; the literals are built columnwise with
Arrow compute. Values come back in StarRocks' text protocol and are turned into the
batch's Arrow types (ARRAY text item by item, hex key text as bytes, 0/1 for BOOLEAN).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.contract import VERSION_COLUMN
from dbmazz.errors import SinkError
from dbmazz.lazy import lazy_module
from dbmazz.pipeline.batch import TableSchema
from dbmazz.sink.starrocks.arraytext import parse_lists, unhex
from dbmazz.sink.starrocks.catalog import TargetTable
from dbmazz.sink.starrocks.ddl import qualified
from dbmazz.sink.starrocks.mysql import FeClient, FeConnectionError, FeError, quote_ident

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")

#: Keys per SELECT: far below StarRocks' limits on IN-list length and statement size.
CHUNK = 1000

VERSION = VERSION_COLUMN
DELETED = "dbmazz_is_deleted"


def _literals(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """SQL literals of ``values`` (no NULLs: primary-key values)."""
    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    t = array.type
    if pa.types.is_floating(t):  # -0 is the key 0 (sink._signless_zero_keys)
        array = pc.if_else(pc.equal(array, pa.scalar(0, t)), pa.scalar(0, t), array)
    if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_floating(t):
        return pc.cast(array, pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        # A bytea key column holds the value's lowercase hex (docs/types.md).
        array = pl.Series(values=array).bin.encode("hex").to_arrow()
    if pa.types.is_boolean(t):
        return pc.if_else(array, "1", "0")
    if pa.types.is_timestamp(t) and t.tz is not None:
        array = pc.cast(array, pa.timestamp(t.unit))  # StarRocks DATETIME holds UTC
    text = pc.cast(array, pa.string())
    # The escapes StarRocks reads in single-quoted literals (the MySQL ones).
    text = pc.replace_substring(text, "\\", "\\\\")
    text = pc.replace_substring(text, "'", "\\'")
    return pc.binary_join_element_wise("'", text, "'", "")


def _join(parts: pa.Array, separator: str) -> str:
    """One string of ``parts`` joined by ``separator`` (in Arrow, not per row)."""
    lists = pa.ListArray.from_arrays(pa.array([0, len(parts)], pa.int32()), parts)
    return str(pc.binary_join(lists, separator)[0].as_py())


def condition(keys: pa.Table, names: Sequence[str]) -> str:
    """``WHERE`` condition matching exactly the rows of ``keys`` (target column ``names``)."""
    literals = [_literals(keys.column(i)) for i in range(keys.num_columns)]
    if len(names) == 1:
        return f"{quote_ident(names[0])} IN ({_join(literals[0], ', ')})"
    terms = [pc.binary_join_element_wise(f"{quote_ident(n)} = ", lit, "")
             for n, lit in zip(names, literals, strict=True)]
    rows = pc.binary_join_element_wise(*terms, " AND ")
    rows = pc.binary_join_element_wise("(", rows, ")", "")
    return _join(rows, " OR ")


def _convert(values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    """The driver's values of one column → ``arrow_type``, exactly. Text arrives for
    ARRAY columns and for the key columns StarRocks holds as text (float, numeric and
    bytea keys, docs/types.md): it is parsed as dbmazz wrote it, never through a float."""
    if pa.types.is_boolean(arrow_type):
        return pa.array([None if v is None else bool(int(v)) for v in values], pa.bool_())
    texts = all(v is None or isinstance(v, str) for v in values)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return parse_lists(pa.array(values, pa.string()), arrow_type)
    if texts and (pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type)):
        return unhex(pa.array(values, pa.string())).cast(arrow_type)
    if texts and (pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type)):
        return pa.array(values, pa.string()).cast(arrow_type)
    return pa.array(values, arrow_type)


def read_current(fe: FeClient, db: str, target: TargetTable, table: TableSchema,
                 keys: pa.Table, columns: Sequence[str]) -> pa.Table:
    """The current rows of ``keys``: key columns, ``columns``, version, deleted flag."""
    key_names = list(table.key_columns)
    wanted = [*key_names, *columns]
    missing = [c for c in wanted if not target.has(c)]
    if missing:
        raise SinkError(
            f"StarRocks table {db}.{target.name} has no column(s) {', '.join(missing)} to read "
            "the unchanged values of moved rows from",
            "apply the schema change (SETUP=auto) or add the columns",
            table=table.source_name,
        )
    physical = {c: target.column(c).name for c in wanted}  # type: ignore[union-attr]
    audit = [c for c in (VERSION, DELETED) if target.has(c)]
    select = ", ".join(
        [f"{quote_ident(physical[c])} AS {quote_ident(c)}" for c in wanted]
        + [quote_ident(c) for c in audit])
    rows: list[dict[str, Any]] = []
    for start in range(0, keys.num_rows, CHUNK):
        part = keys.slice(start, CHUNK).select(key_names)
        sql = (f"SELECT {select} FROM {qualified(db, target.name)} "
               f"WHERE {condition(part, [physical[k] for k in key_names])}")
        try:
            rows += fe.query(sql)
        except FeConnectionError as exc:
            raise SinkError(
                f"cannot read current rows of {db}.{target.name}: {exc}",
                "check STARROCKS_MYSQL_PORT and that the FE is running",
                table=table.source_name, retryable=not exc.auth,
            ) from None
        except FeError as exc:
            raise SinkError(
                f"StarRocks refused to read current rows of {db}.{target.name}: "
                f"{exc.message} (error {exc.code})",
                table=table.source_name,
            ) from None
    arrays: dict[str, pa.Array] = {}
    for name in wanted:
        arrow_type = table.column(name).arrow_type
        try:
            arrays[name] = _convert([r.get(name) for r in rows], arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise SinkError(
                f"cannot read back column {name} of {db}.{target.name} as {arrow_type} "
                f"(to carry an unchanged TOAST value to a row whose primary key changed): "
                f"{exc}",
                f"ALTER TABLE {table.source_name} REPLICA IDENTITY FULL so PostgreSQL sends "
                "the old value itself (REPLICA_IDENTITY=full)",
                table=table.source_name,
            ) from None
    arrays[VERSION] = pa.array([r.get(VERSION) for r in rows], pa.int64())
    arrays[DELETED] = _convert([r.get(DELETED, 0) for r in rows], pa.bool_())
    return pa.table(arrays)
