"""The target side of a verify: a table's rows as the in-flight Arrow types.

Each reader streams the whole table in batches with the two audit columns the comparison
needs (``dbmazz_cdc_version``: the commit LSN of the row's last change, and
``dbmazz_is_deleted``) and coerces what the target stored back to the types CDC loaded:

* DuckDB (in process): Arrow record batches straight from the query, cast per column.
* StarRocks (the FE's MySQL port): the text protocol's values arrive as strings and are
  cast column by column with Arrow; ``ARRAY`` text is parsed per *distinct* value. Decoding
  the MySQL text protocol itself is the driver's per-row work: StarRocks offers no Arrow
  endpoint on its MySQL port.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.contract import IS_DELETED_COLUMN, VERSION_COLUMN
from dbmazz.errors import SinkError
from dbmazz.pipeline.batch import TableSchema
from dbmazz.sink.starrocks.arraytext import parse_lists, unhex

VERSION = VERSION_COLUMN
DELETED = IS_DELETED_COLUMN
BATCH_ROWS = 65536


class TargetReader(Protocol):
    name: str
    #: JSON columns hold PostgreSQL's text unchanged (compare the text); else normalise.
    json_text: bool
    #: Per source table, the columns its target lacked at the last scan (read as NULL).
    absent: dict[str, tuple[str, ...]]

    def scan(self, table: TableSchema) -> Iterator[pa.Table]:
        """The table's columns (in-flight types) plus ``VERSION`` and ``DELETED``."""

    def close(self) -> None: ...


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _bquote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def coerce(batch: pa.Table, table: TableSchema) -> pa.Table:
    """Cast each column to its in-flight type (exact casts only; strings parsed by Arrow).
    A column the target does not have yet (see :func:`readable`) reads as NULL."""
    columns = []
    for spec in table.columns:
        if spec.name not in batch.column_names:
            columns.append(pa.nulls(batch.num_rows, spec.arrow_type))
            continue
        column = batch.column(spec.name)
        columns.append(_coerce_column(column, spec.arrow_type, spec.name, table))
    version = batch.column(VERSION).cast(pa.int64())
    deleted = batch.column(DELETED)
    if not pa.types.is_boolean(deleted.type):
        deleted = pc.not_equal(deleted.cast(pa.string()), "0")
    return pa.table([*columns, version, deleted],
                    names=[*table.column_names, VERSION, DELETED])


def _coerce_column(column: pa.ChunkedArray | pa.Array, target: pa.DataType, name: str,
                   table: TableSchema) -> pa.ChunkedArray | pa.Array:
    if column.type == target:
        return column
    try:
        if pa.types.is_list(target) and (pa.types.is_string(column.type)
                                         or pa.types.is_large_string(column.type)):
            return parse_lists(column, target)
        if pa.types.is_binary(target) and pa.types.is_string(column.type):
            return unhex(column)
        if pa.types.is_boolean(target) and pa.types.is_string(column.type):
            return pc.not_equal(column, "0")
        if pa.types.is_timestamp(target) and target.tz and pa.types.is_string(column.type):
            # A StarRocks DATETIME holding UTC: naive text, read as UTC.
            return column.cast(pa.timestamp(target.unit)).cast(target)
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
        raise SinkError(f"verify: target column {table.target_name}.{name} ({column.type}) "
                        f"cannot be read as {target}: {exc}",
                        "the target column's type differs from what dbmazz creates for it "
                        "(docs/types.md); fix the column or exclude the table") from None


def readable(table: TableSchema, present: Iterable[str],
             absent: dict[str, tuple[str, ...]]) -> list[str]:
    """The table's columns to select, given the target's (``present``, any case).

    A column added at the source reaches the target with the table's next change (its
    Relation message): until then the target lacks it, and its rows hold what the target
    will give them — NULL — so it is compared as NULL instead of failing the read. Key
    columns are always selected (a target without one cannot be compared)."""
    have = {name.lower() for name in present}
    if not have:  # no such table: its read fails, naming the table
        return list(table.column_names)
    keys = set(table.key_columns)
    selected = [c for c in table.column_names if c in keys or c.lower() in have]
    absent[table.source_name] = tuple(c for c in table.column_names if c not in selected)
    return selected


def _select_list(columns: list[str], quote: Any) -> str:
    return ", ".join(quote(c) for c in [*columns, VERSION, DELETED])


class DuckDBTarget:
    """Reads through a DuckDB connection (the engine's, or a read-only one of the file)."""

    name = "duckdb"
    json_text = True

    def __init__(self, connection: Any, *, owned: bool) -> None:
        self._conn = connection
        self._owned = owned
        self.absent: dict[str, tuple[str, ...]] = {}

    @classmethod
    def open(cls, path: str) -> DuckDBTarget:
        import duckdb

        if not os.path.exists(path):
            raise SinkError(f"verify cannot open DuckDB database {path}: it does not exist",
                            "check DUCKDB_PATH (the file `dbmazz run` loads into)")
        try:
            return cls(duckdb.connect(path, read_only=True), owned=True)
        except duckdb.Error as exc:
            raise SinkError(
                f"verify cannot open DuckDB database {path}: {exc}",
                "a running engine holds the file: run `dbmazz verify` with GRPC_HOST/"
                "GRPC_PORT pointing at it, so the engine verifies through its own connection",
            ) from None

    def scan(self, table: TableSchema) -> Iterator[pa.Table]:
        import duckdb

        target = f"{_quote(table.namespace)}.{_quote(table.target_name)}"
        present = [str(r[0]) for r in self._conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE lower(table_schema) = "
            "lower(?) AND lower(table_name) = lower(?)",
            [table.namespace, table.target_name]).fetchall()]
        columns = readable(table, present, self.absent)
        try:
            reader = self._conn.sql(
                f"SELECT {_select_list(columns, _quote)} FROM {target}"
            ).to_arrow_reader(BATCH_ROWS)
            for batch in reader:
                yield coerce(pa.Table.from_batches([batch]), table)
        except duckdb.CatalogException as exc:
            raise SinkError(f"verify: DuckDB table {target} cannot be read: {exc}",
                            "run `dbmazz setup` (or check TABLE_MAP)") from None

    def close(self) -> None:
        if self._owned:
            self._conn.close()


class StarRocksTarget:
    """Reads over the FE's MySQL port; every value arrives as text and is cast by Arrow."""

    name = "starrocks"
    json_text = False

    def __init__(self, host: str, port: int, user: str, password: str, database: str,
                 *, read_timeout_s: float = 600.0) -> None:
        import pymysql

        self.database = database
        self.absent: dict[str, tuple[str, ...]] = {}
        try:
            self._conn = pymysql.connect(
                host=host, port=port, user=user, password=password, autocommit=True,
                charset="utf8mb4", read_timeout=max(1, int(read_timeout_s)),
                # Encoders only, no decoders: every value arrives as the server's text.
                conv=dict(pymysql.converters.encoders),
                cursorclass=pymysql.cursors.SSCursor, connect_timeout=10,
            )
        except pymysql.err.OperationalError as exc:
            raise SinkError(f"verify cannot connect to the StarRocks FE {host}:{port}: {exc}",
                            "check STARROCKS_URL / STARROCKS_MYSQL_PORT and the user") from None

    def scan(self, table: TableSchema) -> Iterator[pa.Table]:
        import pymysql

        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE "
                            "TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                            (self.database, table.target_name))
                selected = readable(table, [str(r[0]) for r in cur.fetchall()],
                                    self.absent)
                names = [*selected, VERSION, DELETED]
                cur.execute(f"SELECT {_select_list(selected, _bquote)} FROM "
                            f"{_bquote(self.database)}.{_bquote(table.target_name)}")
                while True:
                    rows = cur.fetchmany(BATCH_ROWS)
                    if not rows:
                        break
                    columns = list(zip(*rows, strict=True))
                    arrays = [_text_array(values) for values in columns]
                    yield coerce(pa.table(arrays, names=names), table)
        except pymysql.err.Error as exc:
            raise SinkError(f"verify: reading StarRocks table {self.database}."
                            f"{table.target_name} failed: {exc}") from None

    def close(self) -> None:
        self._conn.close()


def _text_array(values: tuple[Any, ...]) -> pa.Array:
    """The driver's raw values: str (text columns) or bytes (binary columns; the driver
    returns bytes exactly for columns of the binary charset)."""
    first = next((v for v in values if v is not None), None)
    return pa.array(values, pa.binary() if isinstance(first, bytes) else pa.string())
