"""SELECT over emulated tables and information_schema, answered by an in-memory DuckDB.

For each query the referenced tables are copied (through Arrow) into a fresh DuckDB
connection and the statement is transpiled from the starrocks dialect to duckdb. The
information_schema tables are built from the catalog, shaped like StarRocks' (§5).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from dbmazz.testing.starrocks.catalog import Catalog, Table, fmt_time
from dbmazz.testing.starrocks.coltypes import SRType, info_schema, render
from dbmazz.testing.starrocks.errors import ER_BAD_TABLE_ERROR, ER_NO_DB_ERROR, SRError

INFO_SCHEMA = "information_schema"
_INFO_DUCK_SCHEMA = "sr_information_schema"


@dataclass
class Result:
    rows: list[tuple[Any, ...]]
    columns: list[tuple[str, str]]  # (name, DuckDB type name)


def duck_type(t: SRType) -> str:
    simple = {
        "BOOLEAN": "BOOLEAN", "TINYINT": "TINYINT", "SMALLINT": "SMALLINT", "INT": "INTEGER",
        "BIGINT": "BIGINT", "LARGEINT": "HUGEINT", "FLOAT": "FLOAT", "DOUBLE": "DOUBLE",
        "DATE": "DATE", "DATETIME": "TIMESTAMP", "VARBINARY": "BLOB",
    }
    if t.name in simple:
        return simple[t.name]
    if t.name == "DECIMAL":
        return f"DECIMAL({t.precision},{t.scale})"
    if t.name == "ARRAY":
        assert t.item is not None
        return f"{duck_type(t.item)}[]"
    return "VARCHAR"


def arrow_type(t: SRType) -> pa.DataType:
    simple = {
        "BOOLEAN": pa.bool_(), "TINYINT": pa.int8(), "SMALLINT": pa.int16(),
        "INT": pa.int32(), "BIGINT": pa.int64(), "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(), "DATE": pa.date32(), "DATETIME": pa.timestamp("us"),
        "VARBINARY": pa.binary(), "LARGEINT": pa.string(),
    }
    if t.name in simple:
        return simple[t.name]
    if t.name == "DECIMAL":
        assert t.precision is not None and t.scale is not None
        return pa.decimal128(t.precision, t.scale)
    if t.name == "ARRAY":
        assert t.item is not None
        return pa.list_(arrow_type(t.item))
    return pa.string()


def _arrow_value(value: Any, t: SRType) -> Any:
    if value is None:
        return None
    if t.name == "LARGEINT":
        # 39 digits do not fit Arrow's decimal128; DuckDB casts the text to HUGEINT.
        return str(value)
    if t.name == "ARRAY":
        assert t.item is not None
        return [_arrow_value(v, t.item) for v in value]
    if t.name in ("CHAR", "VARCHAR", "STRING", "JSON", "MAP", "STRUCT") and not isinstance(
        value, str
    ):
        return render(value)
    return value


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load_table(con: duckdb.DuckDBPyConnection, schema: str, name: str, table: Table,
                rows: list[dict[str, Any]]) -> None:
    cols = table.columns
    ddl = ", ".join(f"{_quote(c.name)} {duck_type(c.type)}" for c in cols)
    target = f"{_quote(schema)}.{_quote(name)}"
    con.execute(f"CREATE TABLE {target} ({ddl})")
    if not rows:
        return
    arrays = {
        f"c{i}": pa.array([_arrow_value(r.get(c.name), c.type) for r in rows], arrow_type(c.type))
        for i, c in enumerate(cols)
    }
    data = pa.table(arrays)
    select = ", ".join(
        f"CAST(c{i} AS HUGEINT)" if c.type.name == "LARGEINT" else f"c{i}"
        for i, c in enumerate(cols)
    )
    con.register("__rows", data)
    con.execute(f"INSERT INTO {target} SELECT {select} FROM __rows")
    con.unregister("__rows")


def _load_plain(con: duckdb.DuckDBPyConnection, schema: str, name: str,
                columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]]) -> None:
    target = f"{_quote(schema)}.{_quote(name)}"
    ddl = ", ".join(f"{_quote(n)} {t}" for n, t in columns)
    con.execute(f"CREATE TABLE {target} ({ddl})")
    if rows:
        marks = ", ".join("?" for _ in columns)
        con.executemany(f"INSERT INTO {target} VALUES ({marks})", rows)


# -- information_schema -------------------------------------------------------------------

_COLUMNS = [
    ("TABLE_CATALOG", "VARCHAR"), ("TABLE_SCHEMA", "VARCHAR"), ("TABLE_NAME", "VARCHAR"),
    ("COLUMN_NAME", "VARCHAR"), ("ORDINAL_POSITION", "BIGINT"), ("COLUMN_DEFAULT", "VARCHAR"),
    ("IS_NULLABLE", "VARCHAR"), ("DATA_TYPE", "VARCHAR"), ("CHARACTER_MAXIMUM_LENGTH", "BIGINT"),
    ("CHARACTER_OCTET_LENGTH", "BIGINT"), ("NUMERIC_PRECISION", "BIGINT"),
    ("NUMERIC_SCALE", "BIGINT"), ("DATETIME_PRECISION", "BIGINT"),
    ("CHARACTER_SET_NAME", "VARCHAR"), ("COLLATION_NAME", "VARCHAR"), ("COLUMN_TYPE", "VARCHAR"),
    ("COLUMN_KEY", "VARCHAR"), ("EXTRA", "VARCHAR"), ("PRIVILEGES", "VARCHAR"),
    ("COLUMN_COMMENT", "VARCHAR"), ("COLUMN_SIZE", "BIGINT"), ("DECIMAL_DIGITS", "BIGINT"),
    ("GENERATION_EXPRESSION", "VARCHAR"), ("SRS_ID", "BIGINT"),
]
_TABLES = [
    ("TABLE_CATALOG", "VARCHAR"), ("TABLE_SCHEMA", "VARCHAR"), ("TABLE_NAME", "VARCHAR"),
    ("TABLE_TYPE", "VARCHAR"), ("ENGINE", "VARCHAR"), ("VERSION", "BIGINT"),
    ("ROW_FORMAT", "VARCHAR"), ("TABLE_ROWS", "BIGINT"), ("AVG_ROW_LENGTH", "BIGINT"),
    ("DATA_LENGTH", "BIGINT"), ("MAX_DATA_LENGTH", "BIGINT"), ("INDEX_LENGTH", "BIGINT"),
    ("DATA_FREE", "BIGINT"), ("AUTO_INCREMENT", "BIGINT"), ("CREATE_TIME", "TIMESTAMP"),
    ("UPDATE_TIME", "TIMESTAMP"), ("CHECK_TIME", "TIMESTAMP"), ("TABLE_COLLATION", "VARCHAR"),
    ("CHECKSUM", "BIGINT"), ("CREATE_OPTIONS", "VARCHAR"), ("TABLE_COMMENT", "VARCHAR"),
]
_TABLES_CONFIG = [
    ("TABLE_SCHEMA", "VARCHAR"), ("TABLE_NAME", "VARCHAR"), ("TABLE_ENGINE", "VARCHAR"),
    ("TABLE_MODEL", "VARCHAR"), ("PRIMARY_KEY", "VARCHAR"), ("PARTITION_KEY", "VARCHAR"),
    ("DISTRIBUTE_KEY", "VARCHAR"), ("DISTRIBUTE_TYPE", "VARCHAR"),
    ("DISTRIBUTE_BUCKET", "BIGINT"), ("SORT_KEY", "VARCHAR"), ("PROPERTIES", "VARCHAR"),
    ("TABLE_ID", "BIGINT"),
]
_SCHEMATA = [
    ("CATALOG_NAME", "VARCHAR"), ("SCHEMA_NAME", "VARCHAR"),
    ("DEFAULT_CHARACTER_SET_NAME", "VARCHAR"), ("DEFAULT_COLLATION_NAME", "VARCHAR"),
    ("SQL_PATH", "VARCHAR"),
]
INFO_TABLES = {"COLUMNS": _COLUMNS, "TABLES": _TABLES, "TABLES_CONFIG": _TABLES_CONFIG,
               "SCHEMATA": _SCHEMATA}


def _all_tables(catalog: Catalog) -> list[Table]:
    return [t for db in catalog.databases.values() for t in db.tables.values()]


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value).replace(microsecond=0)


def info_rows(catalog: Catalog, name: str) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    if name == "SCHEMATA":
        for db_name in [INFO_SCHEMA, *catalog.databases]:
            rows.append(("def", db_name, "utf8", "utf8_general_ci", None))
        return rows
    for table in _all_tables(catalog):
        if name == "COLUMNS":
            for pos, c in enumerate(table.columns, start=1):
                data_type, column_type, size, digits = info_schema(c.type)
                is_string = c.type.name in ("CHAR", "VARCHAR", "STRING")
                numeric = c.type.is_integer or c.type.name in ("DECIMAL", "FLOAT", "DOUBLE")
                key = ("PRI" if table.primary else "DUP") if c.is_key else ""
                rows.append((
                    "def", table.db_name, table.name, c.name, pos,
                    c.default.text if c.default else None,
                    "YES" if c.nullable else "NO", data_type,
                    c.type.length if is_string else None,
                    c.type.length if is_string else None,
                    size if numeric else None, digits if numeric else None,
                    0 if c.type.name == "DATETIME" else None,
                    "utf8" if is_string else None, "utf8_general_ci" if is_string else None,
                    column_type, key, "", "SELECT,INSERT,UPDATE,REFERENCES", c.comment,
                    size, digits, None, None,
                ))
        elif name == "TABLES":
            rows.append((
                "def", table.db_name, table.name, "BASE TABLE", "StarRocks", None, None,
                len(table.data.rows), 0, 0, None, None, None, None, _ts(table.create_time),
                _ts(table.update_time), None, "utf8_general_ci", None, "", table.comment,
            ))
        elif name == "TABLES_CONFIG":
            keys = ", ".join(f"`{k}`" for k in table.key_names)
            dist = ", ".join(f"`{d}`" for d in table.distribution)
            props = json.dumps({"replication_num": "1", **table.properties})
            rows.append((
                table.db_name, table.name, "OLAP", table.keys_type, keys, "", dist,
                "HASH" if table.distribution else "RANDOM", table.buckets or 0, keys, props,
                table.id,
            ))
    return rows


# -- SELECT -------------------------------------------------------------------------------


def _cte_names(expression: exp.Expression) -> set[str]:
    return {cte.alias_or_name for cte in expression.find_all(exp.CTE)}


def run_select(catalog: Catalog, expression: exp.Expression, current_db: str | None) -> Result:
    expression = expression.copy()
    con = duckdb.connect()
    try:
        created: set[tuple[str, str]] = set()
        ctes = _cte_names(expression)
        for node in list(expression.find_all(exp.Table)):
            if not node.args.get("db") and node.name in ctes:
                continue
            if not isinstance(node.this, exp.Identifier):
                continue
            db_name = node.args["db"].name if node.args.get("db") else current_db
            if db_name is None:
                raise SRError("No database selected", ER_NO_DB_ERROR)
            if db_name.lower() == INFO_SCHEMA:
                info = node.name.upper()
                if info not in INFO_TABLES:
                    raise SRError(f"Unknown table '{INFO_SCHEMA}.{node.name}'", ER_BAD_TABLE_ERROR)
                schema, target = _INFO_DUCK_SCHEMA, info
                if (schema, target) not in created:
                    _ensure_schema(con, schema, created)
                    with catalog.lock:
                        data = info_rows(catalog, info)
                    _load_plain(con, schema, target, INFO_TABLES[info], data)
            else:
                table = catalog.table(db_name, node.name)
                schema, target = f"db_{catalog.database(db_name).id}", f"t_{table.id}"
                if (schema, target) not in created:
                    _ensure_schema(con, schema, created)
                    with catalog.lock:
                        rows = table.rows()
                    _load_table(con, schema, target, table, rows)
            created.add((schema, target))
            alias = node.alias or node.name
            node.set("this", exp.to_identifier(target, quoted=True))
            node.set("db", exp.to_identifier(schema, quoted=True))
            node.set("catalog", None)
            node.set("alias", exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
        sql = expression.sql(dialect="duckdb")
        try:
            cursor = con.execute(sql)
            rows_out = cursor.fetchall()
        except duckdb.Error as e:
            raise SRError(f"Getting analyzing error. Detail message: {e}") from e
        columns = [(d[0], str(d[1])) for d in cursor.description or []]
        return Result([tuple(_out(v) for v in row) for row in rows_out], columns)
    finally:
        con.close()


def _ensure_schema(con: duckdb.DuckDBPyConnection, schema: str, created: set[tuple[str, str]]
                   ) -> None:
    if not any(s == schema for s, _ in created):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")


def _out(value: Any) -> Any:
    """StarRocks' wire values: booleans as 1/0, arrays and structs as text, DECIMAL plain."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        # Every digit of the scale, never str()'s exponent form (0E-10 for DECIMAL(38,10) 0).
        return format(value, "f")
    if isinstance(value, list):
        return render(value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return value


def alter_job_rows(catalog: Catalog, db_name: str) -> list[tuple[Any, ...]]:
    rows = []
    for job in catalog.jobs_of(db_name):
        table = catalog.find_table(db_name, job.table_name)
        table_id = table.id if table else -1
        rows.append((
            job.job_id, job.table_name, fmt_time(job.create_time), fmt_time(job.finish_time),
            job.table_name, table_id, table_id, "0:0", job.transaction_id, job.state, job.msg,
            "N/A", job.timeout,
        ))
    return rows


ALTER_JOB_COLUMNS = [
    ("JobId", "BIGINT"), ("TableName", "VARCHAR"), ("CreateTime", "VARCHAR"),
    ("FinishTime", "VARCHAR"), ("IndexName", "VARCHAR"), ("IndexId", "BIGINT"),
    ("OriginIndexId", "BIGINT"), ("SchemaVersion", "VARCHAR"), ("TransactionId", "BIGINT"),
    ("State", "VARCHAR"), ("Msg", "VARCHAR"), ("Progress", "VARCHAR"), ("Timeout", "BIGINT"),
]


def filter_rows(columns: Sequence[tuple[str, str]], rows: list[tuple[Any, ...]], tail: str,
                ) -> Result:
    """Apply a MySQL ``WHERE ... ORDER BY ... LIMIT ...`` tail to an ad-hoc row set."""
    con = duckdb.connect()
    try:
        _load_plain(con, "main", "rows", columns, rows)
        try:
            select = sqlglot.parse_one(f"SELECT * FROM main.rows {tail}", read="starrocks")
            cursor = con.execute(select.sql(dialect="duckdb"))
            out = cursor.fetchall()
        except (duckdb.Error, sqlglot.errors.ParseError) as e:
            raise SRError(f"Getting syntax error. Detail message: {e}") from e
        return Result([tuple(_out(v) for v in r) for r in out], list(columns))
    finally:
        con.close()
