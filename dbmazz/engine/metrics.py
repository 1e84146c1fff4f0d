"""Plain snapshots of the engine's state and metrics, shared by gRPC, Prometheus and the UI.

The service builds a :class:`StatusSnapshot` on demand from the engine's counters; a
:class:`MetricsSampler` turns successive snapshots into rates. Nothing here knows about
gRPC or Prometheus, so every exporter reports the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from dbmazz.engine.core import RunState, Stage
from dbmazz.engine.slot_health import SlotHealth
from dbmazz.snapshot.progress import SnapshotProgress
from dbmazz.source.replication import SourceChannel


@dataclass(frozen=True)
class ErrorSnapshot:
    message: str
    hint: str = ""
    kind: str = ""
    #: The engine stopped because of it (otherwise it is being retried).
    fatal: bool = True
    at: float = field(default_factory=time.time)

    @property
    def text(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


@dataclass(frozen=True)
class TableSnapshot:
    table: str
    target: str = ""
    changes: int = 0
    rows_loaded: int = 0
    batches: int = 0
    truncates: int = 0
    retries: int = 0
    last_load_ms: float = 0.0
    in_flight_rows: int = 0
    #: Rows the target rejected and the sink recorded in dbmazz_rejected (this run).
    rejected_rows: int = 0


@dataclass(frozen=True)
class StatusSnapshot:
    stage: Stage
    state: RunState
    serving: bool
    received_lsn: int = 0
    confirmed_lsn: int = 0
    server_wal_end: int = 0
    replication_lag_ms: float = 0.0
    inflight_bytes: int = 0
    messages: int = 0
    bytes_received: int = 0
    flushes: int = 0
    rows_applied: int = 0
    tables: tuple[TableSnapshot, ...] = ()
    error: ErrorSnapshot | None = None
    settings: dict[str, int] = field(default_factory=dict)
    slot: str = ""
    #: pg_replication_slots.failover / .synced at setup (None before PostgreSQL 17).
    slot_failover: bool | None = None
    slot_synced: bool | None = None
    publication: str = ""
    sink: str = ""
    version: str = ""
    started_at: float = 0.0
    #: The running (else the last) snapshot; None before any.
    snapshot: SnapshotProgress | None = None
    #: Seconds the longest-failing table's loads have been failing (0: loads succeed).
    load_failing_s: float = 0.0
    #: The replication slot's latest health sample (None before one, or without a source).
    slot_health: SlotHealth | None = None
    #: The source connection: TLS (and its version), pgoutput protocol, standby; None
    #: before a live stream was opened.
    source: SourceChannel | None = None
    taken_at: float = field(default_factory=time.time)

    @property
    def lag_bytes(self) -> int:
        """How far the slot's confirmed position trails the server's WAL end."""
        if not self.server_wal_end:
            return 0
        return max(0, self.server_wal_end - self.confirmed_lsn)

    @property
    def rows_loaded(self) -> int:
        return sum(t.rows_loaded for t in self.tables)

    @property
    def uptime_s(self) -> float:
        return max(0.0, self.taken_at - self.started_at) if self.started_at else 0.0


# --- snapshot figures every exporter shares -----------------------------------------------
def snapshot_rows_per_s(progress: SnapshotProgress) -> float:
    """Rows copied per second over the time the snapshot has been loading."""
    if progress.started_at is None or not progress.rows_copied:
        return 0.0
    end = progress.finished_at or time.time()
    return progress.rows_copied / max(end - progress.started_at, 1e-6)


def snapshot_eta_s(progress: SnapshotProgress) -> float | None:
    """Seconds left at the current rate (None: unknown; 0 once every table is done)."""
    if progress.tables and progress.tables_done == progress.tables_total:
        return 0.0
    rate = snapshot_rows_per_s(progress)
    if not rate:
        return None
    return max(progress.rows_estimate - progress.rows_copied, 0) / rate


@dataclass(frozen=True)
class SnapshotTotals:
    """A snapshot summed over its tables (the Metrics stream's snapshot fields)."""

    active: bool = False
    tables_total: int = 0
    tables_done: int = 0
    rows_copied: int = 0
    rows_estimate: int = 0
    chunks_done: int = 0
    chunks_total: int = 0
    rows_per_s: float = 0.0

    @classmethod
    def of(cls, progress: SnapshotProgress | None) -> SnapshotTotals:
        if progress is None:
            return cls()
        tables = progress.tables.values()
        return cls(
            active=progress.active,
            tables_total=progress.tables_total,
            tables_done=progress.tables_done,
            rows_copied=progress.rows_copied,
            rows_estimate=progress.rows_estimate,
            chunks_done=sum(t.chunks_done for t in tables),
            chunks_total=sum(t.chunks_total for t in tables),
            rows_per_s=snapshot_rows_per_s(progress),
        )


@dataclass(frozen=True)
class MetricsSample:
    at: float
    interval_s: float
    events_per_s: float
    rows_per_s: float
    bytes_per_s: float
    events: int
    rows_loaded: int
    batches: int
    lag_bytes: int
    replication_lag_ms: float
    inflight_bytes: int
    max_inflight_bytes: int
    rss_bytes: int
    cpu_percent: float
    stage: Stage
    state: RunState
    received_lsn: int
    confirmed_lsn: int
    snapshot: SnapshotTotals = field(default_factory=SnapshotTotals)


class MetricsSampler:
    """Rates between successive calls to :meth:`sample`; one sampler per consumer.

    The first sample has no predecessor, so its rates are averages since the engine
    started: a one-shot reader (``dbmazz top --once``) still sees meaningful numbers.
    """

    def __init__(self, status: Callable[[], StatusSnapshot],
                 process: psutil.Process | None = None) -> None:
        self._status = status
        self._process = process or psutil.Process()
        self._previous: StatusSnapshot | None = None
        self._previous_cpu: float | None = None

    def sample(self) -> MetricsSample:
        now = self._status()
        before = self._previous
        cpu_seconds = self._cpu_seconds()
        if before is None:
            interval = now.uptime_s
            base_events = base_rows = base_bytes = 0
            cpu_interval = max(1e-9, time.time() - self._process.create_time())
            cpu_used = cpu_seconds
        else:
            interval = now.taken_at - before.taken_at
            base_events, base_rows = before.messages, before.rows_loaded
            base_bytes = before.bytes_received
            cpu_interval = interval
            cpu_used = cpu_seconds - (self._previous_cpu or 0.0)
        self._previous, self._previous_cpu = now, cpu_seconds

        def rate(total: int, base: int) -> float:
            return (total - base) / interval if interval > 0 else 0.0

        return MetricsSample(
            at=now.taken_at,
            interval_s=interval,
            events_per_s=rate(now.messages, base_events),
            rows_per_s=rate(now.rows_loaded, base_rows),
            bytes_per_s=rate(now.bytes_received, base_bytes),
            events=now.messages,
            rows_loaded=now.rows_loaded,
            batches=now.flushes,
            lag_bytes=now.lag_bytes,
            replication_lag_ms=now.replication_lag_ms,
            inflight_bytes=now.inflight_bytes,
            max_inflight_bytes=now.settings.get("max_inflight_bytes", 0),
            rss_bytes=self._rss(),
            cpu_percent=100.0 * cpu_used / cpu_interval if cpu_interval > 0 else 0.0,
            stage=now.stage,
            state=now.state,
            received_lsn=now.received_lsn,
            confirmed_lsn=now.confirmed_lsn,
            snapshot=SnapshotTotals.of(now.snapshot),
        )

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _rss(self) -> int:
        return int(self._process.memory_info().rss)
