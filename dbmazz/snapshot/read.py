"""Reading tables inside one consistent snapshot, straight into typed Arrow.

A table is cut into chunks by ``ctid`` page ranges (``ctid >= '(p,0)' AND ctid <
'(q,0)'``, a TID range scan on PostgreSQL ≥ 14): chunking never looks at the key, so text,
uuid and composite keys chunk the same way as integers, and a chunk is a sequential read of
its pages. The last chunk of a table is open-ended, so pages added after planning are read.

Each worker connection imports the exported snapshot (``BEGIN ISOLATION LEVEL REPEATABLE
READ; SET TRANSACTION SNAPSHOT '…'``) and reads chunk after chunk in that one transaction.

Values reach Arrow through the same text casts as CDC (:mod:`dbmazz.source.types`):
PostgreSQL prints a value with its type's output function both in pgoutput and here, so a
snapshot row and the same row decoded from the stream are identical Arrow values. Two
readers, both without per-row Python work:

* ``adbc`` (preferred, needs ``adbc-driver-postgresql``): the driver runs ``COPY … (FORMAT
  binary)`` and builds Arrow in C++ with the GIL released. Columns whose binary form maps
  to exactly our Arrow type (integers, floats, bool, text, bytea) come as they are; every
  other column is selected as its output-function text and cast like CDC.
* ``copy``: ``COPY (SELECT …) TO STDOUT (FORMAT csv)`` through psycopg, parsed by
  ``pyarrow.csv`` (unquoted empty = NULL, quoted ``""`` = empty string), then cast. About
  2.5x slower to read: psycopg hands COPY data over one row at a time.
"""

from __future__ import annotations

import importlib.util
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg.conninfo import make_conninfo

from dbmazz.errors import SetupError, SourceConnectionError, SourceError
from dbmazz.lsn import parse_lsn
from dbmazz.pipeline.batch import TableSchema
from dbmazz.source.catalog import row_filters, split_table_name
from dbmazz.source.connection import SESSION_SETTINGS, connect_error
from dbmazz.source.database import SourceDatabase
from dbmazz.source.names import describe_dsn, quote_ident, quote_literal
from dbmazz.source.slots import SlotCreation
from dbmazz.source.types import (
    BOOL,
    BPCHAR,
    BYTEA,
    CHAR,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    NAME,
    TEXT,
    VARCHAR,
    DecodeStats,
    TextColumn,
    TypeRegistry,
    cast_text,
    resolve,
)

log = logging.getLogger(__name__)

ReaderKind = Literal["auto", "adbc", "copy"]

#: Deterministic text output, as on the replication connection, plus hex bytea.
SNAPSHOT_SESSION: dict[str, str] = {**SESSION_SETTINGS, "bytea_output": "hex"}

#: Default chunk size: 4096 pages = 32 MiB of heap (rows ≈ 32 MiB / row width).
DEFAULT_CHUNK_PAGES = 4096
#: With ``ramp``, a table's first chunks are 1/16, 1/8, 1/4 and 1/2 of the chunk size
#: (each at least :data:`MIN_RAMP_PAGES`): the sink's first write waits for a small read
#: instead of a whole chunk read by every worker at once (~10% of a 5 M-row DuckDB
#: snapshot's time was that wait), and the reads that follow keep ahead of the writes.
RAMP_DIVISORS = (16, 8, 4, 2)
MIN_RAMP_PAGES = 64

#: Types whose binary COPY form the ADBC driver turns into exactly our Arrow type.
_NATIVE_OIDS = frozenset({BOOL, INT2, INT4, INT8, FLOAT4, FLOAT8, TEXT, VARCHAR, BPCHAR, NAME,
                          BYTEA})
#: Built-in types whose cast to text is a function that differs from the output function
#: (``inet::text`` keeps ``/32``, ``"char"::text`` skips escapes, ``xml::text`` keeps an
#: ``<?xml version="1.0"?>`` declaration): read via format().
_CAST_DIFFERS = frozenset({CHAR, 650, 869, 142})  # "char", cidr, inet, xml
_FIRST_USER_OID = 10000


@dataclass(frozen=True, slots=True)
class Chunk:
    """Pages ``[first_page, end_page)`` of one table; ``end_page=None``: to the end."""

    table: str
    index: int
    first_page: int
    end_page: int | None
    #: A partitioned parent: read through its partitions, without a TID range.
    partitioned: bool = False
    #: The publication's row filter (PostgreSQL 15+): only rows it publishes are read.
    row_filter: str | None = None

    @property
    def pages(self) -> int | None:
        return None if self.end_page is None else self.end_page - self.first_page

    def predicate(self) -> str:
        parts = []
        if self.first_page > 0:
            parts.append(f"ctid >= '({self.first_page},0)'::tid")
        if self.end_page is not None:
            parts.append(f"ctid < '({self.end_page},0)'::tid")
        if self.row_filter is not None:
            parts.append(f"({self.row_filter})")
        return " AND ".join(parts)


@dataclass(frozen=True, slots=True)
class TableLayout:
    """What planning needs to know of a table."""

    table: str
    pages: int
    rows_estimate: int
    #: ``pg_class.relreplident``: resuming chunk by chunk is exact only under ``f``.
    replica_identity: str
    #: Partitioned parents have no pages of their own: one chunk, no TID range.
    partitioned: bool = False
    #: The publication's row filter on the table, if any (see :class:`Chunk`).
    row_filter: str | None = None


def table_layouts(conn: psycopg.Connection, tables: Iterable[str],
                  publication: str | None = None) -> dict[str, TableLayout]:
    """Pages, row estimates and replica identity of ``tables`` ('schema.table'); with
    ``publication``, the row filter it has on each (read the same rows it publishes)."""
    names = list(tables)
    filters = row_filters(conn, publication, names)
    split = [split_table_name(t) for t in names]
    rows = conn.execute(
        """
        SELECT t.ord, pg_relation_size(c.oid) / current_setting('block_size')::int8,
               CASE WHEN c.relkind = 'p' THEN (
                   SELECT coalesce(sum(greatest(p.reltuples, 0)), 0)::int8
                   FROM pg_partition_tree(c.oid) pt JOIN pg_class p ON p.oid = pt.relid
                   WHERE pt.isleaf)
               ELSE greatest(c.reltuples, 0)::int8 END,
               c.relreplident::text, c.relkind = 'p'
        FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS t(nsp, rel, ord)
        JOIN pg_namespace n ON n.nspname = t.nsp
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.rel
        """,
        ([s for s, _ in split], [r for _, r in split]),
    ).fetchall()
    out: dict[str, TableLayout] = {}
    for ord_, pages, estimate, identity, partitioned in rows:
        schema, table = split[int(ord_) - 1]
        name = f"{schema}.{table}"
        out[name] = TableLayout(name, int(pages), int(estimate), str(identity), bool(partitioned),
                                filters.get(name))
    missing = [f"{s}.{t}" for s, t in split if f"{s}.{t}" not in out]
    if missing:
        raise SetupError(f"tables not found for the snapshot: {', '.join(missing)}",
                         "create them or correct TABLES")
    return out


def plan_chunks(layout: TableLayout, chunk_pages: int = DEFAULT_CHUNK_PAGES,
                tid_ranges: bool = True, ramp: bool = False) -> list[Chunk]:
    """Chunks covering every page of the table (and, via the open last chunk, any page
    added later). An empty table still gets one chunk: rows may arrive before it is read.
    ``ramp``: smaller first chunks (:data:`RAMP_DIVISORS`) for a table of several chunks."""
    if layout.partitioned or not tid_ranges or layout.pages <= chunk_pages:
        return [Chunk(layout.table, 0, 0, None, layout.partitioned, layout.row_filter)]
    sizes = [chunk_pages // d for d in RAMP_DIVISORS
             if chunk_pages // d >= MIN_RAMP_PAGES] if ramp else []
    starts: list[int] = []
    at = 0
    for size in sizes:
        starts.append(at)
        at += size
    starts += range(at, layout.pages, chunk_pages)
    return [
        Chunk(layout.table, i, start, starts[i + 1] if i + 1 < len(starts) else None,
              row_filter=layout.row_filter)
        for i, start in enumerate(starts)
    ]


# --- SQL ----------------------------------------------------------------------------------
def column_expression(name: str, type_oid: int, native: bool) -> str:
    """How a column is selected for the ADBC reader (``native``): as it is when the driver
    maps it exactly, else as its output-function text. For COPY (``native=False``) as it
    is: COPY prints every value with its output function already."""
    column = quote_ident(name)
    if not native or type_oid in _NATIVE_OIDS:
        return column
    if type_oid in _CAST_DIFFERS or type_oid >= _FIRST_USER_OID:
        # format('%s') calls the output function (a domain's is its base type's); it
        # prints NULL as '', hence the CASE. num_nulls, not IS NULL: a composite whose
        # fields are all NULL IS NULL, yet it is a value ('(,)'), as CDC sends it.
        return f"CASE WHEN num_nulls({column}) = 1 THEN NULL ELSE format('%s', {column}) END"
    # For every other built-in type (arrays included) the cast to text is the output
    # function.
    return f"{column}::text"


def select_sql(table: TableSchema, chunk: Chunk, native: bool) -> str:
    """``SELECT`` of one chunk; ``native``: let the driver read native-typed columns."""
    columns = ", ".join(
        column_expression(c.name, c.pg_type_oid, native) for c in table.columns
    )
    relation = f"{quote_ident(table.namespace)}.{quote_ident(table.name)}"
    where = chunk.predicate()
    # ONLY: rows of inheritance children are not this table's (the stream does not carry
    # them as this table's either); a partitioned parent is read through its partitions.
    source = relation if chunk.partitioned else f"ONLY {relation}"
    return f"SELECT {columns} FROM {source}" + (f" WHERE {where}" if where else "")


# --- text → typed Arrow -------------------------------------------------------------------
def _text_column(array: pa.Array) -> TextColumn:
    """A TextColumn over a string/binary array's own buffers (no copy)."""
    if pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type):
        offset_type: Any = np.int64
    else:
        if not (pa.types.is_string(array.type) or pa.types.is_binary(array.type)):
            array = array.cast(pa.string())
        offset_type = np.int32
    n = len(array)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=offset_type)[array.offset : array.offset + n + 1]
    data = buffers[2]
    buf = (np.frombuffer(data, dtype=np.uint8) if data is not None and data.size
           else np.zeros(1, dtype=np.uint8))
    valid = (np.ones(n, dtype=np.bool_) if array.null_count == 0
             else np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_))
    lengths = np.where(valid, np.diff(offsets), 0).astype(np.int32)
    return TextColumn(buf, offsets[:-1], lengths, valid)


def typed_table(texts: pa.Table, table: TableSchema, registry: TypeRegistry | None,
                stats: DecodeStats | None = None) -> pa.Table:
    """Columns read as text (or already native) → the table's Arrow types, via CDC's casts."""
    stats = stats if stats is not None else DecodeStats()
    columns = []
    for spec, column in zip(table.columns, texts.columns, strict=True):
        target = spec.arrow_type
        if column.type == target:
            columns.append(column)
            continue
        plan = resolve(spec.pg_type_oid, spec.pg_type_modifier, registry)
        if plan.arrow_type != target:
            raise SourceError(f"column {table.source_name}.{spec.name}: snapshot type "
                              f"{plan.arrow_type} differs from the stream's {target}")
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
                or pa.types.is_binary(column.type)):
            # A native column in a form we did not expect: Arrow's own cast is exact here.
            columns.append(column.cast(target))
            continue
        columns.append(pa.chunked_array(
            [cast_text(_text_column(part), plan, stats, spec.name) for part in column.chunks],
            type=target,
        ))
    stats.rows += texts.num_rows
    return pa.table(columns, names=list(table.column_names))


# --- readers ------------------------------------------------------------------------------
class TableRewrittenError(SourceError):
    """Tables rewritten (VACUUM FULL, CLUSTER, ALTER TABLE … TYPE, TRUNCATE) after the
    snapshot was taken and before a reader locked them: their files no longer hold the rows
    the snapshot sees (a rewrite is not MVCC-safe), so they must be read again under a
    newer snapshot."""

    def __init__(self, tables: Sequence[str]) -> None:
        super().__init__(
            f"{', '.join(tables)} rewritten (VACUUM FULL, CLUSTER, ALTER TABLE … TYPE or "
            "TRUNCATE) after the snapshot was taken",
            "dbmazz reads them again under a newer snapshot",
        )
        self.tables = tuple(tables)


def guard_sql(tables: Sequence[TableSchema]) -> tuple[str, str]:
    """Statements a reader runs first: lock ``tables`` against rewrites for as long as the
    snapshot is read (as pg_dump does; reading them would take the same lock, one table at a
    time), then find those rewritten before the lock (their partitions included)."""
    names = [f"{quote_ident(t.namespace)}.{quote_ident(t.name)}" for t in tables]
    regclasses = ", ".join(f"{quote_literal(n)}::regclass" for n in names)
    return (
        f"LOCK TABLE {', '.join(names)} IN ACCESS SHARE MODE",
        # pg_class through the snapshot says which file it saw; pg_relation_filenode reads
        # the catalog as it is now (current once the lock is held).
        "SELECT r.source_name, c.oid::regclass::text FROM unnest(ARRAY["
        f"{', '.join(quote_literal(t.source_name) for t in tables)}], ARRAY[{regclasses}])"
        " AS r(source_name, oid), LATERAL (SELECT r.oid AS relid UNION"
        " SELECT relid FROM pg_partition_tree(r.oid)) p"
        " JOIN pg_class c ON c.oid = p.relid WHERE c.relfilenode <> 0"
        " AND c.relfilenode IS DISTINCT FROM pg_relation_filenode(c.oid)",
    )


def _rewritten(rows: Sequence[Sequence[Any]]) -> TableRewrittenError | None:
    return TableRewrittenError(sorted({str(r[0]) for r in rows})) if rows else None


class ChunkReader(Protocol):
    """One connection inside one snapshot (exported or its own)."""

    kind: str

    def read(self, table: TableSchema, chunk: Chunk) -> pa.Table:
        """Rows of ``chunk`` with the table's columns and Arrow types."""

    def close(self) -> None: ...


def adbc_available() -> bool:
    return importlib.util.find_spec("adbc_driver_postgresql") is not None


def session_conninfo(dsn: str, application_name: str = "dbmazz-snapshot") -> str:
    """The DSN with the deterministic session settings added to its ``options``."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    ours = " ".join(f"-c {k}={v}" for k, v in SNAPSHOT_SESSION.items())
    existing = str(info.get("options") or "").strip()
    extra = {"options": f"{existing} {ours}".strip(), "client_encoding": "UTF8"}
    if not info.get("application_name"):
        extra["application_name"] = application_name
    if not info.get("connect_timeout"):
        extra["connect_timeout"] = "10"
    return make_conninfo(dsn, **extra)


def _begin_sql(snapshot_name: str | None) -> list[str]:
    statements = ["BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"]
    if snapshot_name:
        statements.append(f"SET TRANSACTION SNAPSHOT {quote_literal(snapshot_name)}")
    return statements


class AdbcReader:
    kind = "adbc"

    def __init__(self, dsn: str, snapshot_name: str | None, registry: TypeRegistry | None,
                 stats: DecodeStats | None = None, guarded: Sequence[TableSchema] = ()
                 ) -> None:
        import adbc_driver_postgresql.dbapi as adbc

        self._registry = registry
        self._stats = stats
        target = describe_dsn(dsn)
        try:
            self._conn = adbc.connect(session_conninfo(dsn), autocommit=True)
        except adbc.Error as exc:
            raise connect_error(str(exc), target) from None
        self._cursor = self._conn.cursor()
        try:
            for statement in _begin_sql(snapshot_name):
                self._cursor.execute(statement)
        except adbc.Error as exc:
            self.close()
            raise _snapshot_error(str(exc), snapshot_name, target) from None
        if guarded:
            lock, check = guard_sql(guarded)
            try:
                self._cursor.execute(lock)
                self._cursor.execute(check)
                rewritten = _rewritten(self._cursor.fetchall())
            except adbc.Error as exc:
                self.close()
                lost = isinstance(exc, adbc.OperationalError)
                raise (SourceConnectionError if lost else SourceError)(
                    f"locking the snapshot's tables failed: {exc}") from None
            if rewritten is not None:
                self.close()
                raise rewritten

    def read(self, table: TableSchema, chunk: Chunk) -> pa.Table:
        import adbc_driver_postgresql.dbapi as adbc

        try:
            self._cursor.execute(select_sql(table, chunk, native=True))
            texts = self._cursor.fetch_arrow_table()
        except adbc.OperationalError as exc:
            raise SourceConnectionError(f"snapshot read of {chunk.table} failed: {exc}") from None
        except adbc.Error as exc:
            raise SourceError(f"snapshot read of {chunk.table} failed: {exc}") from None
        return typed_table(texts, table, self._registry, self._stats)

    def close(self) -> None:
        for thing in (getattr(self, "_cursor", None), getattr(self, "_conn", None)):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    log.debug("closing the ADBC snapshot connection failed", exc_info=True)


class CopyReader:
    kind = "copy"

    def __init__(self, dsn: str, snapshot_name: str | None, registry: TypeRegistry | None,
                 stats: DecodeStats | None = None, guarded: Sequence[TableSchema] = ()
                 ) -> None:
        self._registry = registry
        self._stats = stats
        target = describe_dsn(dsn)
        try:
            self._conn = psycopg.connect(session_conninfo(dsn), autocommit=True)
        except psycopg.OperationalError as exc:
            raise connect_error(str(exc), target) from None
        try:
            for statement in _begin_sql(snapshot_name):
                self._conn.execute(statement)
        except psycopg.Error as exc:
            self._conn.close()
            raise _snapshot_error(str(exc), snapshot_name, target) from None
        if guarded:
            lock, check = guard_sql(guarded)
            try:
                self._conn.execute(lock)
                rewritten = _rewritten(self._conn.execute(check).fetchall())
            except psycopg.Error as exc:
                self._conn.close()
                lost = isinstance(exc, psycopg.OperationalError)
                raise (SourceConnectionError if lost else SourceError)(
                    f"locking the snapshot's tables failed: {exc}") from None
            if rewritten is not None:
                self._conn.close()
                raise rewritten

    def read(self, table: TableSchema, chunk: Chunk) -> pa.Table:
        query = f"COPY ({select_sql(table, chunk, native=False)}) TO STDOUT WITH (FORMAT csv)"
        parts: list[Any] = []
        try:
            with self._conn.cursor() as cursor, cursor.copy(query) as copy:
                parts.extend(copy)
        except psycopg.OperationalError as exc:
            raise SourceConnectionError(f"snapshot read of {chunk.table} failed: {exc}") from None
        except psycopg.Error as exc:
            raise SourceError(f"snapshot read of {chunk.table} failed: {exc}") from None
        return typed_table(parse_csv(b"".join(parts), table), table, self._registry,
                           self._stats)

    def close(self) -> None:
        self._conn.close()


def parse_csv(data: bytes, table: TableSchema) -> pa.Table:
    """PostgreSQL CSV → one string column per table column (NULL ≠ empty string)."""
    names = list(table.column_names)
    if not data:
        return pa.table([pa.array([], pa.string()) for _ in names], names=names)
    # Column names given explicitly: the CSV has no header, and duplicate-looking or empty
    # names must not be guessed from data.
    return pa_csv.read_csv(
        pa.py_buffer(data),
        read_options=pa_csv.ReadOptions(column_names=[f"c{i}" for i in range(len(names))],
                                        block_size=16 << 20),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={f"c{i}": pa.string() for i in range(len(names))},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            null_values=[""],
        ),
    ).rename_columns(names)


def open_reader(kind: ReaderKind, dsn: str, snapshot_name: str | None,
                registry: TypeRegistry | None, stats: DecodeStats | None = None,
                guarded: Sequence[TableSchema] = ()) -> ChunkReader:
    """A reader inside ``snapshot_name`` (or a fresh REPEATABLE READ snapshot when None),
    holding ``guarded`` against rewrites (:func:`guard_sql`)."""
    if kind == "auto":
        kind = "adbc" if adbc_available() else "copy"
    if kind == "adbc":
        return AdbcReader(dsn, snapshot_name, registry, stats, guarded)
    return CopyReader(dsn, snapshot_name, registry, stats, guarded)


def _snapshot_error(text: str, snapshot_name: str | None, target: str) -> SourceError:
    if snapshot_name and "snapshot" in text.lower():
        return SourceError(
            f"cannot import snapshot {snapshot_name!r} on {target}: {text.strip()}",
            "the connection exporting it closed; restart dbmazz (the snapshot resumes)",
        )
    return SourceError(f"cannot start a snapshot transaction on {target}: {text.strip()}")


# --- temporary slots (on-demand snapshots) --------------------------------------------------
def create_temporary_slot(dsn: str, prefix: str) -> SlotCreation:
    """A TEMPORARY logical slot exporting a snapshot. Its consistent point W is an exact
    watermark: commits before W are in the snapshot, commits from W on are not. The slot
    and the snapshot vanish when the returned connection closes (also on a crash)."""
    name = f"{prefix[:48]}_{secrets.token_hex(4)}"
    target = describe_dsn(dsn)
    conn = SourceDatabase(dsn).connect("snapshot-slot", replication=True)
    try:
        modern = conn.info.server_version >= 150000
        suffix = "(SNAPSHOT 'export')" if modern else "EXPORT_SNAPSHOT"
        row = conn.execute(
            f"CREATE_REPLICATION_SLOT {quote_ident(name)} TEMPORARY LOGICAL pgoutput "
            f"{suffix}".encode()
        ).fetchone()
    except psycopg.Error as exc:
        conn.close()
        raise SourceError(
            f"cannot create a temporary replication slot on {target}: {exc}",
            "a free replication slot is needed for the duration of the snapshot (raise "
            "max_replication_slots)",
        ) from None
    assert row is not None
    return SlotCreation(slot=name, consistent_point=parse_lsn(str(row[1])),
                        snapshot_name=str(row[2]), connection=conn)


def emit_marker(conn: psycopg.Connection, prefix: str, content: str = "") -> int:
    """A transactional logical message; returns its LSN (its commit ends after it)."""
    row = conn.execute("SELECT pg_logical_emit_message(true, %s, %s)::text",
                       (prefix, content)).fetchone()
    assert row is not None
    return parse_lsn(str(row[0]))


def server_supports_tid_ranges(conn: psycopg.Connection) -> bool:
    """TID range scans (PostgreSQL ≥ 14); older servers would scan the whole table per
    chunk, so they read each table as one chunk."""
    return conn.info.server_version >= 140000
