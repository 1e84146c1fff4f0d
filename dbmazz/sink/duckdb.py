"""Embedded DuckDB target: the default sink when no StarRocks is configured.

Tables are ``"<schema>"."<table>"`` with the source columns plus the audit columns and a
PRIMARY KEY on the source key. Arrow tables are handed to DuckDB as they are (no row-wise
conversion); upserts are ``INSERT … ON CONFLICT DO UPDATE`` guarded by
``dbmazz_cdc_version`` (DuckDB's stand-in for StarRocks' ``merge_condition``), so a replayed
or reordered batch never overwrites a newer row. Each ``write`` is one DuckDB transaction;
it is tried first with plain INSERTs, which are cheaper and do the same for keys the target
lacks, and runs again as upserts if a key is there (:class:`InsertFirst`).

Snapshots load through :meth:`DuckDBSink.load_snapshot_chunk` (a plain ``INSERT``, falling
back to the upsert on a key conflict). An initial snapshot into an *empty* target may first
call :meth:`DuckDBSink.begin_snapshot`: the table is then loaded without its primary key
(maintaining the key index is most of an insert's cost) and :meth:`DuckDBSink.finish_snapshot`
adds the key once at the end. A target left without its key by a crash in between gets it
back in :meth:`DuckDBSink.setup` (duplicates of a chunk loaded twice are dropped first).

With ``rejected_rows="table"`` a batch DuckDB refuses for some of its rows (a conversion,
range or constraint error) is bisected (:mod:`dbmazz.sink.rejected`) in probe transactions
that are rolled back; then one transaction applies the accepted rows and records the
rejected ones in ``main.dbmazz_rejected``, so the batch stays atomic.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from dbmazz.contract import AUDIT_COLUMNS, AUDIT_NAMES
from dbmazz.errors import SetupError, SinkError
from dbmazz.pipeline.batch import LoadResult, SchemaDelta, SplitPart, TableBatch, TableSchema
from dbmazz.sink.duckdb_types import column_types, duckdb_mismatches, duckdb_type, holds
from dbmazz.sink.rejected import (
    MAX_REJECTED_PER_LOAD,
    REJECTED_KEY,
    REJECTED_SCHEMA,
    REJECTED_TABLE,
    TooManyRejected,
    bisect,
    records,
)

log = logging.getLogger(__name__)

#: Errors caused by the values of some rows (not by the table, the file or the statement):
#: the ones REJECTED_ROWS=table sets aside instead of stopping.
_ROW_ERRORS: tuple[type[duckdb.Error], ...] = (
    duckdb.ConversionException,
    duckdb.ConstraintException,
    duckdb.OutOfRangeException,
)
_REJECTED = f"main.{REJECTED_TABLE}"


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _unregister(cur: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop a registered Arrow view. In a transaction a failed statement aborted, this fails
    too ("Current transaction is aborted"): the view then stays until ``_rolled_back``
    (or the next registration under its name), and the statement's own error — the one
    that says which rows and why — is what propagates."""
    with contextlib.suppress(duckdb.Error):
        cur.unregister(name)


def _rolled_back(cur: duckdb.DuckDBPyConnection) -> None:
    cur.execute("ROLLBACK")
    for name in ("__dbmazz_rows", "__dbmazz_deletes", "__dbmazz_rejected"):
        _unregister(cur, name)


#: WAL size at which a COMMIT checkpoints. DuckDB's default, 16 MiB, checkpointed every
#: few flushes of a catch-up, and the load thread spent half its time in those COMMITs; at
#: 64 MiB (what ``MAX_INFLIGHT_BYTES`` lets be in flight by default) a catch-up costs ~18%
#: less CPU per change at the same peak RSS (docs/benchmarks.md, eighth round). Commits
#: stay durable either way: the WAL is synced at each one.
CHECKPOINT_THRESHOLD = "64MiB"


@contextlib.contextmanager
def _transaction(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """``BEGIN … COMMIT``; a DuckDB error rolls back and propagates to the caller, which
    turns it into a :class:`SinkError` saying what failed."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
        cur.execute("COMMIT")
    except duckdb.Error:
        _rolled_back(cur)
        raise


class InsertFirst:
    """Which tables' writes try their upserts as plain INSERTs first.

    For keys the target lacks, a plain INSERT does what the upsert does at two thirds of its
    CPU (DuckDB's ON CONFLICT path costs 1.45 vs 0.99 µs a row, docs/benchmarks.md); one key
    the target holds fails it, and the write runs again as upserts. After a failure a table
    waits 1, 2, 4 … 64 writes before trying again (a success starts over), so a table whose
    writes keep updating pays for a failed try once in 64 writes at most. One writer per
    table (the Sink contract): a table's entry is only ever touched by one thread."""

    MAX_WAIT = 64

    def __init__(self) -> None:
        #: Per table: writes still to skip, and the wait after the next failure.
        self._waits: dict[str, tuple[int, int]] = {}

    def worth_trying(self, table: str) -> bool:
        skip, wait = self._waits.get(table, (0, 1))
        if skip:
            self._waits[table] = (skip - 1, wait)
            return False
        return True

    def conflicted(self, table: str) -> None:
        _, wait = self._waits.get(table, (0, 1))
        self._waits[table] = (wait, min(2 * wait, self.MAX_WAIT))

    def inserted(self, table: str) -> None:
        self._waits.pop(table, None)


class DuckDBSink:
    name = "duckdb"

    def __init__(self, path: str, *, delete_mode: str = "soft", dropped_columns: str = "fill_null",
                 rejected_rows: str = "stop"):
        self.path = path
        self.rejected_rows = rejected_rows
        self.delete_mode = delete_mode
        self.dropped_columns = dropped_columns
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = duckdb.connect(path)
            self._db.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        except duckdb.Error as exc:
            raise SinkError(
                f"cannot open DuckDB database {path}: {exc}",
                "check DUCKDB_PATH points to a writable file not opened by another process",
            ) from None
        self._local = threading.local()
        # Every thread's cursor, so close() can close them all: a cursor left to its
        # thread's exit is destroyed by DuckDB code that re-acquires the GIL, which aborts
        # the process if that thread ends while the interpreter is finalizing.
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        self._dropped: dict[str, set[str]] = {}
        self._ddl_lock = threading.Lock()
        #: Source names of tables being bulk-loaded without their primary key.
        self._bulk: set[str] = set()
        self._insert_first = InsertFirst()

    # ------------------------------------------------------------------ helpers
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._db.cursor()
            self._local.cursor = cursor
            with self._cursors_lock:
                self._cursors.append(cursor)
        return cursor

    @staticmethod
    def target(table: TableSchema) -> str:
        return f"{quote(table.namespace)}.{quote(table.target_name)}"

    def query(self, sql: str) -> list[tuple[object, ...]]:
        """Run a read query (tests, demo, notebooks)."""
        return self._cursor().execute(sql).fetchall()

    def read_cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor of this database for a long read beside the engine's writes
        (``dbmazz verify``); the caller closes it."""
        return self._db.cursor()

    # ------------------------------------------------------------------ Sink protocol
    @staticmethod
    def _claim(tables: Sequence[TableSchema]) -> None:
        """DuckDB compares schema and table names without case: source tables set up
        together whose target names differ only in case ("Orders" and orders) would load
        into one table. (Across calls a table may come back under a new source name, a
        rename mapped to its target with TABLE_MAP.)"""
        claimed: dict[tuple[str, str], str] = {}
        for t in tables:
            name = (t.namespace.lower(), t.target_name.lower())
            other = claimed.setdefault(name, t.source_name)
            if other != t.source_name:
                raise SetupError(
                    f"{other} and {t.source_name} would both load into DuckDB table "
                    f"{t.namespace}.{t.target_name}: DuckDB compares names without case",
                    f"give one another target name with TABLE_MAP, e.g. "
                    f"TABLE_MAP={t.source_name}:{t.target_name}_{len(claimed)}")

    def setup(self, tables: Sequence[TableSchema]) -> None:
        with self._ddl_lock:
            self._claim(tables)
            self._check_column_types(tables)
            cur = self._cursor()
            if self.rejected_rows == "table":
                rejected_cols = ", ".join(f"{quote(f.name)} {duckdb_type(f.type)}"
                                 for f in REJECTED_SCHEMA)
                pk = ", ".join(quote(k) for k in REJECTED_KEY)
                cur.execute(f"CREATE TABLE IF NOT EXISTS {_REJECTED} "
                            f"({rejected_cols}, PRIMARY KEY ({pk}))")
            for table in tables:
                cur.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(table.namespace)}")
                cols = [f"{quote(c.name)} {duckdb_type(c.arrow_type)}" for c in table.columns]
                cols += [f"{quote(n)} {duckdb_type(t)}" for n, t in AUDIT_COLUMNS]
                key = ", ".join(quote(k) for k in table.key_columns)
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.target(table)} "
                    f"({', '.join(cols)}, PRIMARY KEY ({key}))"
                )
                if table.source_name not in self._bulk and not self._has_key(cur, table):
                    self._restore_key(cur, table)
                self._check_key(cur, table)
                existing = {  # DuckDB column names compare without case
                    str(row[0]).lower()
                    for row in cur.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE lower(table_schema) = lower(?) AND lower(table_name) = lower(?)",
                        [table.namespace, table.target_name],
                    ).fetchall()
                }
                for spec in table.columns:
                    if spec.name.lower() not in existing:
                        cur.execute(
                            f"ALTER TABLE {self.target(table)} ADD COLUMN {quote(spec.name)} "
                            f"{duckdb_type(spec.arrow_type)}"
                        )
                for name, arrow_type in AUDIT_COLUMNS:
                    if name.lower() not in existing:
                        cur.execute(
                            f"ALTER TABLE {self.target(table)} ADD COLUMN {quote(name)} "
                            f"{duckdb_type(arrow_type)}"
                        )

    def check_target(self, tables: Sequence[TableSchema]) -> None:
        """SETUP=skip: every table exists and takes what dbmazz sends."""
        with self._ddl_lock:
            self._claim(tables)
            cur = self._cursor()
            missing = [f"{t.namespace}.{t.target_name}" for t in tables if not cur.execute(
                "SELECT 1 FROM information_schema.tables WHERE lower(table_schema) = "
                "lower(?) AND lower(table_name) = lower(?)",
                [t.namespace, t.target_name]).fetchall()]
            if missing:
                raise SetupError(
                    f"SETUP=skip, and DuckDB tables {', '.join(missing)} do not exist in "
                    f"{self.path}",
                    "create them, or run with SETUP=auto to let dbmazz create them")
            self._check_column_types(tables)
            for table in tables:
                self._check_key(cur, table)

    def _check_column_types(self, tables: Sequence[TableSchema]) -> None:
        """Tables that exist (made by hand, or by an older run) must take what dbmazz
        sends: every mismatch in one error, before the first load."""
        from dbmazz.sink.starrocks.typecheck import describe_mismatches

        mismatches = duckdb_mismatches(self._cursor(), tables)
        if mismatches:
            raise SetupError(
                f"DuckDB columns cannot take what dbmazz sends: "
                f"{describe_mismatches(mismatches)}",
                "change those columns to the types in docs/types.md, or drop the tables and "
                "let dbmazz create them")

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        table = delta.after
        if delta.before is None:
            self.setup([table])
            return
        with self._ddl_lock:
            cur = self._cursor()
            # Columns whose target type cannot take what the new shape sends: retyped at
            # the source, or dropped and added again under their name with another type
            # (kept, the old type would cast the new values: 1.5 into an INTEGER is 2). A
            # target column that takes every new value already is left as it is: a
            # narrowing, or the older shape a replay after a crash shows first.
            changed = {c.name for c in delta.added} | {new.name for _, new in delta.retyped}
            have = column_types(cur, table)
            cannot = {c.name for c in table.columns if c.name in changed
                      and c.name.lower() in have
                      and not holds(duckdb_type(c.arrow_type), have[c.name.lower()])}
            for spec in delta.added:
                cur.execute(
                    f"ALTER TABLE {self.target(table)} ADD COLUMN IF NOT EXISTS "
                    f"{quote(spec.name)} {duckdb_type(spec.arrow_type)}"
                )
            for new in (c for c in table.columns if c.name in cannot):
                if new.name in table.key_columns:
                    raise SinkError(
                        f"primary key column {new.name} of {table.source_name} changed type",
                        "recreate the target table and resnapshot it",
                        table=table.source_name,
                    )
                cur.execute(
                    f"ALTER TABLE {self.target(table)} ALTER COLUMN {quote(new.name)} "
                    f"TYPE {duckdb_type(new.arrow_type)}"
                )
                log.info("retyped %s.%s to %s", table.source_name, new.name,
                         duckdb_type(new.arrow_type))
            if delta.dropped:
                self._dropped.setdefault(table.source_name, set()).update(delta.dropped)
            # A re-added column is live again.
            self._dropped.get(table.source_name, set()).difference_update(
                c.name for c in delta.added
            )

    def write(self, batch: TableBatch) -> LoadResult:
        table = batch.table
        cur = self._cursor()
        name = table.source_name
        try:
            if self._insert_first.worth_trying(name):
                try:
                    self._apply(cur, batch, insert_only=True)
                except duckdb.ConstraintException:
                    # A key the target holds already (or a constraint the upserts meet
                    # again): the write was rolled back whole; it runs again as upserts.
                    self._insert_first.conflicted(name)
                    self._apply(cur, batch, insert_only=False)
                else:
                    self._insert_first.inserted(name)
            else:
                self._apply(cur, batch, insert_only=False)
        except _ROW_ERRORS as exc:
            # Found either way: with "stop" the error names the rows to fix.
            return self._write_rejecting(batch, str(exc))
        except duckdb.Error as exc:
            raise self._batch_error(table, exc) from None
        return LoadResult(rows=batch.num_rows, bytes=0)

    def _apply(self, cur: duckdb.DuckDBPyConnection, batch: TableBatch, *,
               insert_only: bool) -> None:
        """``batch`` in one transaction; ``insert_only``: its upserts as plain INSERTs,
        which fail on a key the target holds."""
        table = batch.table
        target = self.target(table)
        keys = list(table.key_columns)
        deletes = batch.deletes if batch.deletes is not None and batch.deletes.num_rows else None
        with _transaction(cur):
            if batch.truncate:
                cur.execute(f"DELETE FROM {target}")
            if deletes is not None:
                self._delete(cur, target, keys, deletes)
            for group in batch.upserts:
                if insert_only:
                    self._insert(cur, target, group.rows)
                else:
                    self._upsert(cur, target, keys, group.rows, table)

    @staticmethod
    def _batch_error(table: TableSchema, exc: duckdb.Error) -> SinkError:
        return SinkError(
            f"DuckDB rejected a batch for {table.source_name}: {exc}",
            "check the target table's columns match the source (or drop it to recreate); "
            "REJECTED_ROWS=table sets rows DuckDB rejects aside in main.dbmazz_rejected "
            "instead of stopping",
            table=table.source_name,
        )

    def _write_rejecting(self, batch: TableBatch, error: str) -> LoadResult:
        """Apply ``batch`` without the rows DuckDB rejects, recording those.

        Probes run in transactions that are always rolled back; only the final one, with
        the accepted rows and the records, commits (the batch stays all or nothing)."""
        table = batch.table
        cur = self._cursor()
        target = self.target(table)
        keys = list(table.key_columns)

        def probe(apply: Callable[[pa.Table], None]) -> Callable[[pa.Table, int], str | None]:
            def attempt(rows: pa.Table, offset: int) -> str | None:
                cur.execute("BEGIN TRANSACTION")
                try:
                    apply(rows)
                    return None
                except _ROW_ERRORS as exc:
                    return str(exc)
                finally:
                    _rolled_back(cur)
            return attempt

        parts: list[tuple[pa.Table, Callable[[pa.Table], None]]] = []
        if batch.deletes is not None and batch.deletes.num_rows:
            parts.append((batch.deletes,
                          lambda rows: self._delete(cur, target, keys, rows)))
        for group in batch.upserts:
            if group.rows.num_rows:
                parts.append((group.rows,
                              lambda rows: self._upsert(cur, target, keys, rows, table)))
        kept: list[tuple[pa.Table, Callable[[pa.Table], None]]] = []
        found: list[pa.Table] = []
        try:
            for rows, apply in parts:
                attempt = probe(apply)
                failed = attempt(rows, 0)
                if failed is None:
                    kept.append((rows, apply))
                    continue
                # With "stop" a few rows name the problem; with "table", too many mean a
                # wrong target, not poison values.
                limit = MAX_REJECTED_PER_LOAD if self.rejected_rows == "table" else 4
                try:
                    rejected = bisect(rows, attempt, failed, limit)
                except TooManyRejected as many:
                    found.append(records(table.source_name, keys, rows, many.found,
                                         batch.last_lsn))
                    raise self._rows_error(table, error, found, more=True,
                                           set_aside=self.rejected_rows == "table") from None
                mask = np.ones(rows.num_rows, dtype=bool)
                mask[[r.index for r in rejected]] = False
                kept.append((rows.filter(pa.array(mask)), apply))
                found.append(records(table.source_name, keys, rows, rejected, batch.last_lsn))
            if self.rejected_rows != "table":
                raise self._rows_error(table, error, found)
            with _transaction(cur):
                if batch.truncate:
                    cur.execute(f"DELETE FROM {target}")
                for rows, apply in kept:
                    if rows.num_rows:
                        apply(rows)
                for rejected_rows in found:
                    self._record_rejected(cur, rejected_rows)
        except duckdb.Error as exc:
            raise self._batch_error(table, exc) from None
        count = sum(t.num_rows for t in found)
        log.warning("%d row(s) of %s rejected by DuckDB recorded in %s (first: %s)",
                    count, table.source_name, _REJECTED, error)
        return LoadResult(rows=batch.num_rows - count, bytes=0, rejected=count)

    @staticmethod
    def _rows_error(table: TableSchema, error: str, found: list[pa.Table],
                    more: bool = False, set_aside: bool = False) -> SinkError:
        shown = [f"{key} {error_text}: {row}" for t in found for key, error_text, row in zip(
            t.column("row_key").to_pylist()[:5], t.column("error").to_pylist()[:5],
            t.column("row_json").to_pylist()[:5], strict=True)]
        count = sum(t.num_rows for t in found)
        return SinkError(
            f"DuckDB rejected a batch for {table.source_name}: {error}"
            + (f"\n{'more than ' if more else ''}{count - 1 if more else count} rejected "
               "row(s) (key, error, row):\n" + "\n".join(shown) if shown else ""),
            "fix the target table (its types or constraints) so it takes these values"
            + (f" (more than {MAX_REJECTED_PER_LOAD} rejected rows in one batch are not set "
               "aside: the target is likely wrong)" if set_aside else
               ", or set REJECTED_ROWS=table to record such rows in main.dbmazz_rejected "
               "and go on"),
            table=table.source_name,
        )

    @staticmethod
    def _record_rejected(cur: duckdb.DuckDBPyConnection, rows: pa.Table) -> None:
        names = ", ".join(quote(n) for n in rows.column_names)
        updates = ", ".join(f"{quote(n)} = EXCLUDED.{quote(n)}" for n in rows.column_names
                            if n not in REJECTED_KEY)
        cur.register("__dbmazz_rejected", rows)
        try:
            cur.execute(f"INSERT INTO {_REJECTED} ({names}) SELECT {names} FROM "
                        f"__dbmazz_rejected ON CONFLICT "
                        f"({', '.join(quote(k) for k in REJECTED_KEY)}) DO UPDATE SET {updates}")
        finally:
            _unregister(cur, "__dbmazz_rejected")

    def read_rows(self, table: TableSchema, keys: pa.Table, columns: Sequence[str],
                  split: SplitPart | None = None) -> pa.Table:
        """The current rows of ``keys`` (:class:`~dbmazz.sink.base.RowReader`): key
        columns, ``columns``, version and deleted flag, as Arrow.

        Exact without sharing ``write``'s transaction: the engine calls it on the table's
        worker just before writing the same batch, every earlier batch of the table is
        committed (split parts included: each is its own transaction), and nothing else
        writes the table in between."""
        cur = self._cursor()
        target = self.target(table)
        key_names = list(table.key_columns)
        wanted = [*key_names, *columns, "dbmazz_cdc_version", "dbmazz_is_deleted"]
        select = ", ".join(f"t.{quote(c)}" for c in wanted)
        match = " AND ".join(f"t.{quote(k)} = k.{quote(k)}" for k in key_names)
        cur.register("__dbmazz_keys", keys)
        try:
            return cur.sql(
                f"SELECT {select} FROM {target} t JOIN __dbmazz_keys k ON {match}"
            ).to_arrow_table()
        except duckdb.Error as exc:
            raise SinkError(
                f"cannot read the current rows of {table.source_name} from DuckDB: {exc}",
                "check the target table's columns match the source (or drop it to recreate)",
                table=table.source_name,
            ) from None
        finally:
            cur.unregister("__dbmazz_keys")

    # ------------------------------------------------------------------ snapshots
    def begin_snapshot(self, table: TableSchema) -> bool:
        """Prepare ``table``'s target for a bulk snapshot load; True when it is bulk mode.

        Only when the target is empty: it is recreated without its primary key, so chunks
        are appended without maintaining the key index, and :meth:`finish_snapshot` adds the
        key once. Only for a load nothing else writes to concurrently (the initial
        snapshot, before streaming): until :meth:`finish_snapshot` the table has no key, so
        an upsert into it would fail. A target that holds rows is left as it is (chunks
        are then inserted with the key in place, or upserted on conflict).
        """
        with self._ddl_lock:
            cur = self._cursor()
            target = self.target(table)
            if table.source_name in self._bulk:
                return True
            if cur.execute(f"SELECT 1 FROM {target} LIMIT 1").fetchall():
                return False
            if not self._has_key(cur, table):
                self._bulk.add(table.source_name)  # an empty leftover of a crash
                return True
            if self.rejected_rows == "table":
                # Rejected rows are found by upserts (write), which need the key in place.
                return False
            scratch = self._scratch(table, "load")
            try:
                with _transaction(cur):
                    # Same columns and types, no constraints.
                    cur.execute(f"CREATE TABLE {scratch} AS FROM {target} LIMIT 0")
                    cur.execute(f"DROP TABLE {target}")
                    cur.execute(f"ALTER TABLE {scratch} RENAME TO {quote(table.target_name)}")
            except duckdb.Error as exc:
                raise SinkError(
                    f"cannot prepare {table.source_name} for its snapshot: {exc}",
                    "check the DuckDB file is writable",
                    table=table.source_name,
                ) from None
            self._bulk.add(table.source_name)
            return True

    def load_snapshot_chunk(self, batch: TableBatch) -> LoadResult:
        """Load one snapshot chunk (inserts only), durably, like :meth:`write`.

        A plain ``INSERT`` of the Arrow table (scanned by DuckDB without conversion) —
        about ten times faster than the guarded upsert. If any key already exists (a
        resumed or repeated snapshot) the insert is rolled back and the chunk goes through
        :meth:`write`'s upsert, so the result is the same. During a bulk load
        (:meth:`begin_snapshot`) the target has no key: rows are appended.
        """
        table = batch.table
        if len(batch.upserts) != 1 or batch.truncate or (
                batch.deletes is not None and batch.deletes.num_rows):
            return self.write(batch)
        rows = batch.upserts[0].rows
        bulk = table.source_name in self._bulk
        cur = self._cursor()
        columns = ", ".join(quote(c) for c in rows.column_names)
        cur.register("__dbmazz_snapshot_rows", rows)
        try:
            with _transaction(cur):
                cur.execute(f"INSERT INTO {self.target(table)} ({columns}) "
                            f"SELECT {columns} FROM __dbmazz_snapshot_rows")
            return LoadResult(rows=rows.num_rows, bytes=0)
        except duckdb.Error as exc:
            if bulk:
                raise SinkError(
                    f"DuckDB rejected a snapshot chunk for {table.source_name}: {exc}",
                    "check the target table's columns match the source (or drop it to "
                    "recreate)",
                    table=table.source_name,
                ) from None
            # A key conflict goes through the upsert; any other problem is reported by
            # write() with its message.
        finally:
            cur.unregister("__dbmazz_snapshot_rows")
        return self.write(batch)

    def finish_snapshot(self, table: TableSchema) -> None:
        """End a bulk load (:meth:`begin_snapshot`): add the primary key. Rows of one key
        loaded twice (a chunk read again, or read under two snapshots) are first reduced to
        one; any of them is right, CDC from the snapshot's version on corrects it
        (docs/snapshot.md). A no-op for a table not in bulk mode."""
        with self._ddl_lock:
            if table.source_name not in self._bulk:
                return
            self._restore_key(self._cursor(), table)
            self._bulk.discard(table.source_name)

    def _has_key(self, cur: duckdb.DuckDBPyConnection, table: TableSchema) -> bool:
        return self._key(cur, table) is not None

    def _key(self, cur: duckdb.DuckDBPyConnection, table: TableSchema) -> list[str] | None:
        # fetchall, not fetchone: DuckDB 2 keeps a result not read to its end pending on
        # the cursor, and the thread's next register() on it fails ("unfinished result").
        rows = cur.execute(
            # DuckDB names compare without case: "Sales".a and sales.b share a schema.
            "SELECT constraint_column_names FROM duckdb_constraints() WHERE lower(schema_name) "
            "= lower(?) AND lower(table_name) = lower(?) AND constraint_type = 'PRIMARY KEY'",
            [table.namespace, table.target_name],
        ).fetchall()
        return list(rows[0][0]) if rows else None

    def _check_key(self, cur: duckdb.DuckDBPyConnection, table: TableSchema) -> None:
        """An existing table keyed otherwise than the source (its key changed while dbmazz
        was stopped, or a table made by hand) would merge rows the source keeps apart."""
        key = self._key(cur, table)
        if key is not None and {k.lower() for k in key} != {
                k.lower() for k in table.key_columns}:
            raise SetupError(
                f"DuckDB table {table.namespace}.{table.target_name} has primary key "
                f"({', '.join(key)}) but {table.source_name} has "
                f"({', '.join(table.key_columns)})",
                "upserts and deletes match rows by key: drop the table (dbmazz creates it "
                "again with the source key and loads it afresh) or recreate it with the "
                "source key")

    def _scratch(self, table: TableSchema, what: str) -> str:
        return f"{quote(table.namespace)}.{quote(f'{table.target_name}__dbmazz_{what}')}"

    def _restore_key(self, cur: duckdb.DuckDBPyConnection, table: TableSchema) -> None:
        """Add the primary key to a target a bulk snapshot load left without it."""
        target = self.target(table)
        keys = ", ".join(quote(k) for k in table.key_columns)
        try:
            cur.execute(f"ALTER TABLE {target} ADD PRIMARY KEY ({keys})")
            return
        except duckdb.ConstraintException:
            pass  # duplicate keys: rebuild below
        except duckdb.Error as exc:
            raise self._key_error(table, exc) from None
        log.warning("%s holds keys loaded twice by an interrupted snapshot: keeping one row "
                    "per key", table.source_name)
        scratch = self._scratch(table, "keyed")
        try:
            with _transaction(cur):
                cur.execute(f"CREATE TABLE {scratch} AS FROM {target} LIMIT 0")
                cur.execute(f"ALTER TABLE {scratch} ADD PRIMARY KEY ({keys})")
                cur.execute(f"INSERT INTO {scratch} SELECT * FROM {target} QUALIFY "
                            f"row_number() OVER (PARTITION BY {keys} "
                            "ORDER BY dbmazz_cdc_version DESC) = 1")
                cur.execute(f"DROP TABLE {target}")
                cur.execute(f"ALTER TABLE {scratch} RENAME TO {quote(table.target_name)}")
        except duckdb.Error as exc:
            raise self._key_error(table, exc) from None

    @staticmethod
    def _key_error(table: TableSchema, exc: duckdb.Error) -> SinkError:
        return SinkError(
            f"cannot add the primary key of {table.source_name} after its snapshot: {exc}",
            "drop the target table and snapshot it again",
            table=table.source_name,
        )

    def close(self) -> None:
        with self._cursors_lock:
            cursors, self._cursors = self._cursors, []
        for cursor in cursors:
            with contextlib.suppress(duckdb.Error):
                cursor.close()
        self._db.close()

    # ------------------------------------------------------------------ statements
    def _upsert(
        self,
        cur: duckdb.DuckDBPyConnection,
        target: str,
        keys: list[str],
        rows: pa.Table,
        table: TableSchema,
    ) -> None:
        names = rows.column_names
        cur.register("__dbmazz_rows", rows)
        try:
            assignments = [f"{quote(c)} = EXCLUDED.{quote(c)}" for c in names if c not in keys]
            if self.dropped_columns == "fill_null":
                # A name the table has again in another case is the same DuckDB column.
                taken = {c.name.lower() for c in table.columns}  # live, or already filled
                for c in sorted(self._dropped.get(table.source_name, ())):
                    if c.lower() not in taken:
                        taken.add(c.lower())
                        assignments.append(f"{quote(c)} = NULL")
            column_list = ", ".join(quote(c) for c in names)
            cur.execute(
                f"INSERT INTO {target} ({column_list}) SELECT {column_list} FROM __dbmazz_rows "
                f"ON CONFLICT ({', '.join(quote(k) for k in keys)}) DO UPDATE SET "
                f"{', '.join(assignments)} "
                f"WHERE EXCLUDED.dbmazz_cdc_version >= {target}.dbmazz_cdc_version "
                f"OR {target}.dbmazz_cdc_version IS NULL"
            )
        finally:
            _unregister(cur, "__dbmazz_rows")

    @staticmethod
    def _insert(cur: duckdb.DuckDBPyConnection, target: str, rows: pa.Table) -> None:
        cur.register("__dbmazz_rows", rows)
        try:
            column_list = ", ".join(quote(c) for c in rows.column_names)
            cur.execute(f"INSERT INTO {target} ({column_list}) SELECT {column_list} "
                        "FROM __dbmazz_rows")
        finally:
            _unregister(cur, "__dbmazz_rows")

    def _delete(
        self, cur: duckdb.DuckDBPyConnection, target: str, keys: list[str], deletes: pa.Table
    ) -> None:
        cur.register("__dbmazz_deletes", deletes)
        try:
            if self.delete_mode == "hard":
                match = " AND ".join(
                    f"{target}.{quote(k)} = __dbmazz_deletes.{quote(k)}" for k in keys
                )
                cur.execute(f"DELETE FROM {target} USING __dbmazz_deletes WHERE {match}")
                return
            names = [*keys, *AUDIT_NAMES]
            column_list = ", ".join(quote(c) for c in names)
            assignments = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in AUDIT_NAMES)
            cur.execute(
                f"INSERT INTO {target} ({column_list}) SELECT {column_list} "
                f"FROM __dbmazz_deletes ON CONFLICT ({', '.join(quote(k) for k in keys)}) "
                f"DO UPDATE SET {assignments} "
                f"WHERE EXCLUDED.dbmazz_cdc_version >= {target}.dbmazz_cdc_version "
                f"OR {target}.dbmazz_cdc_version IS NULL"
            )
        finally:
            _unregister(cur, "__dbmazz_deletes")
