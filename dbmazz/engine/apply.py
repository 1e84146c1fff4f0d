"""Apply one :class:`Flush` to the sink: decode → merge → write, tables in parallel.

Steps of one table run in order on one worker (invariant 2: a table's changes are applied
in commit order); different tables run on different workers. pyarrow, polars and pycurl
release the GIL, so the workers overlap for real.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa

from dbmazz.engine.audit import AuditLog
from dbmazz.errors import SetupError, SinkError, SinkReplayRequired
from dbmazz.pipeline.batch import LoadResult, SplitPart, TableBatch, TableSchema
from dbmazz.pipeline.batcher import Flush, RowsStep, SchemaStep, Step, TruncateStep, join_slabs
from dbmazz.pipeline.carry import carry_columns, carry_keys, resolve_carries
from dbmazz.pipeline.merge import merge_changes
from dbmazz.pipeline.schema_cache import SchemaCache
from dbmazz.retry import Attempts, Cancelled, RetryPolicy, Waiter
from dbmazz.sink.base import RowReader, Sink
from dbmazz.source.columnar import decode_changes
from dbmazz.source.pgoutput import Relation

log = logging.getLogger(__name__)


@dataclass
class TableStats:
    changes: int = 0
    rows_loaded: int = 0
    batches: int = 0
    truncates: int = 0
    last_load_ms: float = 0.0
    retries: int = 0


@dataclass
class ApplyStats:
    tables: dict[str, TableStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def table(self, name: str) -> TableStats:
        with self.lock:
            return self.tables.setdefault(name, TableStats())


#: Loads failing with a retryable error (the target away or overloaded) are retried until
#: they work: the slot keeps the changes meanwhile, and waiting beats failing.
LOAD_RETRY = RetryPolicy.forever(base_delay=0.4, max_delay=30.0, jitter=0.5)

#: Called with (table, in-flight decoded batch) before merge: Inspect/PeekBatch use it.
DecodedHook = Callable[[TableSchema, pa.Table], None]


class FlushApplier:
    def __init__(
        self,
        sink: Sink,
        schemas: SchemaCache,
        *,
        max_workers: int = 4,
        retry: RetryPolicy = LOAD_RETRY,
        stop_event: threading.Event | None = None,
        on_decoded: DecodedHook | None = None,
        audit: AuditLog | None = None,
        rows: RowReader | None = None,
    ) -> None:
        """``sink``: what flushes are written through; ``rows``: the target's row reader,
        when it has one (the sink itself may be a wrapper without that capability)."""
        self.sink = sink
        self.rows = rows
        #: Journal of sink acknowledgements (DBMAZZ_AUDIT_LOG), or None.
        self.audit = audit
        self.schemas = schemas
        self.stats = ApplyStats()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="dbmazz-load")
        self._retry = retry
        self._stop = stop_event or threading.Event()
        self._on_decoded = on_decoded
        self._table_for: dict[Relation, TableSchema] = {}
        self._lock = threading.Lock()

    def apply(self, flush: Flush) -> None:
        """Apply every step of ``flush``; return when all are durable, raise on failure."""
        for steps in flush.steps.values():
            self._refuse_renamed(steps, flush.split)
        futures = [
            self._pool.submit(self._apply_table, steps, flush)
            for steps in flush.steps.values()
            # Tables of a shared publication that are not replicated are passed over.
            if steps and self.schemas.accepts(steps[0].relation)
        ]
        errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _refuse_renamed(self, steps: list[Step], split: SplitPart | None) -> None:
        """Changes of a replicated table renamed out of TABLES arrive under a name that is
        passed over like any table of a shared publication: stop instead of losing them
        (before anything of this flush is written, so nothing after them is confirmed)."""
        for step in steps:
            if isinstance(step, SchemaStep) or self.schemas.accepts(step.relation):
                continue
            if isinstance(step, TruncateStep):
                committed = step.lsn
            elif step.slabs:
                committed = max((int(s.commit_lsns.max()) for s in step.slabs if len(s)),
                                default=0)
            else:
                committed = split.commit_lsn if split else 0
            old = self.schemas.renamed_from(step.relation, committed)
            if old is None:
                continue
            new, target = step.relation.qualified_name, self.schemas.table(step.relation.oid)
            raise SetupError(
                f"table {old} was renamed to {new} at the source, so its changes now arrive "
                "under a name TABLES does not list",
                f"put {new} in TABLES in place of {old} and restart (TABLE_MAP={new}:"
                f"{target.target_name} keeps the target table's name): nothing after the "
                "last loaded change was confirmed",
            )

    # ------------------------------------------------------------------ per table
    def _apply_table(self, steps: list[Step], flush: Flush) -> None:
        split = flush.split
        loads = sum(1 for s in steps if not isinstance(s, SchemaStep))
        emptied = _emptied_by_truncate(steps)
        for index, step in enumerate(steps):
            # Batches of one table in one flush can share an LSN range (rows, truncate, rows):
            # a per-step id keeps their load labels apart, the same way on every replay.
            batch_id = f"k{index}" if loads > 1 else ""
            if index < emptied and isinstance(step, RowsStep):
                # A later truncate of this flush empties these rows: loaded, a replay cut
                # otherwise brings them back (those of the truncating transaction share its
                # commit LSN, so StarRocks' sweep of a truncate found done keeps them).
                self._audit_rows(step, split)
                continue
            if isinstance(step, SchemaStep):
                self._retrying(step.delta.after.source_name,
                               partial(self.sink.apply_schema_delta, step.delta))
            elif isinstance(step, TruncateStep):
                table = self._table(step.relation)
                batch = TableBatch(table=table, truncate=True, split=split,
                                   first_lsn=step.lsn, last_lsn=step.lsn, batch_id=batch_id)
                self._retrying(table.source_name, partial(self.sink.write, batch))
                self._audit(table, [step.lsn], split)
                self.stats.table(table.source_name).truncates += 1
            else:
                self._apply_rows(step, split, batch_id)
                self._audit_rows(step, split)

    def _audit_rows(self, step: RowsStep, split: SplitPart | None) -> None:
        if self.audit is not None:
            lsns = (np.unique(np.concatenate([s.commit_lsns for s in step.slabs]))
                    if step.slabs else [split.commit_lsn] if split else [])
            self._audit(self._table(step.relation), lsns, split)

    def _apply_rows(self, step: RowsStep, split: SplitPart | None, batch_id: str) -> None:
        table = self._table(step.relation)
        if not step.slabs:
            # Only reached for the last part of a split transaction: tell the sink.
            lsn = split.commit_lsn if split else 0
            empty = TableBatch(table=table, split=split, first_lsn=lsn, last_lsn=lsn,
                               batch_id=batch_id)
            self._retrying(table.source_name, partial(self.sink.write, empty))
            return
        # One call for the whole step (slabs joined): the decoder's cost per call is fixed,
        # and its __dbmazz_seq numbers the changes of all slabs in one order.
        slab = join_slabs(step.slabs)
        decoded = decode_changes(step.relation, table.key_columns, slab.data, slab.starts,
                                 slab.commit_lsns, types=self.schemas.types)
        # The joined copy of the messages is not needed past decoding: let it go before the
        # load renders its body, rather than holding both at the flush's peak.
        del slab
        changes = pa.Table.from_batches([decoded])
        if self._on_decoded is not None:
            self._on_decoded(table, changes)
        batch = merge_changes(changes, table)
        batch.split = split
        batch.batch_id = batch_id
        if any(group.carry is not None for group in batch.upserts):
            batch = self._carry(batch)
        started = time.monotonic()
        result = self._retrying(table.source_name, lambda: self.sink.write(batch))
        assert isinstance(result, LoadResult)
        stats = self.stats.table(table.source_name)
        stats.changes += changes.num_rows
        stats.rows_loaded += result.rows
        stats.batches += 1
        stats.last_load_ms = (time.monotonic() - started) * 1000

    def _carry(self, batch: TableBatch) -> TableBatch:
        """Fill the absent columns of moved rows from the target (pipeline/carry.py)."""
        table = batch.table
        reader = self.rows
        if reader is None:
            raise SinkError(
                f"{table.source_name}: a primary-key change arrived without its unchanged "
                f"TOAST value(s) ({', '.join(carry_columns(batch))}) and the {self.sink.name} "
                "sink cannot read them back from the target",
                f"ALTER TABLE {table.source_name} REPLICA IDENTITY FULL (or "
                "REPLICA_IDENTITY=full), then resnapshot the table",
                table=table.source_name,
            )
        keys = carry_keys(batch)
        assert keys is not None
        columns = carry_columns(batch)
        current = self._retrying(
            table.source_name,
            lambda: reader.read_rows(table, keys, columns, batch.split),
        )
        assert isinstance(current, pa.Table)
        return resolve_carries(batch, current)

    def _audit(self, table: TableSchema, lsns: Iterable[int], split: SplitPart | None) -> None:
        if self.audit is not None:
            self.audit.ack(table.source_name, lsns, split)

    def _table(self, relation: Relation) -> TableSchema:
        with self._lock:
            table = self._table_for.get(relation)
            if table is None:
                table = self.schemas.build(relation)
                self._table_for[relation] = table
            return table

    def _retrying(self, table: str, action: Callable[[], object]) -> object:
        """Run a load, retrying the sink's retryable errors under the load policy (the sink
        has retried each one under its own first; the engine prefers waiting to failing)."""
        attempts = Attempts(self._retry, Waiter(self._stop))
        while True:
            attempts.start()
            try:
                return action()
            except SinkReplayRequired:
                raise  # retrying this load cannot help; the engine restarts the stream
            except SinkError as exc:
                if not exc.retryable or self._stop.is_set():
                    raise
                if not attempts.can_retry():
                    raise SinkError(f"{exc.message} (gave up after {attempts.summary()})",
                                    exc.hint, table=exc.table, label=exc.label,
                                    retryable=True) from exc
                self.stats.table(table).retries += 1
                delay = attempts.next_delay()
                log.warning("load of %s failed (%s); retry %d in %.1fs", table, exc.message,
                            attempts.count, delay)
                try:
                    attempts.backoff(delay)
                except Cancelled:
                    raise exc from None


def _emptied_by_truncate(steps: list[Step]) -> int:
    """Index of a table's last truncate among ``steps`` (0 without one): the rows of the
    steps before it are gone from the source by the end of the flush."""
    return max((i for i, s in enumerate(steps) if isinstance(s, TruncateStep)), default=0)
