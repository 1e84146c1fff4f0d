"""StarRocksSink: the Sink protocol over Stream Load (data) and the FE MySQL port (DDL).

One merged batch becomes a few loads, each with its own deterministic label
(``…-<first_lsn>-<last_lsn>-u0`` per upsert group, ``-d`` for deletes, ``-t`` marking a
truncate as done). Upserts carry ``merge_condition: dbmazz_cdc_version`` so a replayed or
late load never overwrites a newer row. Partial rows (unchanged TOAST, soft deletes, or a
target with columns the load lacks) use ``partial_update`` so absent columns keep their
values. Hard deletes send the keys with ``__op='delete'`` (never conditional).

A source transaction split across batches (``batch.split``) goes through the transaction
interface (:mod:`.split`): nothing of it is visible before its last part. When StarRocks
loses an open part, everything is rolled back and :class:`SinkReplayRequired` asks the
engine to resend the source transaction from its first part.

With ``rejected_rows="table"``, a plain load StarRocks refuses for some of its rows
(strict mode filtered them; nothing was applied) is split in halves until the failing
loads hold one row each (:mod:`dbmazz.sink.rejected`); every accepted slice is loaded with a
label of its own (deterministic: a replay finds them done), the rejected rows go to
``dbmazz_rejected`` under one more label, so a resent batch neither loses nor double-counts
them. Loads keep ``max_filter_ratio`` 0: StarRocks never drops a row that dbmazz has not
recorded first. Split source transactions still stop on a rejected row.

Thread safety: calls for different tables run in parallel (own curl handle per thread,
per-table state under a per-table lock); DDL is serialised on one MySQL connection.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.contract import VERSION_COLUMN
from dbmazz.errors import SetupError, SinkError, SinkReplayRequired
from dbmazz.lazy import lazy_module
from dbmazz.pipeline.batch import LoadResult, SchemaDelta, SplitPart, TableBatch, TableSchema
from dbmazz.retry import Waiter
from dbmazz.sink.base import RetryListener
from dbmazz.sink.rejected import (
    MAX_REJECTED_PER_LOAD,
    REJECTED_TABLE,
    Rejection,
    TooManyRejected,
    bisect,
    column_named,
    records,
)
from dbmazz.sink.starrocks.catalog import Catalog, TargetTable
from dbmazz.sink.starrocks.current import read_current
from dbmazz.sink.starrocks.ddl import is_binary_column, is_json_column, is_list_type
from dbmazz.sink.starrocks.http import Transport
from dbmazz.sink.starrocks.labels import make_label
from dbmazz.sink.starrocks.mysql import FeClient, quote_ident
from dbmazz.sink.starrocks.schema import apply_delta, check_target_names, prepare_tables
from dbmazz.sink.starrocks.serialize import JSON_HEADERS, serialize
from dbmazz.sink.starrocks.settings import StarRocksSettings
from dbmazz.sink.starrocks.split import PlannedLoad, SplitTransaction
from dbmazz.sink.starrocks.stream_load import (
    FINAL_OK,
    RowsRejected,
    StreamLoadClient,
    TransactionBroken,
)

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")  # imported at first use: ~30 MB a run may not need

if TYPE_CHECKING:
    from dbmazz.config import Config

log = logging.getLogger("dbmazz.sink.starrocks")

_HEX_PREFIX = "__dbmazz_hex_"


@dataclass(frozen=True, slots=True)
class _Part:
    """What one planned load is made of, so slices of it can be planned again."""

    suffix: str
    rows: pa.Table
    partial: bool
    delete: bool = False


@dataclass(slots=True)
class _TableState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    target: TargetTable | None = None
    split: SplitTransaction | None = None
    #: Source transactions whose target transaction was dropped → the part this table's
    #: rows began with. Only that part may begin it again (a resend from the start); a later
    #: part alone would commit a partial source transaction.
    broken: dict[int, int] = field(default_factory=dict)
    #: Source transactions (commit LSN) a part of which StarRocks refused for some rows
    #: while REJECTED_ROWS=table: resent as plain loads, where rejected rows can be set
    #: aside (a load transaction cannot drop rows and go on).
    poisoned: set[int] = field(default_factory=set)
    #: Columns dropped at the source that the target keeps (DROPPED_COLUMNS=fill_null
    #: loads NULL into them).
    dropped: set[str] = field(default_factory=set)


def _with_nulls(rows: pa.Table, columns: Sequence[str]) -> pa.Table:
    """``rows`` plus a NULL column for each of ``columns`` it does not carry."""
    for name in columns:
        if name not in rows.column_names:
            rows = rows.append_column(name, pa.nulls(rows.num_rows))
    return rows


class StarRocksSink:
    name = "starrocks"

    def __init__(
        self,
        settings: StarRocksSettings,
        *,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """``sleep`` replaces real waiting between retries and polls (tests pass a function
        that moves an emulator's clock)."""
        self.settings = settings
        self._engine_stop: threading.Event | None = None
        #: Labels of loads whose rows depend on this run's cuts (see _write_poisoned).
        self._run = secrets.token_hex(2)
        self._waiter = Waiter(sleep=sleep, stopping=self._engine_stopping)
        self._transport = Transport(
            settings.user,
            settings.password,
            connect_timeout=settings.connect_timeout,
            timeout=settings.request_timeout,
        )
        self.client = StreamLoadClient(
            settings.fe_url,
            self._transport,
            policy=settings.retry,
            waiter=self._waiter,
            error_log_limit=settings.error_log_limit,
            user=settings.user,
        )
        host, port = settings.mysql_address
        self._fe = FeClient(
            host, port, settings.user, settings.password, connect_timeout=settings.connect_timeout
        )
        self.catalog = Catalog(
            self._fe, settings.database, waiter=self._waiter, alter_timeout=settings.alter_timeout
        )
        self._lock = threading.Lock()
        self._states: dict[str, _TableState] = {}
        self._sources: dict[str, TableSchema] = {}

    @classmethod
    def from_config(cls, config: Config, **overrides: object) -> StarRocksSink:
        """Settings from ``config``; ``overrides`` replace StarRocksSettings fields."""
        return cls(StarRocksSettings.from_config(config, **overrides))

    def __repr__(self) -> str:
        s = self.settings
        return f"StarRocksSink({s.fe_url}, db={s.database!r}, user={s.user!r})"

    def report_retries(self, listener: RetryListener) -> None:
        """Call ``listener(target table, reason)`` after each failed Stream Load attempt."""
        self.client.retry_listener = listener

    def cancel(self) -> None:
        """Interrupt retry back-offs and polls (engine shutdown); they raise SinkError."""
        self._waiter.cancel()

    def stop_on(self, stop: threading.Event) -> None:
        """Retry back-offs and polls end once ``stop`` (the engine's) is set."""
        self._engine_stop = stop

    def _engine_stopping(self) -> bool:
        stop = self._engine_stop
        return stop is not None and stop.is_set()

    def _state(self, table: str) -> _TableState:
        with self._lock:
            state = self._states.get(table)
            if state is None:
                state = self._states[table] = _TableState()
            return state

    # -- setup and schema ----------------------------------------------------------------

    def check_reachable(self) -> None:
        """Log in to the FE (:class:`~dbmazz.sink.base.ReachabilityCheck`)."""
        self.catalog.version()

    def setup(self, tables: Sequence[TableSchema]) -> None:
        with self._lock:
            known = {s.source_name: s for s in self._sources.values()}
            known.update({t.source_name: t for t in tables})
            check_target_names(known.values())
        if self.settings.setup == "auto":
            self.catalog.ensure_database()
        elif not self.catalog.database_exists():
            raise SetupError(
                f"StarRocks database {self.settings.database!r} does not exist",
                "create it, or run with SETUP=auto",
            )
        report = prepare_tables(self.catalog, tables, self.settings)
        if self.settings.rejected_rows == "table":
            ddl = _rejected_ddl(self.settings.database, self.settings.table_properties)
            if self.settings.setup == "auto":
                self.catalog.execute(ddl, f"creating {self.settings.database}.{REJECTED_TABLE}")
            elif self.catalog.describe(REJECTED_TABLE) is None:
                raise SetupError(
                    f"StarRocks table {self.settings.database}.{REJECTED_TABLE} does not exist "
                    "(REJECTED_ROWS=table records rejected rows there)",
                    f"create it ({' '.join(ddl.split())}), run with SETUP=auto, or use "
                    "REJECTED_ROWS=stop",
                )
        for schema in tables:
            state = self._state(schema.target_name)
            with state.lock:
                state.target = report.tables.get(schema.target_name)
            with self._lock:
                self._sources[schema.target_name] = schema

    def check_target(self, tables: Sequence[TableSchema]) -> None:
        """SETUP=skip: the database and every table must exist with columns that take what
        dbmazz sends (setup under SETUP=skip changes nothing, it only verifies)."""
        if self.settings.setup == "skip":
            self.setup(tables)

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        if delta.before is None and delta.after.source_name not in {
            s.source_name for s in self._sources.values()
        }:
            # First sight of a table (a replay, or a table the engine did not set up):
            # the same path as setup, database included.
            self.setup([delta.after])
            return
        name = delta.after.target_name
        state = self._state(name)
        with state.lock:
            state.target = apply_delta(self.catalog, delta, self.settings)
            state.dropped.update(delta.dropped)
            # A re-added column is live again.
            state.dropped.difference_update(c.name for c in delta.added)
        with self._lock:
            self._sources[name] = delta.after

    # -- writing -------------------------------------------------------------------------

    def write(self, batch: TableBatch) -> LoadResult:
        table = batch.table.target_name
        state = self._state(table)
        with state.lock:
            try:
                target = self._target(state, batch.table)
                try:
                    loads = self.plan(batch, target)
                except _MissingColumns:
                    # Someone may have added them by hand since setup: look again, once.
                    state.target = None
                    target = self._target(state, batch.table)
                    loads = self.plan(batch, target)
                if batch.split is not None and batch.split.commit_lsn in state.poisoned:
                    return self._write_poisoned(batch, loads, target, state)
                if batch.split is not None:
                    return self._write_split(batch, loads, state)
                if state.split is not None:
                    self._settle(table, state)
                return self._write_plain(batch, loads, target)
            except SetupError as exc:
                raise SinkError(
                    exc.message, exc.hint, table=table, retryable=exc.retryable
                ) from None

    def _target(self, state: _TableState, schema: TableSchema) -> TargetTable:
        if state.target is None:
            state.target = self.catalog.describe(schema.target_name)
        if state.target is None:
            raise SinkError(
                f"StarRocks table {self.settings.database}.{schema.target_name} does not exist",
                "run setup (SETUP=auto) or create the table",
                table=schema.target_name,
            )
        return state.target

    def plan(self, batch: TableBatch, target: TargetTable) -> list[PlannedLoad]:
        """The loads of one batch (without sending anything)."""
        return [self._plan_part(batch, part, target) for part in self._parts(batch)]

    def _parts(self, batch: TableBatch) -> list[_Part]:
        fill = self._nulls_for_dropped(batch.table)
        parts = [_Part(f"u{i}", _with_nulls(group.rows, fill), group.partial)
                 for i, group in enumerate(batch.upserts) if group.rows.num_rows]
        deletes = batch.deletes
        if deletes is not None and deletes.num_rows:
            if self.settings.delete_mode == "hard":
                keys = deletes.select(list(batch.table.key_columns))
                parts.append(_Part("d", keys, False, delete=True))
            else:
                parts.append(_Part("d", deletes, True))
        return parts

    def _nulls_for_dropped(self, table: TableSchema) -> list[str]:
        """Dropped source columns the target still has, when DROPPED_COLUMNS=fill_null: the
        upserts carry them as NULL (a load without them would keep their old values). A
        name the table has again, in any case (a column renamed to another case, or dropped
        and added again so), is live: the target column is the same one."""
        if self.settings.dropped_columns != "fill_null":
            return []
        state = self._state(table.target_name)
        target = state.target
        taken = {c.name.lower() for c in table.columns}  # live, or already filled
        fill = []
        for c in sorted(state.dropped):
            if target is not None and target.has(c) and c.lower() not in taken:
                taken.add(c.lower())
                fill.append(c)
        return fill

    def _plan_part(self, batch: TableBatch, part: _Part, target: TargetTable,
                   suffix: str | None = None, rows: pa.Table | None = None) -> PlannedLoad:
        """The load of ``part`` (or of ``rows``, a slice of it, as load ``suffix``)."""
        schema = batch.table
        raw_json = {
            c.name for c in schema.columns if is_json_column(c) and _is(target, c.name, "json")
        }
        binary = {
            c.name
            for c in schema.columns
            if is_binary_column(c) and _is(target, c.name, "varbinary", "binary")
        }
        rows = _signless_zero_keys(part.rows if rows is None else rows, schema.key_columns)
        return self._load(suffix or part.suffix, rows, part.partial, target, raw_json, binary,
                          delete=part.delete)

    def _load(
        self,
        suffix: str,
        rows: pa.Table,
        partial: bool,
        target: TargetTable,
        raw_json: set[str],
        binary: set[str],
        *,
        delete: bool = False,
    ) -> PlannedLoad:
        names = rows.column_names
        missing = [n for n in names if not target.has(n)]
        if missing:
            raise _MissingColumns(
                f"StarRocks table {target.db}.{target.name} has no column(s) "
                f"{', '.join(missing)} that the batch carries",
                "apply the schema change (SETUP=auto) or add the columns",
                table=target.name,
            )
        _refuse_changed_values(rows, target)
        present = {n.lower() for n in names}
        # Columns of the target the load does not carry must keep their values.
        partial = partial or any(n.lower() not in present for n in target.names)
        items: list[str] = []
        mappings: list[str] = []
        renamed: list[str] = []
        for i, name in enumerate(names):
            if name in binary:
                temp = f"{_HEX_PREFIX}{i}"
                renamed.append(temp)
                items.append(quote_ident(temp))
                mappings.append(f"{quote_ident(name)}=to_binary({quote_ident(temp)},'hex')")
            else:
                renamed.append(name)
                items.append(quote_ident(name))
        if delete:
            mappings.append("__op='delete'")
        body_table = rows.rename_columns(renamed) if renamed != names else rows
        body = serialize(body_table, self.settings.load_format, raw_json=raw_json & set(names))
        headers = dict(body.headers)
        headers["columns"] = ",".join(items + mappings)
        # A value the target cannot hold (too long, out of range) must fail the load loudly
        # (max_filter_ratio 0 → "too many filtered rows", with the rejected row), never turn
        # into a silent NULL as StarRocks' non-strict default would.
        headers["strict_mode"] = "true"
        if partial and not delete:
            headers["partial_update"] = "true"
        merge = target.column(VERSION_COLUMN)
        if not delete and merge is not None and VERSION_COLUMN in present:
            headers["merge_condition"] = merge.name
        return PlannedLoad(suffix, body, headers)

    def _label(self, batch: TableBatch, first: int, last: int, suffix: str) -> str:
        return make_label(
            self.settings.slot_name,
            batch.table.target_name,
            first,
            last,
            suffix,
            batch_id=batch.batch_id,
        )

    def _write_poisoned(self, batch: TableBatch, loads: list[PlannedLoad], target: TargetTable,
                        state: _TableState) -> LoadResult:
        """A part of a split source transaction that held rejected rows, resent: loaded
        like a batch of its own (labels carry the part's index), so its rejected rows are
        set aside. Its parts become visible one by one rather than at the last one."""
        part = batch.split
        assert part is not None
        if state.split is not None and state.split.commit_lsn != part.commit_lsn:
            self._settle(batch.table.target_name, state)
        state.split = None
        state.broken.pop(part.commit_lsn, None)
        # Which rows part N holds depends on where the transaction was cut (FLUSH_ROWS may
        # differ after a restart): its loads take labels of this run, so a replay loads
        # them again rather than skipping what an earlier run's part N held. The truncate
        # marker stays stable (a truncate found done must not run again).
        result = self._write_plain(batch, loads, target, lsns=(part.commit_lsn,) * 2,
                                   prefix=f"p{part.index}", run=self._run)
        if part.last:
            state.poisoned.discard(part.commit_lsn)
        return result

    def _write_plain(self, batch: TableBatch, loads: list[PlannedLoad],
                     target: TargetTable, *, lsns: tuple[int, int] | None = None,
                     prefix: str = "", run: str = "") -> LoadResult:
        """``lsns`` and ``prefix`` (of every label suffix) set the labels of a split part;
        ``run`` is added to its load labels (not to its truncate marker)."""
        table, db = batch.table.target_name, self.settings.database
        first, last = lsns or (batch.first_lsn, batch.last_lsn)
        if batch.truncate:
            if first or last or batch.batch_id:
                self._truncate_once(table, self._label(batch, first, last, f"{prefix}t"),
                                    last)
            else:
                # Without an LSN there is no stable marker label (a constant one would
                # silence every later truncate), so this truncate is not replay-safe.
                self.catalog.truncate(table)
        labels, sent, rejected = [], 0, 0
        parts = {part.suffix: part for part in self._parts(batch)}
        for load in loads:
            label = self._label(batch, first, last, f"{prefix}{run}{load.suffix}")
            try:
                outcome = self.client.load(db, table, label, load.body.data, load.headers)
            except RowsRejected as exc:
                if self.settings.rejected_rows != "table":
                    raise
                rejected += self._load_rejecting(batch, parts[load.suffix], target, exc,
                                                 (first, last), f"{prefix}{run}")
                labels.append(label)
                continue
            log.debug(
                "loaded %d rows into %s (label %s%s)",
                load.body.rows,
                table,
                label,
                ", already loaded" if outcome.already_loaded else "",
            )
            labels.append(label)
            sent += len(load.body.data)
        return LoadResult(rows=batch.num_rows - rejected, bytes=sent, label=",".join(labels),
                          rejected=rejected)

    def _load_rejecting(self, batch: TableBatch, part: _Part, target: TargetTable,
                        exc: RowsRejected, lsns: tuple[int, int], prefix: str) -> int:
        """Load ``part`` without the rows StarRocks rejects, recording those in
        ``dbmazz_rejected``; returns how many were recorded now (0 when a earlier attempt
        of this batch already recorded them: the record load's label exists)."""
        table, db = batch.table.target_name, self.settings.database
        first, last = lsns

        def attempt(rows: pa.Table, offset: int) -> str | None:
            suffix = _slice_suffix(f"{prefix}{part.suffix}", offset, rows.num_rows)
            load = self._plan_part(batch, part, target, suffix, rows)
            label = self._label(batch, first, last, suffix)
            try:
                self.client.load(db, table, label, load.body.data, load.headers)
            except RowsRejected as failed:
                return failed.error_log or failed.message
            return None

        try:
            found = [Rejection(r.index, r.error, column_named(r.error))
                     for r in bisect(part.rows, attempt, exc.error_log or exc.message)]
        except TooManyRejected:
            raise SinkError(
                f"{exc.message}\n(more than {MAX_REJECTED_PER_LOAD} rows of this load are "
                "rejected: not set aside in dbmazz_rejected, the target table is likely wrong)",
                exc.hint, table=table, label=exc.label,
            ) from None
        if not found:  # cannot happen: a one-row slice that fails is rejected
            raise exc
        recorded = records(batch.table.source_name, batch.table.key_columns, part.rows,
                           found, last)
        body = serialize(recorded, "json")
        headers = dict(body.headers)
        headers["columns"] = ",".join(quote_ident(n) for n in recorded.column_names)
        label = self._label(batch, first, last, f"{prefix}{part.suffix}x")
        outcome = self.client.load(db, REJECTED_TABLE, label, body.data, headers)
        log.warning("%d row(s) of %s rejected by StarRocks%s; recorded in %s.%s: %s",
                    len(found), batch.table.source_name,
                    " (recorded earlier)" if outcome.already_loaded else "",
                    db, REJECTED_TABLE, found[0].error.splitlines()[0] if found[0].error else "")
        return 0 if outcome.already_loaded else len(found)

    def _truncate_once(self, table: str, marker: str, version: int) -> None:
        """TRUNCATE, unless an earlier run already did it for this batch.

        Re-truncating on replay would wipe rows of later batches whose loads then answer
        "Label Already Exists" and are skipped; an empty load labelled ``marker`` records
        that this batch's truncate happened.

        A replay cut into batches differently (another FLUSH_ROWS, an idle flush) loads the
        rows before the truncate under labels of their own, so they load again and the
        skipped truncate would leave them standing. Rows older than the truncate (its
        commit LSN, ``version``) cannot have been written after it: those are deleted.
        """
        db = self.settings.database
        if self.client.load_state(db, marker, table=table) in FINAL_OK:
            self._delete_older_than(table, marker, version)
            return
        self.catalog.truncate(table)
        self.client.load(db, table, marker, b"[]", JSON_HEADERS)

    def _delete_older_than(self, table: str, marker: str, version: int) -> None:
        target = self._state(table).target or self.catalog.describe(table)
        if target is None or not target.has(VERSION_COLUMN) or not version:
            return
        self.client.await_published(self.settings.database, table)  # rows reloaded, too
        stale = self.catalog.keys_older_than(target, VERSION_COLUMN, version)
        if not stale:
            return
        body = serialize(pa.Table.from_pylist(stale), "json")
        headers = dict(body.headers)
        headers["columns"] = ",".join([*(quote_ident(k) for k in stale[0]), "__op='delete'"])
        # Each sweep is idempotent and may be needed again after another replay: a label
        # of its own every time, never one a finished sweep already holds.
        label = f"{marker[:100]}-s{secrets.token_hex(4)}"
        self.client.load(self.settings.database, table, label, body.data, headers)
        log.warning("truncate of %s was done by an earlier run; deleted %d row(s) a replay "
                    "cut differently had loaded again", table, len(stale))

    # -- reading current rows (RowReader) ------------------------------------------------

    def read_rows(self, table: TableSchema, keys: pa.Table, columns: Sequence[str],
                  split: SplitPart | None = None) -> pa.Table:
        """Current rows of ``keys`` over the FE MySQL port (:mod:`.current`).

        Every earlier batch of the table is committed (and waited for until visible, should
        its publish have timed out), except the parts of an open split transaction: a
        transaction of an earlier source transaction is committed first (as ``write``
        would); one of this source transaction is invisible until its last part, so a read
        of a key it loaded is refused rather than answered with stale values.
        """
        name = table.target_name
        state = self._state(name)
        with state.lock:
            try:
                txn = state.split
                if txn is not None and (split is None or split.commit_lsn != txn.commit_lsn):
                    self._settle(name, state)
                elif txn is not None and txn.pending and _overlap(txn.touched, keys):
                    raise SinkError(
                        f"{table.source_name}: a primary-key change in a later part of the "
                        f"split source transaction {txn.commit_lsn} needs the unchanged TOAST "
                        f"value(s) of a row an earlier part of the same transaction changed; "
                        "StarRocks cannot read the open transaction's rows",
                        "raise FLUSH_ROWS/FLUSH_BYTES above the transaction's size so it loads "
                        f"as one batch, and ALTER TABLE {table.source_name} REPLICA IDENTITY "
                        "FULL (REPLICA_IDENTITY=full) so later key changes carry their values",
                        table=name,
                    )
                target = self._target(state, table)
                # A load committed but not yet visible would be read as it was before.
                self.client.await_published(self.settings.database, name)
                return read_current(self._fe, self.settings.database, target, table, keys,
                                    columns)
            except SetupError as exc:
                raise SinkError(
                    exc.message, exc.hint, table=name, retryable=exc.retryable
                ) from None

    # -- split source transactions -------------------------------------------------------

    def _write_split(
        self, batch: TableBatch, loads: list[PlannedLoad], state: _TableState
    ) -> LoadResult:
        part = batch.split
        assert part is not None
        table = batch.table.target_name
        txn = state.split
        if txn is not None and txn.commit_lsn != part.commit_lsn:
            self._settle(table, state)
            txn = None
        if txn is not None and part.index < txn.next_index - 1:
            # An earlier part again: the engine resent the transaction from its start.
            log.warning("source transaction %d of %s starts over", part.commit_lsn, table)
            txn.abandon()
            txn = state.split = None
        if txn is None:
            # Any part may be a table's first: it has no rows in the parts before it.
            first = state.broken.get(part.commit_lsn)
            if first is not None and part.index != first:
                raise SinkReplayRequired(
                    f"part {part.index} of source transaction {part.commit_lsn} for {table} "
                    f"arrived after its target transaction was dropped; part {first} must "
                    "come first",
                    "resend the transaction from its first part (restart from the checkpoint)",
                    table=table,
                )
            state.broken.pop(part.commit_lsn, None)
            txn = state.split = SplitTransaction(
                self.client,
                self.settings.database,
                table,
                part.commit_lsn,
                lambda suffix: self._label(batch, part.commit_lsn, part.commit_lsn, suffix),
                self.settings.txn_timeout_s,
                first_index=part.index,
            )
        if not txn.accepts(part.index):
            _drop(state, txn)
            raise SinkReplayRequired(
                f"part {part.index} of source transaction {part.commit_lsn} for {table} "
                f"arrived but part {txn.next_index} was expected",
                "resend the transaction from its first part",
                table=table,
            )
        sent = 0
        try:
            if not txn.finishing:
                if batch.truncate:
                    # Rows loaded so far precede the truncate: they go with it.
                    txn.abandon()
                    txn.segments.clear()
                    self._truncate_once(table, txn.truncate_marker(), part.commit_lsn)
                sent = txn.load_part(part.index, loads)
                if batch.table.replica_identity != "f":
                    # Only then can a later part need to read them (pipeline/carry.py); the
                    # keys of a FULL-identity table's transaction are not kept.
                    txn.touched += _keys_of(batch)
            if part.last:
                txn.finish()
        except TransactionBroken as exc:
            _drop(state, txn)
            raise SinkReplayRequired(
                f"StarRocks dropped the load transaction of source transaction "
                f"{part.commit_lsn} for {table}: {exc}",
                "resend the transaction from its first part (restart from the checkpoint)",
                table=table,
                label=exc.label,
            ) from None
        except RowsRejected as exc:
            _drop(state, txn)
            if self.settings.rejected_rows != "table":
                raise
            state.broken.pop(part.commit_lsn, None)
            state.poisoned.add(part.commit_lsn)
            raise SinkReplayRequired(
                f"StarRocks rejected rows of part {part.index} of source transaction "
                f"{part.commit_lsn} for {table}; resending the transaction as plain loads "
                "so they can be set aside in dbmazz_rejected",
                "nothing to do: the engine resends from the checkpoint",
                table=table,
                label=exc.label,
            ) from None
        except SinkError as exc:
            if not exc.retryable:
                _drop(state, txn)
            raise
        return LoadResult(rows=batch.num_rows, bytes=sent, label=txn.labels)

    def _settle(self, table: str, state: _TableState) -> None:
        """Commit a split transaction that never saw its last part for this table.

        Changes of a later transaction arriving for the table mean the earlier one was
        complete (commit order): its open segments are committed rather than lost.
        """
        txn = state.split
        state.split = None
        if txn is None or not txn.pending:
            return
        log.warning(
            "committing source transaction %d of %s: no part marked last arrived for it",
            txn.commit_lsn,
            table,
        )
        try:
            txn.finish()
        except TransactionBroken as exc:
            _drop(state, txn)
            raise SinkReplayRequired(
                f"StarRocks dropped the load transaction of source transaction "
                f"{txn.commit_lsn} for {table}: {exc}",
                "resend from before that transaction",
                table=table,
                label=exc.label,
            ) from None

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            states = list(self._states.items())
        for _, state in states:
            if state.split is not None:
                state.split.abandon()
                state.split = None
        self._transport.close()
        self._fe.close()


def _slice_suffix(suffix: str, offset: int, length: int) -> str:
    """The label suffix of rows ``offset…offset+length`` of load ``suffix`` (≤ 16 chars)."""
    text = f"{suffix}r{offset:x}_{length:x}"
    if len(text) <= 16:
        return text
    return "r" + hashlib.sha1(text.encode()).hexdigest()[:15]


def _rejected_ddl(db: str, properties: Mapping[str, str]) -> str:
    # A duplicate-key table: a primary key is capped at 128 bytes, which a row's key as
    # JSON may exceed. Records are written once per batch: the label of their load makes
    # a resend a no-op.
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(db)}.{quote_ident(REJECTED_TABLE)} (\n"
        "  source_table VARCHAR(1024) NOT NULL,\n"
        "  row_key VARCHAR(65533) NOT NULL,\n"
        "  cdc_version BIGINT NOT NULL,\n"
        "  column_name VARCHAR(1024),\n"
        "  error VARCHAR(65533),\n"
        "  row_json VARCHAR(1048576),\n"
        "  rejected_at DATETIME\n"
        ")\nDUPLICATE KEY (source_table)\nDISTRIBUTED BY HASH (source_table)\n"
        f"PROPERTIES ({', '.join(f'{_q(k)} = {_q(v)}' for k, v in properties.items())})"
    )


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _MissingColumns(SinkError):
    """The batch carries columns the (cached) target table lacks."""


_DECIMAL_TYPE = re.compile(r"^decimal(?:v3|32|64|128)?\((\d+),\s*(\d+)\)$")


def _signless_zero_keys(rows: pa.Table, keys: Sequence[str]) -> pa.Table:
    """Float key columns with -0 as 0. PostgreSQL's key equality (and the merge's) holds
    -0 = 0, so an update from 0 to -0 is no key change; StarRocks holds float keys as text,
    where "-0" and "0" would be two rows, the old one never deleted."""
    for name in keys:
        index = rows.schema.get_field_index(name)
        if index < 0 or not pa.types.is_floating(rows.schema.field(index).type):
            continue
        column = rows.column(index)
        zero = pa.scalar(0, column.type)
        rows = rows.set_column(index, rows.field(index),
                               pc.if_else(pc.equal(column, zero), zero, column))
    return rows


def _refuse_changed_values(rows: pa.Table, target: TargetTable) -> None:
    """Fail, before loading, on columns the target would store as different values:

    * bytea[] into an ARRAY<VARBINARY> column (:func:`_refuse_varbinary_items`);
    * exact decimal text (unconstrained ``numeric``) with non-zero digits beyond the scale
      of its target DECIMAL column (DECIMAL(38,9) by default): StarRocks rounds them, even
      in strict mode. NaN, ±Infinity and too many integer digits need no check here:
      strict mode rejects them."""
    for name in rows.column_names:
        column = rows.column(name)
        if is_list_type(column.type) and (
                pa.types.is_binary(column.type.value_type)
                or pa.types.is_large_binary(column.type.value_type)):
            _refuse_varbinary_items(name, target)
            continue
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        spec = target.column(name)
        if spec is None or (match := _DECIMAL_TYPE.match(spec.column_type.strip())) is None:
            continue
        scale = int(match.group(2))
        beyond = pc.match_substring_regex(column, rf"\.\d{{{scale}}}\d*[1-9]")
        if not pc.any(beyond).as_py():
            continue
        value = pc.filter(column, beyond)[0].as_py()
        raise SinkError(
            f"{pc.sum(beyond).as_py()} value(s) of column {name} have more than {scale} "
            f"decimals, which StarRocks column {target.db}.{target.name}.{spec.name} "
            f"({spec.column_type.upper()}) would round (e.g. {value[:80]})",
            "set STARROCKS_UNCONSTRAINED_NUMERIC=string and recreate the table (VARCHAR keeps "
            "the exact text), or give the source column a precision and scale",
            table=target.name,
        )


def _refuse_varbinary_items(name: str, target: TargetTable) -> None:
    """bytea[] items travel as hex text (a load decodes hex only for a whole column): an
    ARRAY<VARBINARY> column, as dbmazz created before, would store the hex digits' bytes."""
    spec = target.column(name)
    if spec is not None and spec.column_type.strip().lower().startswith("array<varbinary"):
        raise SinkError(
            f"StarRocks column {target.db}.{target.name}.{spec.name} is "
            f"{spec.column_type.upper()}: a load stores bytea[] items as the bytes of their "
            "hex text there, not as their bytes",
            "change it to ARRAY<VARCHAR(1048576)> (the hex text of each item, docs/types.md) "
            "and reload the table (an on-demand snapshot)",
            table=target.name,
        )


def _is(target: TargetTable, name: str, *data_types: str) -> bool:
    column = target.column(name)
    return column is not None and column.data_type in data_types


def _keys_of(batch: TableBatch) -> list[pa.Table]:
    """The keys a batch writes (copied: the batch's buffers are not kept alive)."""
    keys = list(batch.table.key_columns)
    parts = [g.rows.select(keys) for g in batch.upserts]
    if batch.deletes is not None:
        parts.append(batch.deletes.select(keys))
    return [pa.concat_tables(parts, promote_options="permissive").combine_chunks()
            ] if parts else []


def _overlap(touched: list[pa.Table], keys: pa.Table) -> bool:
    if not touched:
        return False
    names = keys.column_names
    loaded = pl.from_arrow(pa.concat_tables([t.select(names) for t in touched],
                                            promote_options="permissive"))
    wanted = pl.from_arrow(keys)
    assert isinstance(loaded, pl.DataFrame) and isinstance(wanted, pl.DataFrame)
    loaded = loaded.cast(dict(wanted.schema))  # type: ignore[arg-type]
    return bool(wanted.join(loaded, on=names, how="semi").height)


def _drop(state: _TableState, txn: SplitTransaction) -> None:
    """Abandon a table's target transaction after a failure, remembering where it began."""
    txn.abandon()
    state.split = None
    state.broken[txn.commit_lsn] = txn.first_index
