"""The engine's sink, made safe for snapshot loads that run beside CDC.

:class:`SnapshotAwareSink` wraps the real sink:

* one write at a time per table — snapshot chunks and CDC batches of one table never
  overlap (the Sink protocol promises that to every sink);
* for a table under an on-demand snapshot with watermark W, it remembers the keys every CDC
  batch touched with a version ≥ W (those changes are not in the snapshot and are newer
  than it) and drops those keys from snapshot chunks written later. So a row deleted (even
  hard-deleted) or changed by CDC during the snapshot is never brought back by an older
  snapshot row, whatever the order of the two loads; and a TRUNCATE applied after the
  watermark makes the remaining chunks moot;
* snapshot chunks go through the sink's own snapshot path when it has one
  (:class:`~dbmazz.sink.base.SnapshotLoader`: DuckDB's plain insert and bulk load of an
  empty target), else through ``write``. No private attribute of a sink is touched here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pyarrow as pa

from dbmazz.contract import VERSION_COLUMN
from dbmazz.errors import SinkError
from dbmazz.lazy import lazy_module
from dbmazz.pipeline.batch import (
    LoadResult,
    SchemaDelta,
    TableBatch,
    TableSchema,
    UpsertGroup,
)
from dbmazz.sink.base import ReportsRetries, Sink, SnapshotLoader
from dbmazz.sink.load_health import LoadHealth

T = TypeVar("T")

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")  # imported at first use: ~30 MB a run may not need


class Watch:
    """What CDC did to one table while its on-demand snapshot runs.

    Fed by CDC writes (under the table's write lock) and read by the snapshot's thread, so
    every method takes the watch's own lock.
    """

    def __init__(self, table: TableSchema) -> None:
        self.table = table
        self.keys = list(table.key_columns)
        self.watermark: int | None = None
        self._touched: list[pa.Table] = []
        self._lock = threading.Lock()
        self.truncates = 0
        self._truncates_at_attempt = 0
        #: Truncates seen when the gate (all CDC before the watermark applied) opened.
        self._truncates_at_gate: int | None = None

    def begin_attempt(self) -> None:
        """Called before a watermark is taken: truncates from now on count against it."""
        with self._lock:
            self._truncates_at_attempt = self.truncates
            self._truncates_at_gate = None

    def set_watermark(self, watermark: int) -> None:
        """Forget touched keys older than the new watermark."""
        with self._lock:
            self.watermark = watermark
            self._touched = [t for t in (self._older_pruned(t) for t in self._touched)
                             if t.num_rows]

    def open_gate(self) -> bool:
        """Everything committed before the watermark is applied. False when a TRUNCATE
        went by since the attempt began: it may be older or newer than the watermark, so
        the caller takes a new watermark."""
        with self._lock:
            self._truncates_at_gate = self.truncates
            return self.truncates == self._truncates_at_attempt

    @property
    def truncated(self) -> bool:
        """A TRUNCATE newer than the watermark was applied: snapshot rows are obsolete."""
        with self._lock:
            return (self._truncates_at_gate is not None
                    and self.truncates > self._truncates_at_gate)

    def observe(self, batch: TableBatch) -> None:
        parts = [g.rows for g in batch.upserts]
        if batch.deletes is not None:
            parts.append(batch.deletes)
        with self._lock:
            if batch.truncate:
                self.truncates += 1
            for rows in parts:
                if rows.num_rows and VERSION_COLUMN in rows.column_names:
                    touched = self._older_pruned(rows.select([*self.keys, VERSION_COLUMN]))
                    if touched.num_rows:
                        self._touched.append(touched)

    def _older_pruned(self, rows: pa.Table) -> pa.Table:
        if self.watermark is None:
            return rows
        versions = rows.column(VERSION_COLUMN).to_numpy()
        return rows.filter(pa.array(versions >= self.watermark))

    def filter(self, rows: pa.Table) -> pa.Table:
        """``rows`` without the keys CDC changed at or after the watermark."""
        with self._lock:
            parts = list(self._touched)
        if not parts or not rows.num_rows:
            return rows
        touched = pl.concat([_frame(t.select(self.keys)) for t in parts],
                            how="vertical_relaxed").unique()
        left = _frame(rows.select(self.keys)).with_row_index("__dbmazz_row")
        keep = left.join(touched, on=self.keys, how="anti", nulls_equal=True)
        index = keep.get_column("__dbmazz_row").to_numpy().astype(np.int64)
        if len(index) == rows.num_rows:
            return rows
        return rows.take(pa.array(np.sort(index)))


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


class SnapshotAwareSink:
    def __init__(self, inner: Sink, health: LoadHealth | None = None) -> None:
        self.inner = inner
        #: Outcome of every load that passes here (CDC and snapshot), for Status/health.
        self.health = health or LoadHealth()
        #: target table → source table, to name the sink's own retries by their source.
        self._source_of: dict[str, str] = {}
        if isinstance(inner, ReportsRetries):
            inner.report_retries(self._sink_retried)
        self.name = inner.name
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._watches: dict[str, Watch] = {}

    def _lock(self, table: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(table)
            if lock is None:
                lock = self._locks[table] = threading.Lock()
            return lock

    # ------------------------------------------------------------------ Sink protocol
    def setup(self, tables: Sequence[TableSchema]) -> None:
        self._source_of.update({t.target_name: t.source_name for t in tables})
        self.inner.setup(tables)

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        with self._lock(delta.after.source_name):
            self.inner.apply_schema_delta(delta)

    def write(self, batch: TableBatch) -> LoadResult:
        with self._lock(batch.table.source_name):
            watch = self._watches.get(batch.table.source_name)
            if watch is not None:
                watch.observe(batch)
            return self._observed(batch, self.inner.write)

    def close(self) -> None:
        self.inner.close()

    def _observed(self, batch: TableBatch, load: Callable[[TableBatch], T]) -> T:
        """``load(batch)``, its outcome recorded in :attr:`health` (failures re-raised)."""
        table = batch.table.source_name
        self._source_of[batch.table.target_name] = table
        try:
            result = load(batch)
        except SinkError as exc:
            self.health.failed(table, exc.message)
            raise
        self.health.succeeded(table)
        if isinstance(result, LoadResult) and result.rejected:
            self.health.rejected(table, result.rejected)
        return result

    def _sink_retried(self, target: str, reason: str) -> None:
        self.health.failed(self._source_of.get(target, target), reason)

    # ------------------------------------------------------------------ snapshots
    def watch(self, table: TableSchema) -> Watch:
        watch = Watch(table)
        with self._lock(table.source_name):
            self._watches[table.source_name] = watch
        return watch

    def unwatch(self, table: str) -> None:
        with self._lock(table):
            self._watches.pop(table, None)

    def write_snapshot(self, batch: TableBatch, watch: Watch | None = None) -> int:
        """Write a snapshot chunk; returns the rows written (after the watch's filter)."""
        with self._lock(batch.table.source_name):
            if watch is not None:
                if watch.truncated:
                    return 0
                batch.upserts = [UpsertGroup(watch.filter(g.rows), g.partial)
                                 for g in batch.upserts]
                batch.upserts = [g for g in batch.upserts if g.rows.num_rows]
            if batch.is_empty:
                return 0
            if isinstance(self.inner, SnapshotLoader):
                self._observed(batch, self.inner.load_snapshot_chunk)
            else:
                self._observed(batch, self.inner.write)
            self.health.snapshot_loaded(batch.table.source_name, batch.num_rows)
            return batch.num_rows

    def begin_snapshot(self, table: TableSchema) -> bool:
        """Before the initial snapshot's first chunk of ``table`` (nothing streams yet): let
        the sink prepare a bulk load (DuckDB: an empty target is loaded without its key).
        True when :meth:`finish_snapshot` must follow."""
        if not isinstance(self.inner, SnapshotLoader):
            return False
        with self._lock(table.source_name):
            return self.inner.begin_snapshot(table)

    def finish_snapshot(self, table: TableSchema) -> None:
        """After the last chunk of ``table``: end the sink's bulk load (add the key)."""
        if isinstance(self.inner, SnapshotLoader):
            with self._lock(table.source_name):
                self.inner.finish_snapshot(table)

