"""Split a buffer of raw backend protocol bytes into messages, vectorized.

The replication reader receives the walsender's byte stream straight from the socket, a few
megabytes per read, instead of asking libpq for one CopyData message per call: at ~150
bytes per change, one libpq call per message cost more CPU than decoding the message.
Finding the message boundaries is a pointer chase (each length says where the next message
starts), which this module does without a Python step per message:

1. Candidates: every position that *looks* like a CopyData frame carrying XLogData or a
   keepalive — ``'d'``, a length below 16 MiB (first length byte 0) and ``'w'``/``'k'``
   four bytes later. Every such frame is a candidate; a few positions inside payloads may
   be too (false positives).
2. Each candidate's successor is ``position + 1 + length``. Starting from a known message
   start, a run of candidates in which every candidate's successor is the next candidate
   is, by induction, exactly the run of true frames; the first candidate whose successor
   is not the next candidate ends the run, and the walk resumes at that successor (which
   skips any false positive in between).
3. Where the walk lands on a position that is not a candidate — any other message type
   (ErrorResponse, CopyDone, a notice), a frame of 16 MiB or more — that one message is
   taken on its own.

Cost: a few numpy passes over the bytes plus one Python step per *run*, not per message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dbmazz.source.chunk import WalChunk

_D = ord("d")
_W = ord("w")
_K = ord("k")

#: Bytes of a CopyData frame before its payload: type byte and length.
FRAME_HEADER = 5
#: Bytes of an XLogData payload before the pgoutput message: 'w', dataStart, walEnd, time.
XLOG_HEADER = 25


@dataclass(frozen=True, slots=True)
class Frames:
    """Complete messages found at the head of a buffer, in stream order.

    ``starts[i]`` is where message *i* begins (its type byte), ``ends[i]`` one past its
    last byte; ``kinds[i]`` is the CopyData payload type (``'w'``, ``'k'``) for CopyData
    frames and 0 for any other message (look at ``data[starts[i]]`` for its type).
    ``consumed`` is where the first incomplete message starts (== ``ends[-1]`` or the
    buffer's end when nothing is left over).
    """

    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]
    kinds: npt.NDArray[np.uint8]
    consumed: int


def _be_u32_at(data: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Big-endian uint32 at each position (all ``< len(data) - 3``): one gather through an
    unaligned, overlapping view of the bytes."""
    return _be_words(data)[at].astype(np.int64)


def _be_words(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    """Every big-endian uint32 of ``data``, one starting at each byte (a view)."""
    return np.ndarray(buffer=data, dtype=">u4", shape=(len(data) - 3,), strides=(1,))


def split_messages(data: npt.NDArray[np.uint8], start: int = 0) -> Frames:
    """The complete messages of ``data[start:]``; ``start`` must be a message start."""
    n = len(data)
    if n - start < FRAME_HEADER:
        return _empty_at(start)
    # Candidates: 'd' at p, p + 1 == 0 (length < 16 MiB), 'w' or 'k' at p + 5.
    head = data[start : n - FRAME_HEADER]
    cand = np.flatnonzero(head == _D)
    if len(cand):
        cand += start
        cand = cand[data[cand + 1] == 0]
        follow = data[cand + FRAME_HEADER]
        cand = cand[(follow == _W) | (follow == _K)]
    if len(cand):
        lengths = _be_u32_at(data, cand + 1)
        valid = lengths >= 4  # a shorter one, if real, is refused by the one-message path
        cand = cand[valid]
        succ = cand + 1 + lengths[valid]
    else:
        succ = cand
    # A true frame other than the first is some true frame's successor; dropping the
    # candidates nobody points at removes nearly every false positive in one pass, so the
    # walk below takes one step per run of frames, not one per false positive.
    for _ in range(2):
        if len(cand) < 2:
            break
        pointed = np.zeros(n + 1, dtype=np.bool_)
        pointed[np.minimum(succ, n)] = True
        pointed[start] = True
        keep = pointed[cand]
        if keep.all():
            break
        cand, succ = cand[keep], succ[keep]
    # Where a run must end: the successor is not the next candidate (or there is none).
    breaks = np.flatnonzero(succ[:-1] != cand[1:]) if len(cand) > 1 else np.zeros(0, np.int64)
    last = len(cand) - 1

    run_starts: list[npt.NDArray[np.int64]] = []
    run_ends: list[npt.NDArray[np.int64]] = []
    pos = start
    while True:
        i = int(np.searchsorted(cand, pos))
        if i < len(cand) and cand[i] == pos:
            b = int(np.searchsorted(breaks, i))
            j = int(breaks[b]) if b < len(breaks) else last
            # Frames i..j chain; any of them running past the buffer ends the walk there.
            over = np.flatnonzero(succ[i : j + 1] > n)
            if len(over):
                j = i + int(over[0]) - 1
                if j >= i:
                    run_starts.append(cand[i : j + 1])
                    run_ends.append(succ[i : j + 1])
                    pos = int(succ[j])
                break
            run_starts.append(cand[i : j + 1])
            run_ends.append(succ[i : j + 1])
            pos = int(succ[j])
            continue
        # Not a candidate: one message of any type, taken on its own.
        if n - pos < FRAME_HEADER:
            break
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5].tobytes(), "big")
        if end < pos + FRAME_HEADER:
            raise ValueError(f"message at byte {pos} has an impossible length")
        if end > n:
            break
        run_starts.append(np.array([pos], dtype=np.int64))
        run_ends.append(np.array([end], dtype=np.int64))
        pos = end
    if not run_starts:
        return _empty_at(start)
    starts = np.concatenate(run_starts) if len(run_starts) > 1 else run_starts[0]
    ends = np.concatenate(run_ends) if len(run_ends) > 1 else run_ends[0]
    types = data[starts]
    has_kind = (types == _D) & (ends - starts > FRAME_HEADER)
    kinds = np.where(has_kind, data[np.minimum(starts + FRAME_HEADER, n - 1)], 0).astype(np.uint8)
    return Frames(starts=starts, ends=ends, kinds=kinds, consumed=pos)


def _empty_at(position: int) -> Frames:
    empty = np.zeros(0, dtype=np.int64)
    return Frames(starts=empty, ends=empty, kinds=np.zeros(0, dtype=np.uint8), consumed=position)


def split_messages_reference(data: bytes, start: int = 0) -> Frames:
    """One message at a time (for tests): what :func:`split_messages` must return."""
    starts: list[int] = []
    ends: list[int] = []
    kinds: list[int] = []
    pos = start
    while len(data) - pos >= FRAME_HEADER:
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if end < pos + FRAME_HEADER:
            raise ValueError(f"message at byte {pos} has an impossible length")
        if end > len(data):
            break
        starts.append(pos)
        ends.append(end)
        kinds.append(data[pos + FRAME_HEADER] if data[pos] == _D and end > pos + 5 else 0)
        pos = end
    return Frames(
        starts=np.array(starts, dtype=np.int64),
        ends=np.array(ends, dtype=np.int64),
        kinds=np.array(kinds, dtype=np.uint8),
        consumed=pos,
    )


#: XLogData header: 'w' + dataStart + walEnd + sendTime.
XLOG_HEADER = 25


def xlog_chunk(buf: bytearray, offsets: list[int], headers: bytearray) -> WalChunk:
    """XLogData payloads gathered by a reader (``buf``, each starting at ``offsets``, their
    dataStart headers in ``headers``) as a chunk, without copying the payload bytes."""
    n = len(offsets)
    off = np.empty(n + 1, dtype=np.int64)
    off[:n] = offsets
    off[n] = len(buf)
    return WalChunk(
        data=np.frombuffer(buf, dtype=np.uint8),
        offsets=off,
        lsns=np.frombuffer(headers, dtype=">u8").astype(np.uint64),
    )


def be_u32_at(data: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]) -> npt.NDArray[np.uint32]:
    """Big-endian uint32 at each position (all ``<= len(data) - 4``)."""
    if not len(at):
        return np.zeros(0, dtype=np.uint32)
    return _be_words(data)[at].astype(np.uint32)


def be_u64_at(data: npt.NDArray[np.uint8], at: npt.NDArray[np.int64]) -> npt.NDArray[np.uint64]:
    """Big-endian uint64 at each position (all ``<= len(data) - 8``)."""
    if not len(at):
        return np.zeros(0, dtype=np.uint64)
    words = np.ndarray(buffer=data, dtype=">u8", shape=(len(data) - 7,), strides=(1,))
    return words[at].astype(np.uint64)
