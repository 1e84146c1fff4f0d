"""Chunks → sink: the worker pool shared by the initial and the on-demand snapshots
(it reports into a :class:`~dbmazz.snapshot.progress.SnapshotProgress`).

``SNAPSHOT_WORKERS`` threads each hold one reader (one connection inside the snapshot) and
take chunks from a shared queue: read (Arrow, GIL released by the driver), cast, write
through the sink (one write per chunk; writes of one table are serialized by the
:class:`~dbmazz.snapshot.sink.SnapshotAwareSink`), record the chunk as done. Chunks
are interleaved across tables so workers tend to write different tables at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from dbmazz.contract import OP_INSERT, with_audit
from dbmazz.errors import SinkError, SourceConnectionError
from dbmazz.lsn import format_lsn
from dbmazz.pipeline.batch import TableBatch, TableSchema, UpsertGroup
from dbmazz.retry import Attempts, Cancelled, RetryPolicy, Waiter
from dbmazz.snapshot.progress import SnapshotProgress, SnapshotProgressStore
from dbmazz.snapshot.read import Chunk, ChunkReader, ReaderKind, open_reader
from dbmazz.source.types import DecodeStats, TypeRegistry

log = logging.getLogger("dbmazz.snapshot")

#: A chunk read that lost its connection is read again on a new one, briefly.
READ_RETRY = RetryPolicy(max_attempts=3, max_elapsed=None, base_delay=0.5, max_delay=2.0)
#: A chunk write the sink gave up on (after its own retries) is written again.
WRITE_RETRY = RetryPolicy(max_attempts=9, max_elapsed=None, base_delay=0.4, max_delay=30.0)


# --- one chunk's rows as a sink batch ---------------------------------------------------------
def snapshot_batch(table: TableSchema, rows: pa.Table, version: int, batch_id: str,
                   synced_at: datetime | None = None) -> TableBatch:
    """Rows of a snapshot chunk as inserts carrying ``version`` (see docs/snapshot.md)."""
    n = rows.num_rows
    synced = (synced_at or datetime.now(UTC)).replace(tzinfo=None)
    full = with_audit(rows, pa.array(np.full(n, OP_INSERT, dtype=np.int8)),
                      pa.array(np.full(n, version, dtype=np.int64)), synced)
    return TableBatch(table=table, upserts=[UpsertGroup(full, partial=False)] if n else [],
                      first_lsn=version, last_lsn=version, source_changes=n, batch_id=batch_id)


# --- the pool ---------------------------------------------------------------------------------
#: Writes one chunk's batch; returns the rows written.
ChunkWriter = Callable[[TableBatch, Chunk], int]

_POLL_S = 0.1


@dataclass
class _Loaded:
    chunk: Chunk
    batch: TableBatch
    rows: int


class ChunkLoader:
    """Readers and writers joined by a one-slot queue.

    ``workers`` reader threads each hold one connection inside the snapshot; writer threads
    (at most one per table, writes of a table are serialized anyway) load what they read.
    A reader reads its next chunk while the previous one is being written: on a small
    machine the target's insert and PostgreSQL's COPY then overlap instead of alternating.
    The queue holds one chunk, so memory stays at about (readers + writers + 1) chunks.
    """

    def __init__(
        self,
        *,
        dsn: str,
        snapshot_name: str | None,
        chunks: Sequence[Chunk],
        tables: dict[str, TableSchema],
        version: int,
        run_id: str,
        write: ChunkWriter,
        store: SnapshotProgressStore,
        progress: SnapshotProgress,
        lock: threading.Lock,
        workers: int,
        should_stop: Callable[[], bool],
        reader_kind: ReaderKind = "auto",
        registry: TypeRegistry | None = None,
        stats: DecodeStats | None = None,
        table_loaded: Callable[[str], None] | None = None,
        hold_after: int | None = None,
    ) -> None:
        """``hold_after`` (a test hook): after this many chunks are recorded as done, the
        workers take no more and :meth:`run` waits until stopped (kill -9 tests use it to
        interrupt a snapshot deterministically)."""
        self.dsn = dsn
        self.snapshot_name = snapshot_name
        self.tables = tables
        self.version = version
        self.run_id = run_id
        self.write = write
        self.store = store
        self.progress = progress
        self.lock = lock
        self.readers = max(1, min(workers, len(chunks)))
        self.writers = max(1, min(workers, len({c.table for c in chunks})))
        self.should_stop = should_stop
        self.reader_kind = reader_kind
        self.registry = registry
        self.stats = stats if stats is not None else DecodeStats()
        #: Called (in the writer) once every chunk of a table is loaded and recorded.
        self.table_loaded = table_loaded
        self._chunks: queue.Queue[Chunk] = queue.Queue()
        for chunk in _interleave(chunks):
            self._chunks.put(chunk)
        self._total = len(chunks)
        #: Every reader locks the tables of the plan first (TableRewrittenError).
        self._guarded = [tables[name] for name in dict.fromkeys(c.table for c in chunks)]
        self._loaded: queue.Queue[_Loaded | None] = queue.Queue(maxsize=1)
        self._failed = threading.Event()
        self._errors: list[BaseException] = []
        self._completed = 0
        self._hold_after = hold_after
        self._held = threading.Event()

    def run(self) -> bool:
        """Load every chunk; True when all are done, False when stopped first."""
        readers = [self._thread(self._reader, f"dbmazz-snapshot-read-{i}")
                   for i in range(self.readers)]
        writers = [self._thread(self._writer, f"dbmazz-snapshot-write-{i}")
                   for i in range(self.writers)]
        for thread in readers:
            thread.join()
        for _ in writers:
            while any(w.is_alive() for w in writers):  # a failed writer takes nothing more
                try:
                    self._loaded.put(None, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
        for thread in writers:
            thread.join()
        if self._held.is_set():
            while not self.should_stop():  # the test hook: hold until the engine stops
                time.sleep(_POLL_S)
        if self._errors:
            raise self._errors[0]
        return self._completed == self._total and not self._stopping()

    def _thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - handed to run()
                self._errors.append(exc)
                self._failed.set()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        thread.start()
        return thread

    def _stopping(self) -> bool:
        return self._failed.is_set() or self._held.is_set() or self.should_stop()

    def _put(self, item: _Loaded) -> bool:
        """Hand a chunk to the writers; False when stopping first."""
        while not self._stopping():
            try:
                self._loaded.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    # ------------------------------------------------------------------ readers
    def _reader(self) -> None:
        reader: ChunkReader | None = None
        try:
            while not self._stopping():
                try:
                    chunk = self._chunks.get_nowait()
                except queue.Empty:
                    return
                reader, loaded = self._read(chunk, reader)
                if not self._put(loaded):
                    return
        finally:
            if reader is not None:
                reader.close()

    def _read(self, chunk: Chunk, reader: ChunkReader | None
              ) -> tuple[ChunkReader, _Loaded]:
        table = self.tables[chunk.table]
        with self.lock:
            entry = self.progress.tables[chunk.table]
            if entry.started_at is None:
                entry.started_at = time.time()
        attempts = Attempts(READ_RETRY, Waiter(stopping=self._stopping))
        while True:
            attempts.start()
            try:
                if reader is None:
                    reader = open_reader(self.reader_kind, self.dsn, self.snapshot_name,
                                         self.registry, self.stats, self._guarded)
                    self.progress.reader = reader.kind
                rows = reader.read(table, chunk)
                break
            except SourceConnectionError as exc:
                if reader is not None:
                    reader.close()
                    reader = None
                if self._stopping():
                    raise
                if not attempts.can_retry():
                    raise SourceConnectionError(
                        f"snapshot read of {chunk.table} chunk {chunk.index} failed after "
                        f"{attempts.summary()}: {exc.message}", exc.hint) from exc
                log.warning("snapshot read of %s chunk %d failed (%s); retrying", chunk.table,
                            chunk.index, exc.message)
                try:
                    attempts.backoff()
                except Cancelled:
                    raise exc from None
        assert reader is not None
        batch = snapshot_batch(table, rows, self.version, f"snap-{self.run_id}-{chunk.index}")
        return reader, _Loaded(chunk, batch, rows.num_rows)

    # ------------------------------------------------------------------ writers
    def _writer(self) -> None:
        while True:
            loaded = self._loaded.get()
            if loaded is None:
                return
            if self._stopping():
                continue  # not recorded as done: read again next time
            chunk = loaded.chunk
            written = self._write(loaded.batch, chunk)
            self.store.mark_done(chunk, written)
            with self.lock:
                entry = self.progress.tables[chunk.table]
                entry.chunks_done += 1
                entry.rows_done += loaded.rows
                table_done = entry.done
                if table_done:
                    entry.finished_at = time.time()
            if table_done and self.table_loaded is not None:
                self.table_loaded(chunk.table)
                with self.lock:
                    entry.finished_at = time.time()
            with self.lock:
                self._completed += 1
                if self._hold_after is not None and self._completed >= self._hold_after:
                    log.warning("%d chunk(s) done: holding the snapshot until stopped (a "
                                "test hook)", self._hold_after)
                    self._held.set()
            log.debug("snapshot %s chunk %d: %d rows (version %s)", chunk.table, chunk.index,
                      loaded.rows, format_lsn(self.version))

    def _write(self, batch: TableBatch, chunk: Chunk) -> int:
        attempts = Attempts(WRITE_RETRY, Waiter(stopping=self._stopping))
        while True:
            attempts.start()
            try:
                return self.write(batch, chunk)
            except SinkError as exc:
                if not exc.retryable or self._stopping():
                    raise
                if not attempts.can_retry():
                    raise SinkError(
                        f"snapshot load of {chunk.table} chunk {chunk.index} gave up after "
                        f"{attempts.summary()} (each retried by the sink): {exc.message}",
                        exc.hint, table=exc.table, label=exc.label, retryable=True) from exc
                delay = attempts.next_delay()
                log.warning("snapshot load of %s failed (%s); retry %d in %.1fs",
                            chunk.table, exc.message, attempts.count, delay)
                try:
                    attempts.backoff(delay)
                except Cancelled:
                    raise exc from None  # stopping: the chunk is not recorded as done


def _interleave(chunks: Sequence[Chunk]) -> list[Chunk]:
    """Round-robin over tables (first chunks of every table first)."""
    order = {name: i for i, name in enumerate(dict.fromkeys(c.table for c in chunks))}
    return sorted(chunks, key=lambda c: (c.index, order[c.table]))
