"""The Sink protocol: what the engine needs from a target.

Calls for one table never overlap; calls for different tables may run in parallel threads.
``write`` returns only when the target has durably applied the batch (the engine confirms
LSNs to PostgreSQL on that basis) and must be idempotent: the same batch written twice
(after a crash, replay) leaves the same state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import pyarrow as pa

from dbmazz.pipeline.batch import LoadResult, SchemaDelta, SplitPart, TableBatch, TableSchema


class Sink(Protocol):
    name: str

    def setup(self, tables: Sequence[TableSchema]) -> None:
        """Make sure every target table exists with the source columns + audit columns."""

    def apply_schema_delta(self, delta: SchemaDelta) -> None:
        """Change a target table before the first batch with the new shape arrives."""

    def write(self, batch: TableBatch) -> LoadResult:
        """Apply one merged batch; raise :class:`dbmazz.errors.SinkError` on failure."""

    def close(self) -> None:
        """Release connections; pending work has been written or abandoned."""


@runtime_checkable
class StopAware(Protocol):
    """Optional: a sink that retries and polls inside ``write`` (StarRocks). The engine
    hands it its stop event; once the event is set, those waits end at once (raising
    SinkError) instead of waiting out the retry policy, so a shutdown is prompt."""

    def stop_on(self, stop: threading.Event) -> None: ...


@runtime_checkable
class ReachabilityCheck(Protocol):
    """Optional: a sink that can log in to its target without touching data, so setup fails
    on a wrong password or an unreachable target before the source is changed."""

    def check_reachable(self) -> None:
        """Raise :class:`dbmazz.errors.SetupError` naming what to fix when unreachable."""


@runtime_checkable
class SnapshotLoader(Protocol):
    """Optional: a sink with a faster path for snapshot chunks (DuckDB). Other sinks get
    ``write`` for every chunk (StarRocks' primary-key upserts are idempotent as they are).

    ``begin_snapshot(table)`` is called before the initial snapshot's first chunk of a
    table, when nothing else writes to it; True means the sink loads it in bulk mode and
    needs ``finish_snapshot(table)`` after the last chunk, before any CDC batch of it.
    ``load_snapshot_chunk`` has ``write``'s contract (durable when it returns, idempotent).
    ``setup`` must repair a target a crash left between the two.
    """

    def begin_snapshot(self, table: TableSchema) -> bool: ...

    def load_snapshot_chunk(self, batch: TableBatch) -> LoadResult: ...

    def finish_snapshot(self, table: TableSchema) -> None: ...


@runtime_checkable
class RowReader(Protocol):
    """Optional: the target's current rows of some keys. The engine needs it for primary-key
    changes whose unchanged TOAST values live in the target under the old key (REPLICA
    IDENTITY DEFAULT, :mod:`dbmazz.pipeline.carry`); without it such a change is refused.

    ``read_rows`` is called before ``write`` of the same batch, on the same table's worker
    (so it sees every earlier write). It returns, for each of ``keys`` (key columns only)
    that has a row, the key columns, ``columns``, ``dbmazz_cdc_version`` and
    ``dbmazz_is_deleted``, with the batch's Arrow types. ``split`` is the batch's part of a
    split source transaction: a sink that cannot read rows written by earlier parts must
    raise :class:`dbmazz.errors.SinkError` when asked for one of their keys.
    """

    def read_rows(self, table: TableSchema, keys: pa.Table, columns: Sequence[str],
                  split: SplitPart | None) -> pa.Table: ...


#: Called with (table, reason) after each failed attempt a sink retries by itself.
RetryListener = Callable[[str, str], None]


@runtime_checkable
class ReportsRetries(Protocol):
    """Optional: a sink that retries inside ``write`` (StarRocks) reports each failed
    attempt as it happens, so the engine's status shows a load failing while it retries."""

    def report_retries(self, listener: RetryListener) -> None: ...


@runtime_checkable
class Interruptible(Protocol):
    """Optional: a sink whose retry waits ``cancel()`` cuts short on shutdown."""

    def cancel(self) -> None: ...


@runtime_checkable
class TargetChecked(Protocol):
    """Optional: a sink that can check existing target tables without changing them
    (``SETUP=skip``): every column must take what dbmazz sends; raises
    :class:`dbmazz.errors.SetupError` naming every problem."""

    def check_target(self, tables: Sequence[TableSchema]) -> None: ...
