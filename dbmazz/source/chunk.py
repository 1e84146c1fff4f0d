"""`WalChunk`: the unit the source hands to the pipeline.

A chunk is a run of consecutive pgoutput messages kept as raw bytes in one contiguous
buffer, plus the start offset and WAL position of each message. The reader produces chunks
with no per-message work beyond splitting CopyData frames; everything downstream (routing
by relation, decoding tuples) is vectorized over the chunk's offsets.

Contract (every producer — live reader, capture replay — guarantees it):

* ``data[offsets[i]:ends[i]]`` is message *i*, starting with its type byte. ``ends`` is
  None when the messages are back to back (then ``ends[i] == offsets[i + 1]``); the live
  reader leaves the protocol's frame headers between messages and gives ``ends``, so the
  socket's bytes become a chunk without being copied message by message.
  ``offsets[-1]`` is the end of the last message.
* Messages are in the order the walsender sent them, and only whole messages are present.
* Streamed (protocol v2) transactions are delivered only once committed, already
  re-assembled as an ordinary ``B … C`` sequence: in-stream xids are stripped, aborted
  subtransactions removed. Downstream code never sees ``S``/``E``/``c``/``A``.
* ``lsns[i]`` is the XLogData ``dataStart`` of message *i* (0 for synthesized messages).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

#: Schema of a capture file and of a chunk seen as an Arrow table.
CAPTURE_SCHEMA = pa.schema([("lsn", pa.uint64()), ("payload", pa.binary())])


@dataclass(frozen=True, slots=True)
class WalChunk:
    data: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]  # shape (n + 1,); offsets[0] == 0, offsets[-1] == len(data)
    lsns: npt.NDArray[np.uint64]  # shape (n,)
    ends: npt.NDArray[np.int64] | None = None  # shape (n,); None: offsets[1:]

    def __len__(self) -> int:
        return len(self.lsns)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes + self.lsns.nbytes)

    @property
    def starts(self) -> npt.NDArray[np.int64]:
        """Where each message starts in :attr:`data`."""
        return self.offsets[:-1]

    @property
    def message_ends(self) -> npt.NDArray[np.int64]:
        """One past each message's last byte in :attr:`data`."""
        return self.offsets[1:] if self.ends is None else self.ends

    @property
    def payload_bytes(self) -> int:
        """Bytes of the messages themselves (frame headers in between not counted)."""
        if self.ends is None:
            return int(self.offsets[-1] - self.offsets[0]) if len(self) else 0
        return int((self.ends - self.offsets[:-1]).sum())

    def message(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.message_ends[i]].tobytes()

    def messages(self) -> list[bytes]:
        """Every message as bytes (for tests and tools, not the hot path)."""
        raw = self.data.tobytes()
        starts = self.starts.tolist()
        ends = self.message_ends.tolist()
        return [raw[a:b] for a, b in zip(starts, ends, strict=True)]

    def part(self, lo: int, hi: int) -> WalChunk:
        """Messages ``lo:hi`` (``lo < hi``; views, no copy)."""
        ends = self.message_ends[lo:hi]
        end = int(ends[-1])
        offsets = np.append(self.offsets[lo:hi], end).astype(np.int64)
        return WalChunk(data=self.data[:end], offsets=offsets, lsns=self.lsns[lo:hi], ends=ends)

    def head(self, n: int) -> WalChunk:
        """The first ``n`` messages (views, no copy)."""
        end = int(self.message_ends[n - 1]) if n else int(self.offsets[0])
        offsets = np.append(self.offsets[:n], end).astype(np.int64)
        ends = None if self.ends is None else self.ends[:n]
        return WalChunk(data=self.data[:end], offsets=offsets, lsns=self.lsns[:n], ends=ends)

    def select(self, which: npt.NDArray[np.int64]) -> WalChunk:
        """Messages ``which`` (ascending indices), back to back in a new buffer."""
        ends = self.message_ends[which]
        offsets = np.append(self.starts[which], ends[-1] if len(ends) else 0)
        return WalChunk(data=self.data, offsets=offsets.astype(np.int64, copy=False),
                        lsns=self.lsns[which], ends=ends).compact()

    def compact(self) -> WalChunk:
        """The same messages back to back in a new buffer (``ends`` None)."""
        if self.ends is None:
            return self
        starts, ends = self.starts, self.ends
        sizes = ends - starts
        offsets = np.zeros(len(self) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        if not len(self):
            return WalChunk(np.zeros(0, np.uint8), offsets, self.lsns)
        gaps = starts[1:] - ends[:-1]
        if (gaps < 0).any():  # not in buffer order: a gather by byte index
            index = np.repeat(starts - offsets[:-1], sizes) + np.arange(int(offsets[-1]))
            return WalChunk(data=self.data[index], offsets=offsets, lsns=self.lsns)
        # In buffer order (every reader's chunk; streamed runs are spooled this way): one
        # byte mask over the span, message bytes on and the frame headers between them off,
        # a bool per byte where a byte index would cost eight.
        runs = np.empty(2 * len(self) - 1, dtype=np.int64)
        runs[0::2] = sizes
        runs[1::2] = gaps
        keep = np.zeros(len(runs), dtype=bool)
        keep[0::2] = True
        span = self.data[int(starts[0]) : int(ends[-1])]
        return WalChunk(data=span[np.repeat(keep, runs)], offsets=offsets, lsns=self.lsns)

    @classmethod
    def from_messages(
        cls, messages: Sequence[bytes], lsns: Iterable[int] | None = None
    ) -> WalChunk:
        sizes = np.fromiter((len(m) for m in messages), dtype=np.int64, count=len(messages))
        offsets = np.zeros(len(messages) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        data = np.frombuffer(b"".join(messages), dtype=np.uint8)
        lsn_array = (
            np.zeros(len(messages), dtype=np.uint64)
            if lsns is None
            else np.fromiter(lsns, dtype=np.uint64, count=len(messages))
        )
        return cls(data=data, offsets=offsets, lsns=lsn_array)

    def to_arrow(self) -> pa.RecordBatch:
        """``{lsn, payload}`` (the capture file's row shape); zero-copy when the messages
        are back to back."""
        if self.ends is not None:
            return self.compact().to_arrow()
        payload = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(),
            len(self),
            [None, pa.py_buffer(self.offsets), pa.py_buffer(self.data)],
        ).cast(pa.binary())
        return pa.RecordBatch.from_arrays([pa.array(self.lsns, pa.uint64()), payload],
                                          schema=CAPTURE_SCHEMA)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch | pa.Table) -> WalChunk:
        """Inverse of :meth:`to_arrow` (one copy of the payload bytes at most)."""
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else \
                pa.RecordBatch.from_pylist([], schema=CAPTURE_SCHEMA)
        payload = batch.column("payload").cast(pa.large_binary())
        _, offsets_buf, data_buf = payload.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=np.int64)[
            payload.offset : payload.offset + len(payload) + 1
        ]
        base = int(offsets[0]) if len(offsets) else 0
        end = int(offsets[-1]) if len(offsets) else 0
        data = (
            np.frombuffer(data_buf, dtype=np.uint8)[base:end]
            if data_buf is not None
            else np.zeros(0, dtype=np.uint8)
        )
        lsns = batch.column("lsn").to_numpy(zero_copy_only=False).astype(np.uint64, copy=False)
        return cls(data=data, offsets=(offsets - base).astype(np.int64), lsns=lsns)


def concat_chunks(chunks: Sequence[WalChunk]) -> WalChunk:
    if len(chunks) == 1:
        return chunks[0]
    shifts = np.cumsum([0, *[len(c.data) for c in chunks[:-1]]])
    starts = np.concatenate([c.starts + s for c, s in zip(chunks, shifts, strict=True)])
    ends = np.concatenate([c.message_ends + s for c, s in zip(chunks, shifts, strict=True)])
    back_to_back = all(
        c.ends is None and (not len(c) or (c.offsets[0] == 0 and c.offsets[-1] == len(c.data)))
        for c in chunks
    )
    return WalChunk(
        data=np.concatenate([c.data for c in chunks]),
        offsets=np.append(starts, ends[-1] if len(ends) else 0).astype(np.int64),
        lsns=np.concatenate([c.lsns for c in chunks]).astype(np.uint64),
        ends=None if back_to_back else ends.astype(np.int64),
    )
