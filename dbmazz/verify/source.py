"""The source side of a verify: one exported snapshot at a known LSN, read gently.

A TEMPORARY logical slot is created with an exported snapshot (as an on-demand snapshot
does): its consistent point is the exact LSN the snapshot shows — commits before it are in
it, commits from it on are not. Readers import the snapshot and read each table by ``ctid``
page ranges (sequential reads, any key type; the same reader and casts as the
initial snapshot, so rows arrive as the in-flight Arrow types) under a statement timeout
and a rows-per-second limit. Each table gets a reader of its own for all its passes: it
locks the table against rewrites, finds one committed since the snapshot, and ends (with
its lock) when the next table is read. The slot and the snapshot vanish when the verify
closes (or dies).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import psycopg
import pyarrow as pa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbmazz.errors import SourceError
from dbmazz.pipeline.batch import TableSchema
from dbmazz.snapshot.read import (
    Chunk,
    ChunkReader,
    TableLayout,
    TableRewrittenError,
    create_temporary_slot,
    open_reader,
    plan_chunks,
    server_supports_tid_ranges,
    table_layouts,
)
from dbmazz.source.database import SourceDatabase
from dbmazz.source.names import quote_ident
from dbmazz.source.slots import SlotCreation
from dbmazz.source.types import TypeRegistry

log = logging.getLogger("dbmazz.verify")

#: Smaller than a snapshot's chunks: the rate limit acts between chunks.
CHUNK_PAGES = 1024


class RateLimit:
    """Keeps rows read per second at or under ``max_rows_per_s`` (0: unlimited) by pausing
    between chunks; the pause is the point (it spares the source), not a synchronisation."""

    def __init__(self, max_rows_per_s: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.max_rows_per_s = max_rows_per_s
        self.rows = 0
        self._clock = clock
        self._sleep = sleep
        self.started = clock()
        self.paused_s = 0.0

    def took(self, rows: int) -> None:
        self.rows += rows
        if self.max_rows_per_s <= 0:
            return
        due = self.started + self.rows / self.max_rows_per_s
        wait = due - self._clock()
        if wait > 0:
            self.paused_s += wait
            self._sleep(wait)


def with_statement_timeout(dsn: str, seconds: float) -> str:
    """``dsn`` whose sessions cancel any statement running longer than ``seconds``."""
    if seconds <= 0:
        return dsn
    info = conninfo_to_dict(dsn)
    options = f"{info.get('options') or ''} -c statement_timeout={int(seconds * 1000)}"
    return make_conninfo(dsn, options=options.strip())


class SourceSnapshot:
    """The source at one LSN; ``scan(table)`` yields its rows chunk by chunk."""

    def __init__(self, dsn: str, registry: TypeRegistry | None, *, max_rows_per_s: int,
                 statement_timeout_s: float, chunk_pages: int = CHUNK_PAGES,
                 publication: str | None = None) -> None:
        #: Every statement of the verify on the source runs under the timeout.
        self.dsn = with_statement_timeout(dsn, statement_timeout_s)
        #: Its row filters narrow each read to the rows the target is given (PG 15+).
        self.publication = publication
        self.chunk_pages = chunk_pages
        self._registry = registry
        #: The reader of the table being checked (all its passes), and that table's name.
        self._reader: ChunkReader | None = None
        self._reading = ""
        self._creation: SlotCreation | None = create_temporary_slot(dsn, "dbmazz_verify")
        self.lsn = self._creation.consistent_point
        self.rate = RateLimit(max_rows_per_s)

    def scan(self, table: TableSchema) -> Iterator[pa.Table]:
        with SourceDatabase(self.dsn).connect("verify") as conn:
            layout = table_layouts(conn, [table.source_name],
                                   self.publication)[table.source_name]
            tid_ranges = server_supports_tid_ranges(conn)
            reads = self._plan(conn, table, layout, tid_ranges)
        reader = self._reader_of(table)
        for part, chunk in reads:
            try:
                rows = reader.read(part, chunk)
            except SourceError as exc:
                raise SourceError(exc.message, exc.hint or (
                    "a read that hits the statement timeout is cancelled: raise "
                    "VERIFY_STATEMENT_TIMEOUT_S (0 = none)")) from None
            self.rate.took(rows.num_rows)
            yield rows

    def _plan(self, conn: psycopg.Connection, table: TableSchema, layout: TableLayout,
              tid_ranges: bool) -> list[tuple[TableSchema, Chunk]]:
        """The reads of ``table``: its page ranges or, for a partitioned table, those of
        each leaf partition (read as the root's columns, under the root's row filter).

        The snapshot reader reads a partitioned root in one statement; a verify must not:
        the whole table would be in memory at once and under one statement timeout."""
        if not layout.partitioned:
            return [(table, c) for c in plan_chunks(layout, self.chunk_pages, tid_ranges)]
        leaves = conn.execute(
            "SELECT n.nspname, c.relname, CASE WHEN c.relkind = 'r' THEN pg_relation_size("
            "c.oid) / current_setting('block_size')::int8 ELSE 0 END "
            "FROM pg_partition_tree(%s::regclass) t JOIN pg_class c ON c.oid = t.relid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.isleaf ORDER BY 1, 2",
            (f"{quote_ident(table.namespace)}.{quote_ident(table.name)}",)).fetchall()
        reads: list[tuple[TableSchema, Chunk]] = []
        for namespace, name, pages in leaves:
            leaf = replace(table, namespace=str(namespace), name=str(name))
            leaf_layout = TableLayout(leaf.source_name, int(pages), 0,
                                      layout.replica_identity, row_filter=layout.row_filter)
            # A foreign leaf counts no pages: one read of it whole, as through the root.
            reads += [(leaf, c) for c in plan_chunks(leaf_layout, self.chunk_pages,
                                                     tid_ranges)]
        return reads

    def _reader_of(self, table: TableSchema) -> ChunkReader:
        """A reader inside the snapshot that has locked ``table`` against rewrites (ACCESS
        SHARE, as reading takes anyway), kept for every pass over the table and closed when
        the next table is read, so its lock does not outlast the table's check.

        The lock and the rewrite check run in the reader's own transaction: a lock held on
        another connection would queue the reader's reads behind an ALTER waiting for it.
        A rewrite committed after the snapshot (``ALTER TABLE … TYPE``, ``TRUNCATE``) is
        not MVCC-safe: the snapshot would see the new, empty file, so every target row would
        look extra and a repair would delete them all. Such a table is reported, not read."""
        if self._reader is not None and self._reading == table.source_name:
            return self._reader
        self._close_reader()
        assert self._creation is not None, "scan after close"
        try:
            self._reader = open_reader("auto", self.dsn, self._creation.snapshot_name,
                                       self._registry, guarded=[table])
        except TableRewrittenError:
            raise SourceError(
                f"{table.source_name} was rewritten (ALTER TABLE … TYPE, TRUNCATE, VACUUM "
                "FULL or CLUSTER) after the verify's snapshot: its rows as of the snapshot "
                "cannot be read; run `dbmazz verify` again",
                "the rewrite is not MVCC-safe: the snapshot would see the table empty") from None
        self._reading = table.source_name
        return self._reader

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def close(self) -> None:
        self._close_reader()
        if self._creation is not None:
            self._creation.close()
            self._creation = None

    def __enter__(self) -> SourceSnapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
