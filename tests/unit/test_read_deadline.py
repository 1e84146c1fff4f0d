"""The reading loop's timing: it never waits for input past the moment a pending flush is
due, ends a backlog without waiting for the interval, and on drain closes the stream only
once every flush is confirmed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from dbmazz.source.chunk import WalChunk
from dbmazz.state.checkpoint import MemoryCheckpointStore
from dbmazz.testing import wal
from tests.scripted import ScriptedSource, eventually, scripted_engine


class RecordingSource(ScriptedSource):
    """Remembers when each of the loop's reads started, how long it could wait, and what
    it returned. Gathering reads (a byte budget, before the chunk reaches the batcher)
    are left out: the batcher's clock starts after them."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[float, float, bool]] = []

    def read_chunk(self, max_bytes: int = 0, timeout_s: float = 0.1) -> WalChunk | None:
        started = time.monotonic()
        chunk = super().read_chunk(max_bytes, timeout_s)
        if not max_bytes:
            self.reads.append((started, timeout_s, chunk is not None))
        return chunk


def test_reads_wait_no_longer_than_the_flush_deadline(tmp_path: Path) -> None:
    interval_s = 0.35  # longer than the loop's idle wait, so waits must shrink towards it
    engine, script, _ = scripted_engine(tmp_path, flush_interval_ms=int(interval_s * 1000))
    source = RecordingSource()
    script.source = source
    engine.start()
    try:
        eventually(lambda: len(source.reads) >= 2, "the loop reading")
        end = script.insert(rows=3)
        assert engine.wait_durable(end - 1, 30)
    finally:
        engine.stop()
    reads = list(source.reads)
    delivered = next(i for i, (_, _, got) in enumerate(reads) if got)
    # The batcher starts its clock after the chunk is added, i.e. before the next read.
    latest_deadline = reads[delivered + 1][0] + interval_s + 1e-3
    after = reads[delivered + 1:]
    assert after, reads
    for started, timeout_s, _ in after:
        if started > latest_deadline:
            break  # flushed by now
        assert started + timeout_s <= latest_deadline, (started, timeout_s, latest_deadline)
    # Idle reads before the transaction waited the loop's full slice: the bound above is
    # the deadline's doing, not a short wait everywhere.
    assert reads[0][1] > 0.05


def test_the_end_of_a_backlog_is_loaded_without_waiting_for_the_interval(
        tmp_path: Path) -> None:
    # A backlog of three transactions at full batches (two rows a flush): the third is
    # the partial batch left when the source runs dry. An hour's interval means only the
    # idle rule can load it.
    engine, script, _ = scripted_engine(tmp_path, flush_interval_ms=3_600_000, flush_rows=2)
    ends = [script.insert(rows=1) for _ in range(3)]
    engine.start()
    try:
        assert engine.wait_durable(ends[-1] - 1, 30)
        assert engine.progress.flushes == 2
    finally:
        engine.stop()


class GatedCheckpoints(MemoryCheckpointStore):
    """Holds the save of ``gated_from`` or later until ``proceed`` is set."""

    def __init__(self, gated_from: int) -> None:
        super().__init__()
        self.gated_from = gated_from
        self.proceed = threading.Event()

    def save(self, lsn: int) -> None:
        if lsn >= self.gated_from:
            assert self.proceed.wait(30), "never released"
        super().save(lsn)


class WatchedSource(ScriptedSource):
    """Releases the gated checkpoint when the reader sends a keepalive (it waits for the
    applier) or closes the stream (it did not wait)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release

    def keepalive(self) -> None:
        super().keepalive()
        self.release.set()

    def close(self) -> None:
        self.release.set()


def test_a_drain_confirms_a_flush_without_rows_before_it_closes_the_stream(
        tmp_path: Path) -> None:
    # A transaction holding only a logical message (a heartbeat) is a flush of no bytes;
    # the drain must still wait for it to be confirmed, or the slot stays behind the
    # checkpoint. Its checkpoint is held until the reader either waits or closes.
    engine, script, _ = scripted_engine(tmp_path, flush_interval_ms=3_600_000)
    commit_lsn = script.lsn + 32
    end_lsn = commit_lsn + 8
    checkpoints = GatedCheckpoints(end_lsn)
    engine.checkpoints = checkpoints
    source = WatchedSource(checkpoints.proceed)
    script.source = source
    source.chunks.put(WalChunk.from_messages(
        [wal.begin(commit_lsn), wal.message("dbmazz_heartbeat", b""),
         wal.commit(commit_lsn, end_lsn)],
        [script.lsn, script.lsn + 16, commit_lsn]))
    engine.start()
    eventually(lambda: engine.progress.chunks >= 1, "the transaction read")
    engine.drain()
    assert engine.wait(60)
    assert checkpoints.lsn == end_lsn
    assert source.confirmed == end_lsn
