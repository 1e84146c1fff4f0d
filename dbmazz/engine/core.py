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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

from dbmazz.errors import DbmazzError, SourceConnectionError
from dbmazz.pipeline.batch import TableSchema
from dbmazz.pipeline.batcher import Batcher, Flush
from dbmazz.pipeline.schema_cache import SchemaCache
from dbmazz.engine.apply import FlushApplier
from dbmazz.sink.base import Sink
from dbmazz.source.chunk import WalChunk
from dbmazz.state.checkpoint import CheckpointStore

log = logging.getLogger(__name__)


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


class ChunkSource(Protocol):
    """What the engine reads from: a live replication stream or a capture file."""

    def read_chunk(self, max_bytes: int = ..., timeout_s: float = ...) -> WalChunk | None: ...

    def confirm(self, lsn: int) -> None: ...

    def keepalive(self) -> None: ...

    def close(self) -> None: ...


SourceFactory = Callable[[int], ChunkSource]


@dataclass
class Settings:
    flush_rows: int = 100_000
    flush_bytes: int = 32 << 20
    flush_interval_ms: int = 1000
    max_inflight_bytes: int = 128 << 20
    load_workers: int = 4
    reconnect_max_backoff_s: float = 30.0
    #: Stop when the source is exhausted (replay) instead of waiting for more.
    stop_when_exhausted: bool = False


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
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class Engine:
    def __init__(
        self,
        *,
        source_factory: SourceFactory,
        sink: Sink,
        schemas: SchemaCache,
        checkpoints: CheckpointStore,
        settings: Settings | None = None,
        start_lsn: int = 0,
    ) -> None:
        self.settings = settings or Settings()
        self.sink = sink
        self.schemas = schemas
        self.checkpoints = checkpoints
        self.progress = Progress()
        self._source_factory = source_factory
        self._start_lsn = start_lsn
        self._stop = threading.Event()
        self._drain = threading.Event()
        self._paused = threading.Event()
        self._queue: queue.Queue[Flush | None] = queue.Queue()
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self._durable_lsn = start_lsn
        self._durable_cv = threading.Condition()
        self._source: ChunkSource | None = None
        self._threads: list[threading.Thread] = []
        self._failure: BaseException | None = None
        self._in_flight_batches: dict[str, pa.Table] = {}
        self.applier = FlushApplier(
            sink,
            schemas,
            max_workers=self.settings.load_workers,
            stop_event=self._stop,
            on_decoded=self._remember_batch,
        )
        self._done = threading.Event()

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        """Start the reader and applier threads (returns at once)."""
        self.progress.stage = Stage.CDC
        self.progress.state = RunState.RUNNING
        for name, target in (("dbmazz-reader", self._reader), ("dbmazz-applier", self._applier)):
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
            thread.join(remaining)
            if thread.is_alive():
                return False
        if self._failure is not None:
            raise self._failure
        return True

    def pause(self) -> None:
        if self.progress.state == RunState.RUNNING:
            self._paused.set()
            self.progress.state = RunState.PAUSED

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

    def in_flight_batch(self, table: str) -> pa.Table | None:
        """The last decoded (pre-merge) batch of ``table`` ('schema.table')."""
        return self._in_flight_batches.get(table)

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
            self.progress.last_error = str(exc) if isinstance(exc, DbmazzError) else message
            self.progress.state = RunState.FAILED
            log.error("stopped by a fatal error: %s", self.progress.last_error,
                      exc_info=not isinstance(exc, DbmazzError))
        self.stop()
        self._set_done()

    def _set_done(self) -> None:
        with self._durable_cv:
            self._done.set()
            self._durable_cv.notify_all()

    def _reader(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._read_session()
                return
            except SourceConnectionError as exc:
                if self._stop.is_set():
                    return
                self.progress.last_error = str(exc)
                log.warning("source connection lost (%s); reconnecting in %.1fs", exc.message,
                            backoff)
                # Everything queued is whole transactions: let it load, then restart the
                # stream from the durable LSN with a fresh batcher.
                self._wait_for_empty_queue()
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, self.settings.reconnect_max_backoff_s)

    def _read_session(self) -> None:
        source = self._source_factory(self._durable_lsn)
        self._source = source
        batcher = Batcher(
            self.schemas,
            flush_rows=self.settings.flush_rows,
            flush_bytes=self.settings.flush_bytes,
            flush_interval_ms=self.settings.flush_interval_ms,
        )
        try:
            while not self._stop.is_set():
                if self._drain.is_set():
                    for flush in batcher.drain():
                        self._enqueue(flush)
                    # Keep the stream open until the applier confirmed the last flush, so
                    # the final status update carries it to the slot.
                    with self._inflight_cv:
                        while self._inflight > 0 and not self._stop.is_set():
                            self._inflight_cv.wait(0.1)
                            source.keepalive()
                    self._queue.put(None)
                    return
                if self._paused.is_set() or self._over_limit():
                    source.keepalive()
                    with self._inflight_cv:
                        self._inflight_cv.wait(0.1)
                    continue
                chunk = source.read_chunk(timeout_s=0.1)
                if chunk is not None:
                    self.progress.chunks += 1
                    self.progress.messages += len(chunk)
                    self.progress.bytes_received += chunk.nbytes
                    if len(chunk):
                        self.progress.received_lsn = max(self.progress.received_lsn,
                                                         int(chunk.lsns.max()))
                    for flush in batcher.add(chunk):
                        self._enqueue(flush)
                elif getattr(source, "exhausted", False) and self.settings.stop_when_exhausted:
                    self.drain()
                    continue
                for flush in batcher.poll():
                    self._enqueue(flush)
        finally:
            self._source = None
            source.close()

    def _enqueue(self, flush: Flush) -> None:
        with self._inflight_cv:
            self._inflight += flush.nbytes
            self.progress.inflight_bytes = self._inflight
        self._queue.put(flush)

    def _over_limit(self) -> bool:
        return self._inflight >= self.settings.max_inflight_bytes

    def _wait_for_empty_queue(self) -> None:
        with self._inflight_cv:
            while self._inflight > 0 and not self._stop.is_set():
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
                self.applier.apply(flush)
                self.progress.flushes += 1
                self.progress.rows_applied += flush.rows
                if flush.end_lsn > self._durable_lsn:
                    self._make_durable(flush.end_lsn)
                with self._inflight_cv:
                    self._inflight -= flush.nbytes
                    self.progress.inflight_bytes = self._inflight
                    self._inflight_cv.notify_all()
        finally:
            self.applier.close()
            if self.progress.state != RunState.FAILED:
                self.progress.state = RunState.STOPPED
            self._stop.set()
            self._set_done()

    def _make_durable(self, lsn: int) -> None:
        """The sink holds every change up to ``lsn``: checkpoint it, then confirm it."""
        self.checkpoints.save(lsn)
        with self._durable_cv:
            self._durable_lsn = lsn
            self._durable_cv.notify_all()
        self.progress.confirmed_lsn = lsn
        source = self._source
        if source is not None:
            source.confirm(lsn)

    def _remember_batch(self, table: TableSchema, batch: pa.Table) -> None:
        self._in_flight_batches[table.source_name] = batch
