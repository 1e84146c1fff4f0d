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
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.errors import ProtocolError
from dbmazz.source.chunk import WalChunk
from dbmazz.source.frames import FRAME_HEADER, XLOG_HEADER, be_u32_at, xlog_chunk
from dbmazz.source.protocol import (
    STREAM_ABORT,
    STREAM_COMMIT,
    STREAM_CONTROL,
    STREAM_START,
    STREAM_STOP,
    StreamStats,
    stream_abort,
    stream_commit,
    stream_start_xid,
)

_ORIGIN = ord("O")


def strip_run(run: WalChunk, top_xid: int) -> tuple[WalChunk, npt.NDArray[np.uint32]]:
    """A run of in-stream messages as ordinary ones, back to back, and each one's xid.

    Each message loses the xid after its type byte, and the run loses whatever lies between
    messages (the socket reader's frame headers). Origin is the only in-stream message
    without an xid; it belongs to ``top_xid``. The run's bytes are the spool's: the usual
    run (frame headers only between messages, no Origin) is rewritten in place and sliced
    by Arrow, the rest gathered through a byte mask.
    """
    starts, ends = run.starts, run.message_ends
    n = len(run)
    if not n:
        return WalChunk(np.zeros(0, np.uint8), np.zeros(1, np.int64), run.lsns), \
            np.zeros(0, np.uint32)
    data = run.data
    has_xid = data[starts] != _ORIGIN
    dropped = 4 * has_xid.astype(np.int64)
    bodies = ends - starts - 1 - dropped
    if (bodies < 0).any():
        raise ProtocolError("an in-stream message shorter than its xid")
    xids = np.full(n, top_xid, dtype=np.uint32)
    xids[has_xid] = be_u32_at(data, starts[has_xid] + 1)
    gaps = starts[1:] - ends[:-1]
    if (gaps < 0).any():
        raise ProtocolError("in-stream messages out of buffer order")
    if (data.flags.writeable and has_xid.all() and int(starts[0]) >= _FRAMED
            and (gaps == _FRAMED).all()):
        stripped, offsets = _sliced(data, starts, ends)
    else:
        stripped, offsets = _masked(data, starts, ends, dropped, bodies, gaps)
    return WalChunk(data=stripped, offsets=offsets, lsns=run.lsns), xids


#: Bytes in front of each message of a socket run: the CopyData and XLogData headers.
_FRAMED = FRAME_HEADER + XLOG_HEADER


def _sliced(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
            ends: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Each type byte moved over the last byte of its xid; then the run read as Arrow
    binaries, one a frame (headers and message, back to back), and each sliced past its
    headers and its xid but the moved type byte: one copy in C++, a third of the mask's
    cost."""
    data[starts + 4] = data[starts]
    bounds = np.append(starts - _FRAMED, ends[-1])
    framed = pa.Array.from_buffers(pa.large_binary(), len(starts),
                                   [None, pa.py_buffer(bounds), pa.py_buffer(data)])
    # Past the longest frame (a larger stop overflows Arrow's size estimate).
    out = pc.binary_slice(framed, _FRAMED + 4, _FRAMED + int((ends - starts).max()))
    _, offsets_buffer, data_buffer = out.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[out.offset : out.offset + len(out) + 1]
    stripped = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return stripped, offsets - offsets[0]


def _masked(data: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
            ends: npt.NDArray[np.int64], dropped: npt.NDArray[np.int64],
            bodies: npt.NDArray[np.int64],
            gaps: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """One gather through a byte mask over the run: four spans a message (type byte kept,
    xid dropped, body kept, gap dropped), a bool per byte where a byte index costs eight."""
    n = len(starts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(bodies + 1, out=offsets[1:])
    spans = np.empty((n, 4), dtype=np.int64)
    spans[:, 0] = 1
    spans[:, 1] = dropped
    spans[:, 2] = bodies
    spans[:-1, 3] = gaps
    spans[-1, 3] = 0
    mask = np.repeat(np.tile(np.array([True, False, True, False]), n), spans.ravel())
    return data[int(starts[0]) : int(ends[-1])][mask], offsets


#: A spilled message's record in the spool's index file: where it ends in the data file,
#: its WAL position and its xid (for a subtransaction abort that comes later).
_INDEX = np.dtype([("end", "<i8"), ("lsn", "<u8"), ("xid", "<u4")])


class Spool:
    """One streamed (protocol 2) transaction's messages, held until Stream Commit.

    Messages are stored as they will be delivered: stripped of the in-stream xid (kept
    beside them, since a subtransaction may abort later) and back to back. The first
    ``memory_limit`` bytes stay in memory as appended; the rest go to two anonymous
    temporary files, the message bytes to one and a fixed-size record per message to the
    other, so a streamed transaction of any size costs bounded memory (invariant 4), and
    delivering a spilled part of about ``segment_bytes`` is one read with no copy after it.
    """

    SEGMENT_BYTES = 8 << 20
    MIN_SEGMENT_BYTES = 64 << 10

    def __init__(self, xid: int, memory_limit: int, spool_dir: str | None) -> None:
        self.xid = xid
        self.aborted: set[int] = set()
        self.memory_limit = memory_limit
        self.segment_bytes = max(
            self.MIN_SEGMENT_BYTES, min(self.SEGMENT_BYTES, memory_limit // 8)
        )
        self.spool_dir = spool_dir
        self.memory = 0
        self.spilled = 0
        self.pieces: list[tuple[WalChunk, npt.NDArray[np.uint32]]] = []
        self.file: IO[bytes] | None = None
        self.index: IO[bytes] | None = None
        self.spilled_messages = 0
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.offsets: list[int] = []
        self.headers = bytearray()
        self.xids: list[int] = []

    def append(self, frame: memoryview) -> None:
        """One XLogData frame of an in-stream message (libpq reader)."""
        kind = frame[XLOG_HEADER]
        self.offsets.append(len(self.buf))
        self.headers += frame[1:9]
        if kind == _ORIGIN:
            self.xids.append(self.xid)
            self.buf += frame[XLOG_HEADER:]
        else:
            self.xids.append(int.from_bytes(frame[XLOG_HEADER + 1 : XLOG_HEADER + 5], "big"))
            self.buf.append(kind)
            self.buf += frame[XLOG_HEADER + 5 :]
        if len(self.buf) >= self.segment_bytes:
            self.seal()

    def append_run(self, run: WalChunk) -> None:
        """A run of in-stream messages read together (socket reader)."""
        self.seal()
        self._store(*strip_run(run, self.xid))

    def seal(self) -> None:
        tail = self._tail()
        if tail is not None:
            self._store(*tail)

    def _tail(self) -> tuple[WalChunk, npt.NDArray[np.uint32]] | None:
        """The frames appended since the last seal as one piece (libpq reader)."""
        if not self.offsets:
            return None
        chunk = xlog_chunk(self.buf, self.offsets, self.headers)
        xids = np.array(self.xids, dtype=np.uint32)
        self._reset()
        return chunk, xids

    def _store(self, chunk: WalChunk, xids: npt.NDArray[np.uint32]) -> None:
        # Memory first, then the files: once spilling, always spilling, so delivery reads
        # the pieces in memory and then the files front to back.
        if self.file is None and self.memory + chunk.nbytes <= self.memory_limit:
            self.memory += chunk.nbytes
            self.pieces.append((chunk, xids))
            return
        if self.file is None or self.index is None:
            # Closed in discard(); live as long as the transaction they spool.
            self.file = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="dbmazz-spool-", dir=self.spool_dir
            )
            self.index = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="dbmazz-spool-index-", dir=self.spool_dir
            )
        records = np.empty(len(chunk), dtype=_INDEX)
        records["end"] = chunk.offsets[1:] + self.spilled
        records["lsn"] = chunk.lsns
        records["xid"] = xids
        self.file.write(np.ascontiguousarray(chunk.data).data)
        self.index.write(records.data)
        self.spilled += len(chunk.data)
        self.spilled_messages += len(chunk)

    def _spilled_parts(self) -> Iterator[tuple[WalChunk, npt.NDArray[np.uint32]]]:
        """The spilled messages in parts of about ``segment_bytes``: one read each."""
        if self.file is None or self.index is None or not self.spilled_messages:
            return
        per_part = max(1, self.segment_bytes * self.spilled_messages // self.spilled)
        self.file.seek(0)
        self.index.seek(0)
        begin = 0
        left = self.spilled_messages
        while left:
            count = min(per_part, left)
            records = np.frombuffer(self.index.read(count * _INDEX.itemsize), dtype=_INDEX)
            end = int(records["end"][-1])
            data = np.frombuffer(self.file.read(end - begin), dtype=np.uint8)
            if len(data) != end - begin:
                raise OSError(f"the spool file of transaction {self.xid} was cut short")
            offsets = np.empty(count + 1, dtype=np.int64)
            offsets[0] = 0
            offsets[1:] = records["end"] - begin
            yield WalChunk(data=data, offsets=offsets, lsns=records["lsn"].copy()), \
                records["xid"].copy()
            begin = end
            left -= count

    def deliver(self, begin: WalChunk, commit: WalChunk) -> Iterator[WalChunk]:
        """The committed transaction as ``B … C``: Begin, the stored parts in order (loaded
        lazily, so a spilled transaction is never all in memory at once), Commit."""
        # The tail is needed right away: no round trip to disk. It follows whatever was
        # stored, in memory or spilled.
        tail = self._tail()
        try:
            yield begin
            aborted = np.fromiter(self.aborted, dtype=np.uint32, count=len(self.aborted))
            # Each piece is let go of once taken, so a delivered part is not held twice
            # (by the spool and by the pipeline) until the whole transaction is through.
            pieces, self.pieces = self.pieces, []
            pieces.reverse()
            while pieces:
                yield from _without(*pieces.pop(), aborted)
            for chunk, xids in self._spilled_parts():
                yield from _without(chunk, xids, aborted)
            if tail is not None:
                yield from _without(*tail, aborted)
            yield commit
        finally:
            self.discard()

    def discard(self) -> None:
        self.pieces.clear()
        for spilled in (self.file, self.index):
            if spilled is not None:
                spilled.close()
        self.file = self.index = None


def _without(chunk: WalChunk, xids: npt.NDArray[np.uint32],
             aborted: npt.NDArray[np.uint32]) -> Iterator[WalChunk]:
    """The chunk without the messages of aborted subtransactions, Relation and Type too, as
    PostgreSQL's own subscriber does: pgoutput re-sends every schema after a stream abort,
    so later changes never depend on them. Nothing is yielded when nothing is left."""
    if len(aborted):
        keep = ~np.isin(xids, aborted)
        if not keep.all():
            chunk = chunk.select(np.flatnonzero(keep))
    if len(chunk):
        yield chunk


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
                run = chunk.part(prev, at)
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
