"""Streamed transactions (protocol 2): their messages held until Stream Commit, in memory
up to a limit and then in a temporary file, and delivered as one ordinary ``B … C`` run."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import IO

import numpy as np

from dbmazz.source.chunk import WalChunk, concat_chunks
from dbmazz.source.frames import XLOG_HEADER, xlog_chunk

_ORIGIN = ord("O")


def strip_streamed(chunk: WalChunk, top_xid: int, aborted: set[int]) -> WalChunk:
    """Remove the in-stream xid after each type byte and drop aborted subtransactions.

    Vectorized over the chunk. Relation/Type messages of an aborted subtransaction are
    dropped too, as PostgreSQL's own subscriber does: pgoutput re-sends every schema after
    a stream abort, so later changes never depend on them.
    """
    chunk = chunk.compact()
    data, offsets = chunk.data, chunk.offsets
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    has_xid = data[starts] != _ORIGIN  # Origin is the only in-stream message without an xid
    pos = np.minimum(starts[:, None] + np.arange(1, 5), max(len(data) - 1, 0))
    xb = data[pos].astype(np.uint32)
    xids = (xb[:, 0] << 24) | (xb[:, 1] << 16) | (xb[:, 2] << 8) | xb[:, 3]
    xids = np.where(has_xid, xids, np.uint32(top_xid))
    keep = ~np.isin(xids, np.fromiter(aborted, dtype=np.uint32)) if aborted else None
    if keep is None:
        keep = np.ones(len(starts), dtype=bool)
    byte_mask = np.repeat(keep, lengths)
    strip = keep & has_xid
    byte_mask[(starts[strip][:, None] + np.arange(1, 5)).ravel()] = False
    new_lengths = lengths[keep] - 4 * has_xid[keep]
    new_offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=new_offsets[1:])
    return WalChunk(data=data[byte_mask], offsets=new_offsets, lsns=chunk.lsns[keep])


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
        self.file.write(chunk.offsets.tobytes())
        self.file.write(chunk.lsns.tobytes())
        self.file.write(chunk.data.tobytes())
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
