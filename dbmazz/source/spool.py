"""Streamed transactions (protocol 2): their messages held until Stream Commit, in memory
up to a limit and then in a temporary file, and delivered as one ordinary ``B … C`` run.

:class:`StreamedTransactions` follows the stream control messages (Stream
Start/Stop/Commit/Abort) a reader meets, sends what lies inside a stream block to its
transaction's :class:`Spool`, and queues the deliveries in arrival order.
"""

from __future__ import annotations

import tempfile
from collections import deque
from collections.abc import Generator, Iterator
from typing import IO

import numpy as np

from dbmazz.errors import ProtocolError
from dbmazz.source.chunk import WalChunk, concat_chunks
from dbmazz.source.frames import XLOG_HEADER, xlog_chunk
from dbmazz.source.protocol import (
    STREAM_ABORT,
    STREAM_COMMIT,
    STREAM_CONTROL,
    STREAM_START,
    STREAM_STOP,
    StreamStats,
    run_of,
    stream_abort,
    stream_commit,
    stream_start_xid,
)

_ORIGIN = ord("O")


def strip_streamed(chunk: WalChunk, top_xid: int, aborted: set[int]) -> WalChunk:
    """Remove the in-stream xid after each type byte and drop aborted subtransactions.

    Vectorized over the chunk, and the bytes are copied once, whole: in the copy each type
    byte is written over the last byte of its xid and the message starts there (``ends``
    skips the rest of the xid), 0.03 µs a message where a byte mask over every message byte
    cost 0.20. Relation/Type messages of an aborted subtransaction are dropped too, as
    PostgreSQL's own subscriber does: pgoutput re-sends every schema after a stream abort,
    so later changes never depend on them.
    """
    data, starts, ends = chunk.data.copy(), chunk.starts, chunk.message_ends
    has_xid = data[starts] != _ORIGIN  # Origin is the only in-stream message without an xid
    pos = np.minimum(starts[:, None] + np.arange(1, 5), max(len(data) - 1, 0))
    xb = data[pos].astype(np.uint32)
    xids = (xb[:, 0] << 24) | (xb[:, 1] << 16) | (xb[:, 2] << 8) | xb[:, 3]
    xids = np.where(has_xid, xids, np.uint32(top_xid))
    with_xid = starts[has_xid]
    data[with_xid + 4] = data[with_xid]
    starts = starts + 4 * has_xid
    lsns = chunk.lsns
    if aborted:
        keep = ~np.isin(xids, np.fromiter(aborted, dtype=np.uint32))
        starts, ends, lsns = starts[keep], ends[keep], lsns[keep]
    offsets = np.append(starts, ends[-1] if len(ends) else 0).astype(np.int64, copy=False)
    return WalChunk(data=data, offsets=offsets, lsns=lsns,
                    ends=ends.astype(np.int64, copy=False))


class Spool:
    """One streamed (protocol 2) transaction's raw messages, held until Stream Commit.

    Segments of about ``SEGMENT_BYTES`` stay in memory up to ``memory_limit`` bytes, then
    go to an anonymous temporary file, so a streamed transaction of any size costs bounded
    memory (invariant 4).
    """

    SEGMENT_BYTES = 8 << 20
    MIN_SEGMENT_BYTES = 64 << 10

    def __init__(self, xid: int, memory_limit: int, spool_dir: str | None) -> None:
        self.xid = xid
        self.aborted: set[int] = set()
        self.memory_limit = memory_limit
        # Several segments fit in the memory limit, so spilling starts well before it.
        self.segment_bytes = max(
            self.MIN_SEGMENT_BYTES, min(self.SEGMENT_BYTES, memory_limit // 8)
        )
        self.spool_dir = spool_dir
        self.memory = 0
        self.spilled = 0
        self.segments: list[WalChunk | tuple[int, int, int]] = []
        self.file: IO[bytes] | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.offsets: list[int] = []
        self.headers = bytearray()

    def append(self, frame: memoryview) -> None:
        self.offsets.append(len(self.buf))
        self.headers += frame[1:9]
        self.buf += frame[XLOG_HEADER:]
        if len(self.buf) >= self.segment_bytes:
            self.seal()

    def append_run(self, run: WalChunk) -> None:
        """A run of in-stream messages read together (socket reader): one segment."""
        self.seal()
        self._store(run.compact(), in_memory=False)

    def seal(self, *, in_memory: bool = False) -> None:
        if not self.offsets:
            return
        chunk = xlog_chunk(self.buf, self.offsets, self.headers)
        self._reset()
        self._store(chunk, in_memory=in_memory)

    def _store(self, chunk: WalChunk, *, in_memory: bool) -> None:
        if in_memory or self.memory + chunk.nbytes <= self.memory_limit:
            self.memory += chunk.nbytes
            self.segments.append(chunk)
            return
        if self.file is None:
            # Closed in discard(); lives as long as the transaction it spools.
            self.file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="dbmazz-spool-", dir=self.spool_dir
            )
        position = self.file.seek(0, 2)
        # The arrays' own buffers (no bytes copy of each on the way to the file).
        self.file.write(np.ascontiguousarray(chunk.offsets, dtype=np.int64).data)
        self.file.write(np.ascontiguousarray(chunk.lsns, dtype=np.uint64).data)
        self.file.write(np.ascontiguousarray(chunk.data).data)
        self.spilled += chunk.nbytes
        self.segments.append((position, len(chunk), len(chunk.data)))

    def _load(self, segment: WalChunk | tuple[int, int, int]) -> WalChunk:
        if isinstance(segment, WalChunk):
            return segment
        assert self.file is not None
        position, n, nbytes = segment
        self.file.seek(position)
        offsets = np.frombuffer(self.file.read(8 * (n + 1)), dtype=np.int64)
        lsns = np.frombuffer(self.file.read(8 * n), dtype=np.uint64)
        data = np.frombuffer(self.file.read(nbytes), dtype=np.uint8)
        return WalChunk(data=data, offsets=offsets, lsns=lsns)

    def deliver(self, begin: WalChunk, commit: WalChunk) -> Iterator[WalChunk]:
        """The committed transaction as ``B … C`` chunks of about a segment each, loaded
        lazily (a spilled transaction is never all in memory at once)."""
        self.seal(in_memory=True)  # the tail is needed right away: no round trip to disk
        try:
            pending = [begin]
            size = 0
            # Each segment is let go of once taken, so a delivered part is not held twice
            # (by the spool and by the pipeline) until the whole transaction is through.
            segments, self.segments = self.segments, []
            segments.reverse()
            while segments:
                piece = strip_streamed(self._load(segments.pop()), self.xid, self.aborted)
                if size and size + len(piece.data) > self.segment_bytes:
                    yield concat_chunks(pending)
                    pending, size = [], 0
                pending.append(piece)
                size += len(piece.data)
            pending.append(commit)
            yield concat_chunks(pending)
        finally:
            self.discard()

    def discard(self) -> None:
        self.segments.clear()
        if self.file is not None:
            self.file.close()
            self.file = None


class StreamedTransactions:
    """The streamed transactions of one replication session and the chunks due before
    the reader reads more (``deliveries``: a committed streamed transaction, lazily, and
    with the socket reader the ordinary runs around stream blocks).

    Only the reading thread uses it. ``deliveries`` is public so a reader's loop tests it
    without a call per message.
    """

    def __init__(self, *, target: str, stats: StreamStats, proto_version: int, parallel: bool,
                 memory_bytes: int, spool_dir: str | None) -> None:
        self.target = target
        self.stats = stats
        self.proto_version = proto_version
        self.parallel = parallel
        self._memory = memory_bytes
        self._dir = spool_dir
        self.deliveries: deque[Iterator[WalChunk]] = deque()
        self._spools: dict[int, Spool] = {}
        self._in_stream: Spool | None = None

    def next_pending(self) -> WalChunk | None:
        """The next chunk due, or None when nothing is queued."""
        while self.deliveries:
            chunk = next(self.deliveries[0], None)
            if chunk is not None:
                return chunk
            self.deliveries.popleft()
        return None

    def route(self, frame: memoryview) -> bool:
        """Take a stream control message or a message inside a stream block (one XLogData
        frame, libpq reader); False means "an ordinary message"."""
        kind = frame[XLOG_HEADER]
        spool = self._in_stream
        if spool is not None:
            if kind == STREAM_STOP:
                self._in_stream = None
            elif kind == STREAM_START:
                raise ProtocolError(f"Stream Start inside a stream block from {self.target}")
            else:
                spool.append(frame)
            return True
        if kind == STREAM_START:
            xid = stream_start_xid(frame)
            spool = self._spools.get(xid)
            if spool is None:
                spool = self._spools[xid] = Spool(xid, self._memory, self._dir)
            self._in_stream = spool
            self.stats.stream_blocks += 1
            return True
        if kind == STREAM_ABORT:
            xid, subxid, abort_lsn = stream_abort(frame, parallel=self.parallel,
                                                  proto=self.proto_version, target=self.target)
            if self.parallel:
                self.stats.last_abort_lsn = abort_lsn
            spool = self._spools.get(xid)
            if spool is not None:
                if subxid == xid:
                    spool.discard()
                    del self._spools[xid]
                    self.stats.streamed_aborted += 1
                else:
                    spool.aborted.add(subxid)
                    self.stats.subxacts_aborted += 1
            return True
        if kind == STREAM_COMMIT:
            xid, begin, commit = stream_commit(frame)
            spool = self._spools.pop(xid, None)
            if spool is None:
                raise ProtocolError(
                    f"Stream Commit for transaction {xid} that never streamed, from "
                    f"{self.target}"
                )
            self.stats.streamed_committed += 1
            self.stats.spilled_bytes += spool.spilled
            self.deliveries.append(spool.deliver(begin, commit))
            return True
        return False

    def route_run(self, chunk: WalChunk) -> WalChunk | None:
        """Socket reader: split a run of XLogData at the stream control messages (few per
        run). Runs inside a stream block go to their transaction's spool whole; ordinary
        runs and committed streamed transactions are queued in arrival order. Nothing is
        queued when it is called (the stream drained it first)."""
        payload = chunk.offsets[:-1]
        control = np.flatnonzero(np.isin(chunk.data[payload], STREAM_CONTROL))
        if not len(control) and self._in_stream is None:
            return chunk
        assert chunk.ends is not None
        prev = 0
        for at in [*control.tolist(), len(chunk)]:
            if at > prev:
                run = run_of(chunk, prev, at)
                if self._in_stream is not None:
                    self._in_stream.append_run(run)
                else:
                    self.deliveries.append(iter((run,)))
            if at < len(chunk):
                start = int(payload[at]) - XLOG_HEADER
                frame = memoryview(chunk.data[start : int(chunk.ends[at])].tobytes())
                self.route(frame)
            prev = at + 1
        return self.next_pending()

    def close(self) -> None:
        """Discard every spool and queued delivery (their temporary files with them)."""
        for spool in self._spools.values():
            spool.discard()
        self._spools.clear()
        for delivery in self.deliveries:
            if isinstance(delivery, Generator):
                delivery.close()  # runs the spool's cleanup
        self.deliveries.clear()
