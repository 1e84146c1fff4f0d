"""`WalChunk`: the unit the source hands to the pipeline.

A chunk is a run of consecutive pgoutput messages kept as raw bytes in one contiguous
buffer, plus the start offset and WAL position of each message. The reader produces chunks
with no per-message work beyond splitting CopyData frames; everything downstream (routing
by relation, decoding tuples) is vectorized over the chunk's offsets.

Contract (every producer — live reader, capture replay — guarantees it):

* ``data[offsets[i]:offsets[i + 1]]`` is message *i*, starting with its type byte.
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

    def __len__(self) -> int:
        return len(self.lsns)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes + self.lsns.nbytes)

    def message(self, i: int) -> bytes:
        return self.data[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def messages(self) -> list[bytes]:
        """Every message as bytes (for tests and tools, not the hot path)."""
        raw = self.data.tobytes()
        bounds = self.offsets.tolist()
        return [raw[bounds[i] : bounds[i + 1]] for i in range(len(self))]

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
        """Zero-copy view as ``{lsn, payload}`` (the capture file's row shape)."""
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
