"""The engine: lifecycle, threads, and the one place LSNs are confirmed.

Threads:

* **reader** owns the source: reads chunks, feeds the batcher, queues flushes; stops
  reading while in-flight bytes exceed ``MAX_INFLIGHT_BYTES`` or while paused, but keeps
  sending status updates so the walsender does not time out.
* **applier** takes flushes in order and applies them (tables in parallel inside
  :class:`FlushApplier`); after a flush is durable it writes the checkpoint and only then
  confirms its end LSN to the source (invariant 1).

Stages: INIT → SETUP → SNAPSHOT → CDC; states RUNNING / PAUSED / DRAINING / STOPPED, plus
FAILED when a fatal error stopped the loop (the process stays up to report it).
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

from dbmazz import signals
from dbmazz.engine.apply import FlushApplier
from dbmazz.engine.audit import audit_from_env
from dbmazz.errors import DbmazzError, SinkError, SinkReplayRequired, SourceConnectionError
from dbmazz.lsn import format_lsn
from dbmazz.memory import tune_allocators
from dbmazz.pipeline.batch import TableSchema
from dbmazz.pipeline.batcher import Batcher, Flush
from dbmazz.pipeline.schema_cache import SchemaCache
from dbmazz.retry import Attempts, Cancelled, RetryPolicy, Waiter, is_transient
from dbmazz.sink.base import RowReader, Sink, StopAware
from dbmazz.source.chunk import WalChunk, concat_chunks
from dbmazz.source.replication import SourceChannel
from dbmazz.state.checkpoint import CheckpointStore

if TYPE_CHECKING:
    from dbmazz.snapshot.ondemand import OnDemandSnapshot
    from dbmazz.snapshot.progress import SnapshotProgress
    from dbmazz.snapshot.stage import Snapshots

log = logging.getLogger(__name__)

#: Longest wait for input between the reading loop's checks (stop, pause, limits).
_READ_WAIT_S = 0.1


class Stage(enum.StrEnum):
    INIT = "INIT"
    SETUP = "SETUP"
    SNAPSHOT = "SNAPSHOT"
    CDC = "CDC"


class RunState(enum.StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    DRAINING = "DRAINING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


#: Consecutive sink-requested resends that did not move the durable LSN before giving up.
MAX_REPLAYS_WITHOUT_PROGRESS = 10  # with backoff: about 2.5 minutes


def _reconnect_policy() -> RetryPolicy:
    return RetryPolicy.forever(base_delay=0.5, max_delay=30.0, jitter=0.0)


def _replay_policy() -> RetryPolicy:
    # The first failure plus MAX_REPLAYS_WITHOUT_PROGRESS resends.
    return RetryPolicy(max_attempts=MAX_REPLAYS_WITHOUT_PROGRESS + 1, max_elapsed=None,
                       base_delay=0.5, max_delay=30.0, jitter=0.0)


def _checkpoint_policy() -> RetryPolicy:
    # Quick retries with the stream open (a restart left the connection stale); then the
    # stream is closed and the write retried under the reconnect policy.
    return RetryPolicy(max_attempts=4, max_elapsed=5.0, base_delay=0.2, max_delay=2.0)


class _RestartStream(Exception):
    """Internal: the reader must reopen the stream at the durable LSN."""


class ChunkSource(Protocol):
    """What the engine reads from: a live replication stream or a capture file."""

    @property
    def reads_socket(self) -> bool:
        """The source gathers reads in the kernel already (no extra reads to gather)."""

    @property
    def exhausted(self) -> bool:
        """No more chunks will come (the end of a capture file; never for a live stream)."""

    @property
    def server_wal_end(self) -> int:
        """The latest WAL end the server reported (0 when the source does not say)."""

    def read_chunk(self, max_bytes: int = ..., timeout_s: float = ...) -> WalChunk | None: ...

    def confirm(self, lsn: int) -> None: ...

    def keepalive(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class DescribesChannel(Protocol):
    """A source that says how it reaches the server (TLS, protocol; for status)."""

    @property
    def channel(self) -> SourceChannel: ...


SourceFactory = Callable[[int], ChunkSource]


class HeartbeatWriter(Protocol):
    """Writes a heartbeat into the source's WAL (:class:`dbmazz.source.heartbeat.Heartbeat`)."""

    def __call__(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Settings:
    flush_rows: int = 50_000
    flush_bytes: int = 32 << 20
    flush_interval_ms: int = 1000
    max_inflight_bytes: int = 64 << 20
    load_workers: int = 4
    #: Reopening the stream after the source connection was lost (default: forever).
    reconnect: RetryPolicy = field(default_factory=_reconnect_policy)
    #: Resending from the checkpoint when the sink asks (SinkReplayRequired).
    replay: RetryPolicy = field(default_factory=_replay_policy)
    #: Writing the checkpoint before a confirmation, with the stream still open.
    checkpoint: RetryPolicy = field(default_factory=_checkpoint_policy)
    #: Seconds without a newly durable LSN before a heartbeat is written (0 = never).
    heartbeat_interval_s: float = 0.0
    #: Stop when the source is exhausted (replay) instead of waiting for more.
    stop_when_exhausted: bool = False
    #: Small chunks already waiting are joined up to this many bytes before routing.
    gather_bytes: int = 1 << 20
    #: How long one extra read for gathering may wait for data (seconds).
    gather_wait_s: float = 0.0002


@dataclass
class Progress:
    """Counters the engine keeps; read by Status/metrics/dashboard."""

    stage: Stage = Stage.INIT
    state: RunState = RunState.STARTING
    received_lsn: int = 0
    confirmed_lsn: int = 0
    chunks: int = 0
    messages: int = 0
    bytes_received: int = 0
    flushes: int = 0
    rows_applied: int = 0
    inflight_bytes: int = 0
    #: High-water mark of ``inflight_bytes`` (invariant 4 is checked against it).
    inflight_peak: int = 0
    heartbeats: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class RecentBatch:
    """A decoded (pre-merge) batch as the pipeline saw it, kept for inspection."""

    table: TableSchema
    batch: pa.Table
    captured_at: float  # unix time

    @property
    def source_name(self) -> str:
        return self.table.source_name


#: Settings ReloadConfig may change while the engine runs.
LIVE_SETTINGS = ("flush_rows", "flush_bytes", "flush_interval_ms", "max_inflight_bytes")


class Engine:
    #: Recent decoded batches kept for inspection: at most this many, and this many bytes
    #: beyond the newest one (they pin decoded memory outside MAX_INFLIGHT_BYTES).
    recent_batches_max = 16
    recent_batches_max_bytes = 4 << 20

    def __init__(
        self,
        *,
        source_factory: SourceFactory,
        sink: Sink,
        schemas: SchemaCache,
        checkpoints: CheckpointStore,
        settings: Settings | None = None,
        start_lsn: int = 0,
        writer: Sink | None = None,
        heartbeat: HeartbeatWriter | None = None,
        snapshots: Snapshots | None = None,
        slot_failover: bool | None = None,
        slot_synced: bool | None = None,
        slot_confirmed_lsn: int = 0,
    ) -> None:
        """``sink`` is the target (what ``engine.sink`` gives users); ``writer`` what the
        applier writes through (default: ``sink``; live engines: a
        :class:`~dbmazz.snapshot.sink.SnapshotAwareSink` around it).
        ``heartbeat`` writes heartbeats into the source's WAL, ``snapshots`` takes the
        initial and on-demand snapshots (live engines, see :mod:`dbmazz.engine.build`).
        ``slot_failover``/``slot_synced``: the slot's flags as setup left them (None:
        unknown or before PostgreSQL 17), for Status. ``slot_confirmed_lsn``: where the
        slot stood confirmed at start, what Status and the lag show until the first
        confirmation (0: unknown)."""
        tune_allocators()  # once per process: allocators give freed memory back
        self.settings = settings or Settings()
        self.sink = sink
        #: What the applier writes through: writes beside the engine's (repairs) go here too,
        #: so they are serialized per table with CDC and snapshot writes.
        self.writer = writer if writer is not None else sink
        self.schemas = schemas
        self.checkpoints = checkpoints
        self.progress = Progress(confirmed_lsn=max(start_lsn, slot_confirmed_lsn))
        self._source_factory = source_factory
        self._start_lsn = start_lsn
        self._stop = threading.Event()
        if isinstance(sink, StopAware):
            sink.stop_on(self._stop)  # a stop ends the sink's retry backoffs at once
        self._drain = threading.Event()
        self._paused = threading.Event()
        # Set by the applier when the sink needs the stream resent from the checkpoint;
        # cleared by the reader once it reopened the stream there.
        self._restart = threading.Event()
        self._replays = Attempts(self.settings.replay, Waiter(self._stop))
        # Set by the applier while a checkpoint cannot be written: the confirmation is held
        # and the reader keeps the stream closed (see _make_durable).
        self._holding = threading.Event()
        self._pause_ack = threading.Event()  # set by the reader once it stopped reading
        self._queue: queue.Queue[Flush | None] = queue.Queue()
        self._inflight = 0
        # Flushes queued or being applied. Counted apart from the bytes: a flush of commits
        # without rows (a heartbeat) has none, and the drain must still wait for it to be
        # confirmed before it closes the stream.
        self._inflight_flushes = 0
        self._inflight_cv = threading.Condition()
        self._durable_lsn = start_lsn
        self._durable_cv = threading.Condition()
        self._source: ChunkSource | None = None
        #: How the last opened source reaches the server (None: not a live stream yet).
        self.source_channel: SourceChannel | None = None
        self._threads: list[threading.Thread] = []
        self._failure: BaseException | None = None
        self._in_flight_batches: dict[str, pa.Table] = {}
        self._recent: deque[RecentBatch] = deque()
        self._recent_lock = threading.Lock()
        self._table_schemas: dict[str, TableSchema] = {}
        self._batcher: Batcher | None = None
        # (received LSN, monotonic time) marks of data not yet durable, oldest first: the
        # replication lag is the age of the oldest. Bounded: when full, newer marks are
        # skipped, which keeps the oldest (the one that matters) exact.
        self._lag_marks: deque[tuple[int, float]] = deque()
        self._lag_marks_max = 4096
        self._server_wal_end = 0
        #: Journal of acks and confirmations when DBMAZZ_AUDIT_LOG is set (engine.audit).
        self.audit = audit_from_env()
        self.heartbeat = heartbeat
        self.applier = FlushApplier(
            self.writer,
            schemas,
            max_workers=self.settings.load_workers,
            stop_event=self._stop,
            on_decoded=self._remember_batch,
            audit=self.audit,
            rows=sink if isinstance(sink, RowReader) else None,
        )
        self._done = threading.Event()
        self._started = False
        self.snapshots = snapshots
        self.slot_failover = slot_failover
        self.slot_synced = slot_synced

    # ------------------------------------------------------------------ control
    @property
    def started(self) -> bool:
        """:meth:`start` was called (the threads run or ran)."""
        return self._started

    def enter(self, stage: Stage, state: RunState = RunState.RUNNING) -> None:
        """Move the stage machine before :meth:`start` (the service's snapshot hook)."""
        self.progress.stage = stage
        self.progress.state = state

    def start(self) -> None:
        """Start the reader and applier threads (returns at once). With an initial
        snapshot to take, a snapshot thread takes it first and then starts them."""
        self._started = True
        snapshots = self.snapshots
        if snapshots is not None and snapshots.wants_initial:
            self.enter(Stage.SNAPSHOT)
            thread = threading.Thread(target=self._guard(self._snapshot_then_stream),
                                      name="dbmazz-snapshot", daemon=True)
            thread.start()
            self._threads.append(thread)
            return
        self._start_stream()
        if snapshots is not None:
            snapshots.resume_on_demand(self, lambda: self._stop.is_set())

    def _snapshot_then_stream(self) -> None:
        snapshots = self.snapshots
        assert snapshots is not None
        stopping = lambda: self._stop.is_set() or self._drain.is_set()  # noqa: E731
        complete = snapshots.run_initial(stopping)
        if not complete or stopping() or snapshots.stop_after_initial:
            # Streaming never started: nothing is in flight, the slot stays where it is.
            if self.progress.state != RunState.FAILED:
                self.progress.state = RunState.STOPPED
            self._stop.set()
            self._set_done()
            return
        self._start_stream()
        snapshots.resume_on_demand(self, lambda: self._stop.is_set())

    def _start_stream(self) -> None:
        self.enter(Stage.CDC)
        threads = [("dbmazz-reader", self._reader), ("dbmazz-applier", self._applier)]
        if self.heartbeat is not None and self.settings.heartbeat_interval_s > 0:
            threads.append(("dbmazz-heartbeat", self._heartbeats))
        for name, target in threads:
            thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self) -> None:
        """Start and block until stopped; re-raise the fatal error if the loop failed."""
        self.start()
        self.wait()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until both threads ended (True) or ``timeout`` passed (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            # In slices: a signal handler of the waiting (main) thread must run meanwhile.
            if not signals.join(thread, remaining):
                return False
        if self._failure is not None:
            raise self._failure
        return True

    def pause(self) -> None:
        if self.progress.state == RunState.RUNNING:
            self._pause_ack.clear()
            self._paused.set()
            self.progress.state = RunState.PAUSED

    def wait_paused(self, timeout: float | None = None) -> bool:
        """Block until the reader has stopped reading after :meth:`pause` (a read that was
        in progress completes first); False on timeout or when not paused."""
        return self._paused.is_set() and self._pause_ack.wait(timeout)

    def resume(self) -> None:
        if self.progress.state == RunState.PAUSED:
            self._paused.clear()
            self.progress.state = RunState.RUNNING

    def drain(self) -> None:
        """Stop reading, load everything committed that is in flight, checkpoint, stop."""
        if self.progress.state not in (RunState.STOPPED, RunState.FAILED):
            self.progress.state = RunState.DRAINING
        self._paused.clear()
        self._drain.set()

    def stop(self) -> None:
        """Stop without loading queued flushes (they are re-read from the slot next time)."""
        self._stop.set()
        self._queue.put(None)
        with self._inflight_cv:
            self._inflight_cv.notify_all()

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    def wait_durable(self, lsn: int, timeout: float | None = None) -> bool:
        """Block until every change committed before ``lsn`` is loaded (True), the engine
        stopped, or ``timeout`` passed (False)."""
        with self._durable_cv:
            return self._durable_cv.wait_for(
                lambda: self._durable_lsn > lsn or self._done.is_set(), timeout
            ) and self._durable_lsn > lsn

    def request_snapshot(self, tables: list[str]) -> OnDemandSnapshot:
        """Snapshot ``tables`` ('schema.table') while CDC keeps running: they join the
        publication and are replicated from then on. Returns at once; the handle's
        ``wait()``, ``completed``, ``error`` and ``progress`` tell how it goes."""
        snapshots = self.snapshots
        if snapshots is None:
            raise DbmazzError("on-demand snapshots need a live PostgreSQL source",
                              "run the engine with `dbmazz run`")
        return snapshots.request(tables, self, lambda: self._stop.is_set())

    @property
    def snapshot_progress(self) -> SnapshotProgress | None:
        """The running (else the last) snapshot's progress: per table pages, row estimate,
        chunks and rows done, rate, ETA. A copy, safe to read from any thread."""
        return self.snapshots.progress if self.snapshots is not None else None

    def in_flight_batch(self, table: str) -> pa.Table | None:
        """The last decoded (pre-merge) batch of ``table`` ('schema.table')."""
        return self._in_flight_batches.get(table)

    def batches(self) -> list[RecentBatch]:
        """Recently decoded (pre-merge) batches, oldest first (a bounded ring buffer)."""
        with self._recent_lock:
            return list(self._recent)

    def table_schema(self, table: str) -> TableSchema | None:
        """The schema of a source table ('schema.table') as the pipeline knows it."""
        return self.table_schemas().get(table)

    def table_schemas(self) -> dict[str, TableSchema]:
        known = {t.source_name: t for t in self.schemas.tables()}
        known.update(self._table_schemas)
        return known

    def apply_settings(self, **changes: int) -> list[str]:
        """Change flush settings of the running pipeline (ReloadConfig); return what changed.

        The batcher reads its limits on every chunk and poll, and the reader compares
        in-flight bytes with ``settings.max_inflight_bytes`` each time, so updating the
        attributes takes effect on the next chunk.
        """
        changed = []
        for name, value in changes.items():
            if name not in LIVE_SETTINGS:
                raise ValueError(f"{name} cannot be changed while running")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            if getattr(self.settings, name) != value:
                setattr(self.settings, name, value)
                changed.append(name)
        batcher = self._batcher
        if batcher is not None:
            batcher.flush_rows = self.settings.flush_rows
            batcher.flush_bytes = self.settings.flush_bytes
            batcher.flush_interval_ms = self.settings.flush_interval_ms
        if changed:
            with self._inflight_cv:
                self._inflight_cv.notify_all()  # a raised limit may unblock the reader
        return changed

    @property
    def server_wal_end(self) -> int:
        """The latest WAL end the server reported (0 when the source does not say)."""
        source = self._source
        if source is not None:
            self._server_wal_end = max(self._server_wal_end, source.server_wal_end)
        return self._server_wal_end

    @property
    def replication_lag_ms(self) -> float:
        """Age of the oldest received change that is not durable yet (0 when caught up)."""
        marks = self._lag_marks
        try:
            lsn, since = marks[0]
            if lsn <= self._durable_lsn:
                # A chunk ending in a Commit is marked at the commit's end LSN, which is
                # exactly the LSN made durable; the confirmation keeps marks >= it, so the
                # first mark can be one that is loaded already (and only the first).
                _, since = marks[1]
        except IndexError:
            return 0.0
        return max(0.0, (time.monotonic() - since) * 1000)

    # ------------------------------------------------------------------ threads
    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - reported through status/wait()
                self._fail(exc)

        return run

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
            message = exc.args[0] if isinstance(exc, DbmazzError) else repr(exc)
            self.progress.state = RunState.FAILED  # first: _recovered keeps a fatal error
            self.progress.last_error = str(exc) if isinstance(exc, DbmazzError) else message
            log.error("stopped by a fatal error: %s", self.progress.last_error,
                      exc_info=not isinstance(exc, DbmazzError))
        self.stop()
        self._set_done()

    def _recovered(self, reconnects: Attempts | None = None) -> None:
        """A stream opened or a flush became durable: a retried problem is over (Status
        stops showing it); a fatal one stays."""
        if reconnects is not None:
            reconnects.reset()
        if self.progress.state != RunState.FAILED:
            self.progress.last_error = None

    def _set_done(self) -> None:
        with self._durable_cv:
            self._done.set()
            self._durable_cv.notify_all()

    def _reader(self) -> None:
        reconnects = Attempts(self.settings.reconnect, Waiter(self._stop))
        while not self._stop.is_set():
            try:
                self._read_session(opened=lambda: self._recovered(reconnects))
                return
            except _RestartStream:
                # Queued flushes are discarded by the applier; wait until none is left so
                # the new session starts from a settled durable LSN.
                self._wait_for_empty_queue()
                # Back off like a reconnect: what made the target drop the transaction
                # (too many versions, overload) needs time to clear.
                delay = self._replays.next_delay()
                log.info("restarting the stream at the checkpoint in %.1fs, as the sink asked",
                         delay)
                if self._stop.wait(delay):
                    return
                self._restart.clear()
                continue
            except SourceConnectionError as exc:
                if self._stop.is_set():
                    return
                self.progress.last_error = str(exc)
                reconnects.start()
                if not reconnects.can_retry():
                    raise SourceConnectionError(
                        f"{exc.message} (gave up reconnecting after {reconnects.summary()})",
                        exc.hint) from exc
                delay = reconnects.next_delay()
                log.warning("source connection lost (%s); reconnecting in %.1fs", exc.message,
                            delay)
                # Everything queued is whole transactions: let it load, then restart the
                # stream from the durable LSN with a fresh batcher.
                self._wait_for_empty_queue()
                try:
                    reconnects.backoff(delay)
                except Cancelled:
                    return

    def _read_session(self, opened: Callable[[], None]) -> None:
        self._check_holding()
        source = self._source_factory(self._durable_lsn)
        opened()
        self._source = source
        if isinstance(source, DescribesChannel):
            self.source_channel = source.channel
        batcher = Batcher(
            self.schemas,
            flush_rows=self.settings.flush_rows,
            flush_bytes=self.settings.flush_bytes,
            flush_interval_ms=self.settings.flush_interval_ms,
        )
        self._batcher = batcher
        try:
            while not self._stop.is_set():
                if self._restart.is_set():
                    raise _RestartStream()
                self._check_holding()
                if self._drain.is_set():
                    for flush in batcher.drain():
                        self._enqueue(flush)
                    # Keep the stream open until the applier confirmed the last flush, so
                    # the final status update carries it to the slot.
                    with self._inflight_cv:
                        while self._inflight_flushes > 0 and not self._stop.is_set():
                            self._inflight_cv.wait(0.1)
                            self._check_holding()
                            source.keepalive()
                    self._queue.put(None)
                    return
                if self._paused.is_set() or self._over_limit():
                    if self._paused.is_set():
                        self._pause_ack.set()
                    source.keepalive()
                    with self._inflight_cv:
                        self._inflight_cv.wait(0.1)
                    continue
                # Wait for input no longer than until the pending flush is due: a flush
                # noticed only when the next read returns would be late by up to a read's
                # wait (the socket reader's low-water slice, or 100 ms while idle).
                due = batcher.due_in()
                wait = _READ_WAIT_S if due is None else min(_READ_WAIT_S, due)
                chunk = source.read_chunk(timeout_s=wait)
                if chunk is not None:
                    chunk = self._gather(source, chunk)
                    self.progress.chunks += 1
                    self.progress.messages += len(chunk)
                    self.progress.bytes_received += chunk.nbytes
                    if len(chunk):
                        self.progress.received_lsn = max(self.progress.received_lsn,
                                                         int(chunk.lsns.max()))
                        self._note_received(int(chunk.lsns.max()))
                    for flush in batcher.add(chunk):
                        self._enqueue(flush)
                elif source.exhausted and self.settings.stop_when_exhausted:
                    self.drain()
                    continue
                for flush in batcher.poll(idle=chunk is None):
                    self._enqueue(flush)
        finally:
            self._batcher = None
            self._source = None
            _ = self.server_wal_end  # keep the last position the source reported
            source.close()
            self.schemas.close()

    def _check_holding(self) -> None:
        if self._holding.is_set():
            raise SourceConnectionError(
                "the checkpoint cannot be written, so the confirmation is held: the stream "
                "stays closed until it is written",
                "check that PostgreSQL is up and accepts connections; dbmazz retries")

    def _gather(self, source: ChunkSource, chunk: WalChunk) -> WalChunk:
        """Join the chunks already waiting, up to ``gather_bytes``, into one.

        A live stream hands out one socket read (a few KB) per chunk, and the batcher's
        cost is mostly per chunk: routing 1 MB at once instead of 300 small reads cuts the
        reader thread's CPU several times. Only data that is there now is gathered (each
        extra read waits at most ``gather_wait_s``), so latency does not grow.
        """
        limit = self.settings.gather_bytes
        if chunk.nbytes >= limit or source.reads_socket:
            # A socket reader gathers in the kernel already (a low-water mark): asking it
            # again at once would only split off a few more kilobytes per call.
            return chunk
        parts, size = [chunk], chunk.nbytes
        while size < limit and not self._stop.is_set():
            more = source.read_chunk(max_bytes=limit - size, timeout_s=self.settings.gather_wait_s)
            if more is None:
                break
            parts.append(more)
            size += more.nbytes
        return parts[0] if len(parts) == 1 else concat_chunks(parts)

    def _enqueue(self, flush: Flush) -> None:
        with self._inflight_cv:
            self._inflight += flush.nbytes
            self._inflight_flushes += 1
            self.progress.inflight_bytes = self._inflight
            self.progress.inflight_peak = max(self.progress.inflight_peak, self._inflight)
        self._queue.put(flush)

    def _over_limit(self) -> bool:
        return self._inflight >= self.settings.max_inflight_bytes

    def _wait_for_empty_queue(self) -> None:
        with self._inflight_cv:
            while self._inflight_flushes > 0 and not self._stop.is_set():
                self._inflight_cv.wait(0.1)

    def _applier(self) -> None:
        try:
            while True:
                flush = self._queue.get()
                if flush is None:
                    if self._stop.is_set() or self._drain.is_set():
                        break
                    continue
                if self._stop.is_set():
                    break
                if self._restart.is_set():
                    self._settle(flush)
                    continue
                try:
                    self.applier.apply(flush)
                except SinkReplayRequired as exc:
                    self._replays.start()
                    if not self._replays.can_retry():
                        raise SinkError(
                            f"{exc.message} (resending from the checkpoint did not help "
                            f"{self._replays.count - 1} times in a row, "
                            f"{self._replays.summary()})",
                            exc.hint or "check the target's logs for aborted transactions",
                            table=exc.table,
                        ) from exc
                    log.warning("%s; resending from the checkpoint", exc.message)
                    self.progress.last_error = str(exc)
                    self._restart.set()
                    self._settle(flush)
                    continue
                except DbmazzError:
                    if self._stop.is_set():
                        break  # stopped while the load was retried: resent next time
                    raise
                self.progress.flushes += 1
                self.progress.rows_applied += flush.rows
                if flush.end_lsn > self._durable_lsn:
                    self._make_durable(flush.end_lsn)
                self._settle(flush)
        finally:
            self.applier.close()
            if self.progress.state != RunState.FAILED:
                self.progress.state = RunState.STOPPED
            self._stop.set()
            self._set_done()

    def _settle(self, flush: Flush) -> None:
        """``flush`` left the pipeline (applied, or discarded to be read again): it no
        longer counts as in flight."""
        with self._inflight_cv:
            self._inflight -= flush.nbytes
            self._inflight_flushes -= 1
            self.progress.inflight_bytes = self._inflight
            self._inflight_cv.notify_all()

    def _make_durable(self, lsn: int) -> None:
        """The sink holds every change up to ``lsn``: checkpoint it, then confirm it.

        The one writer of one invariant: PostgreSQL is never told an LSN the checkpoint
        table does not hold. A failed write is retried (reconnecting) before confirming;
        while it keeps failing the confirmation is held and the stream closed, because a
        fast shutdown waits for the walsender, which waits for this confirmation. A stop
        ends the hold unconfirmed: the slot stays behind, which only means a resend.
        """
        if self.audit is not None:
            self.audit.confirm(lsn)
        if not self._checkpoint(lsn):
            return
        with self._durable_cv:
            self._durable_lsn = lsn
            self._durable_cv.notify_all()
        self._replays.reset()
        self._recovered()
        marks = self._lag_marks
        while marks and marks[0][0] < lsn:
            marks.popleft()
        self.progress.confirmed_lsn = lsn
        source = self._source
        if source is not None:
            source.confirm(lsn)

    def _checkpoint(self, lsn: int) -> bool:
        """Write the checkpoint, retrying transient failures; False when stopped first."""
        waiter = Waiter(self._stop)
        attempts = Attempts(self.settings.checkpoint, waiter)
        try:
            while True:
                attempts.start()
                try:
                    self.checkpoints.save(lsn)
                    return True
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self.progress.last_error = str(exc)
                    if attempts.can_retry():
                        attempts.backoff()
                        continue
                    if self._holding.is_set():  # the reconnect policy gave up as well
                        raise SourceConnectionError(
                            f"the checkpoint could not be written ({attempts.summary()} with "
                            f"the stream closed): {exc}",
                            "check that PostgreSQL is up and accepts connections") from exc
                    log.warning("the checkpoint of %s could not be written after %s (%s); "
                                "holding its confirmation and closing the stream until it "
                                "can be", format_lsn(lsn), attempts.summary(), exc)
                    self._holding.set()
                    attempts = Attempts(self.settings.reconnect, waiter)
                    attempts.start()
                    attempts.backoff()
        except Cancelled:
            log.warning("stopped while the checkpoint of %s could not be written: it is not "
                        "confirmed (the slot stays behind; its changes are resent)",
                        format_lsn(lsn))
            return False
        finally:
            self._holding.clear()

    def _heartbeats(self) -> None:
        """Write a heartbeat into the source WAL whenever nothing became durable for
        ``heartbeat_interval_s``: its (message-only) transaction flows through the stream
        and is confirmed, so the slot advances while the published tables are idle."""
        beat = self.heartbeat
        assert beat is not None
        interval = self.settings.heartbeat_interval_s
        last, since = self._durable_lsn, time.monotonic()
        try:
            while not self._stop.wait(min(interval, 1.0)) and not self._drain.is_set():
                now = time.monotonic()
                if self._durable_lsn != last:
                    last, since = self._durable_lsn, now
                    continue
                if now - since < interval or self._paused.is_set():
                    continue
                since = now
                try:
                    beat()
                    self.progress.heartbeats += 1
                except DbmazzError as exc:  # the reader reports and handles outages
                    log.warning("heartbeat failed: %s", exc.message)
        finally:
            beat.close()

    def _remember_batch(self, table: TableSchema, batch: pa.Table) -> None:
        self._in_flight_batches[table.source_name] = batch
        self._table_schemas[table.source_name] = table
        with self._recent_lock:
            recent = self._recent
            recent.append(RecentBatch(table, batch, time.time()))
            total = sum(r.batch.nbytes for r in recent)
            while len(recent) > 1 and (len(recent) > self.recent_batches_max
                                       or total > self.recent_batches_max_bytes):
                total -= recent.popleft().batch.nbytes

    def _note_received(self, lsn: int) -> None:
        marks = self._lag_marks
        if len(marks) < self._lag_marks_max and (not marks or marks[-1][0] < lsn):
            marks.append((lsn, time.monotonic()))
