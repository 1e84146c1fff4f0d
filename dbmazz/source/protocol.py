"""The logical replication protocol as dbmazz speaks it: which pgoutput protocol to ask
for, the START_REPLICATION command, the CopyData messages of a replication session
(XLogData, primary keepalive, standby status update) and the stream control messages of
streamed transactions, and the pure helpers on them (status intervals,
empty transactions). No connection and no state here: the readers
(:mod:`dbmazz.source.readers`) and the stream (:mod:`dbmazz.source.replication`) use them.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dbmazz.errors import ProtocolError, SourceError
from dbmazz.lsn import format_lsn
from dbmazz.source.chunk import WalChunk
from dbmazz.source.frames import XLOG_HEADER
from dbmazz.source.names import quote_ident, quote_literal

#: Upper bound for the standby status interval (pg_recvlogical's and subscribers' default).
MAX_STATUS_INTERVAL_S = 10.0

_PG_EPOCH_UNIX_S = 946_684_800  # 2000-01-01 00:00:00 UTC

# CopyData frame types of a replication session.
XLOG_DATA, PRIMARY_KEEPALIVE = ord("w"), ord("k")
# pgoutput message types the stream itself looks at.
BEGIN, COMMIT = ord("B"), ord("C")
STREAM_START, STREAM_STOP, STREAM_COMMIT, STREAM_ABORT = ord("S"), ord("E"), ord("c"), ord("A")
#: The stream control messages, for finding them in a chunk with numpy.
STREAM_CONTROL = np.array([STREAM_START, STREAM_STOP, STREAM_COMMIT, STREAM_ABORT],
                          dtype=np.uint8)

_STATUS = struct.Struct(">cQQQqB")
#: Primary keepalive after its type byte: walEnd, sendTime, replyRequested.
KEEPALIVE = struct.Struct(">QqB")
#: XLogData after its type byte: dataStart, walEnd.
XLOG_POS = struct.Struct(">QQ")
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT_BODY = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_STREAM_ABORT_PARALLEL = struct.Struct(">IIQq")  # protocol 4, streaming 'parallel'
_BEGIN = struct.Struct(">cQqI")
_COMMIT = struct.Struct(">cBQQq")
_DATA_START = struct.Struct(">Q")

#: Highest pgoutput protocol each server major speaks: 2 (streaming of in-progress
#: transactions) since PostgreSQL 14, 3 (two-phase) since 15, 4 (parallel streaming, Stream
#: Abort with abort LSN and time) since 16.
_PROTOCOL_SINCE = ((160000, 4), (150000, 3), (140000, 2))
PROTOCOL_CHOICES = ("auto", "1", "2", "3", "4")


@dataclass
class StreamStats:
    """What a replication session counts, for metrics and tests; updated by the reading
    thread only (the stream, its reader and its streamed transactions)."""

    frames: int = 0
    messages: int = 0
    payload_bytes: int = 0
    keepalives: int = 0
    replies_requested: int = 0
    status_updates: int = 0
    stream_blocks: int = 0
    streamed_committed: int = 0
    streamed_aborted: int = 0
    subxacts_aborted: int = 0
    spilled_bytes: int = 0
    #: Abort LSN of the last Stream Abort (protocol 4 with parallel streaming only).
    last_abort_lsn: int = 0


def max_protocol(server_version_num: int) -> int:
    """The highest pgoutput protocol version a server of that version speaks."""
    for since, proto in _PROTOCOL_SINCE:
        if server_version_num >= since:
            return proto
    return 1


def negotiate_protocol(requested: int | str, server_version_num: int, target: str) -> int:
    """``auto``: the highest protocol dbmazz and the server both speak; a number: that one,
    or a clear error when the server is too old for it."""
    highest = max_protocol(server_version_num)
    if str(requested) == "auto":
        return highest
    proto = int(requested)
    if proto not in (1, 2, 3, 4):
        raise ValueError(f"proto_version must be auto or 1-4, not {requested!r}")
    if proto > highest:
        major = server_version_num // 10000
        raise SourceError(
            f"PostgreSQL {major} at {target} speaks pgoutput protocol up to {highest}, "
            f"not {proto}",
            f"set PGOUTPUT_PROTOCOL=auto (or {highest} or lower)",
        )
    return proto


def start_replication_command(
    slot: str,
    start_lsn: int,
    publications: Sequence[str],
    *,
    proto: int,
    messages: bool,
    binary: bool,
    streaming: str,
) -> str:
    """``START_REPLICATION … LOGICAL`` with pgoutput's options; ``streaming``: ``off``,
    ``on`` or ``parallel``."""
    options = [
        f"proto_version '{proto}'",
        "publication_names " + quote_literal(",".join(quote_ident(p) for p in publications)),
    ]
    if messages:
        options.append("messages 'true'")
    if binary:
        options.append("binary 'true'")
    if streaming != "off":
        # 'parallel' (protocol 4) only changes what Stream Abort carries for a client that
        # applies serially: it adds the abort LSN and time.
        options.append(f"streaming '{streaming}'")
    return (
        f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} "
        f"({', '.join(options)})"
    )


def status_update(position: int) -> bytes:
    """A standby status update reporting ``position`` written, flushed and applied."""
    now_us = int((time.time() - _PG_EPOCH_UNIX_S) * 1_000_000)
    return _STATUS.pack(b"r", position, position, position, now_us, 0)


def parse_duration_ms(text: str) -> float:
    """A duration GUC as SHOW prints it (``60s``, ``1min``, ``500ms``, ``0``) → ms."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    scale = {"ms": 1, None: 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    return float(match.group(1)) * scale[match.group(2)]


def status_interval_for(wal_sender_timeout_ms: float) -> float:
    """Half the server's timeout (so one lost update is survivable), capped at 10 s."""
    if wal_sender_timeout_ms <= 0:  # timeout disabled
        return MAX_STATUS_INTERVAL_S
    return max(0.05, min(MAX_STATUS_INTERVAL_S, wal_sender_timeout_ms / 2000.0))


# --------------------------------------------------------------------------------------
# Stream control messages (protocol 2+), each an XLogData frame
# --------------------------------------------------------------------------------------


def stream_start_xid(frame: memoryview) -> int:
    """The transaction a Stream Start opens a block of."""
    xid, _first = _STREAM_START.unpack_from(frame, XLOG_HEADER + 1)
    return int(xid)


def stream_abort(frame: memoryview, *, parallel: bool, proto: int, target: str
                 ) -> tuple[int, int, int]:
    """Stream Abort's (xid, subxid, abort LSN); the abort LSN (and time) come only with
    parallel streaming (protocol 4), else 0."""
    size = len(frame) - XLOG_HEADER - 1
    layout = _STREAM_ABORT_PARALLEL if parallel else _STREAM_ABORT
    if size != layout.size:
        raise ProtocolError(
            f"Stream Abort of {size} bytes from {target} (expected {layout.size} "
            f"for protocol {proto}" + (" with parallel streaming)" if parallel else ")")
        )
    if parallel:
        xid, subxid, abort_lsn, _abort_time = layout.unpack_from(frame, XLOG_HEADER + 1)
        return xid, subxid, abort_lsn
    xid, subxid = layout.unpack_from(frame, XLOG_HEADER + 1)
    return xid, subxid, 0


def stream_commit(frame: memoryview) -> tuple[int, WalChunk, WalChunk]:
    """Stream Commit's transaction and the ordinary Begin and Commit that stand for it
    around its spooled messages (Begin at LSN 0, Commit at the frame's dataStart)."""
    xid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT_BODY.unpack_from(
        frame, XLOG_HEADER + 1
    )
    (data_start,) = _DATA_START.unpack_from(frame, 1)
    begin = WalChunk.from_messages([_BEGIN.pack(b"B", commit_lsn, ts, xid)], [0])
    commit = WalChunk.from_messages(
        [_COMMIT.pack(b"C", flags, commit_lsn, end_lsn, ts)], [data_start]
    )
    return xid, begin, commit


# --------------------------------------------------------------------------------------
# Empty transactions
# --------------------------------------------------------------------------------------


def drop_empty_transactions(chunk: WalChunk) -> WalChunk | None:
    """The chunk without Begin/Commit pairs that hold nothing (vectorized).

    PostgreSQL 14 sends every transaction of the database, published changes or not, as
    at least Begin + Commit; 15+ skips empty ones. Dropping them makes 14 behave like 15:
    no flush, no checkpoint write (which on 14 would itself come back as an empty
    transaction) — the idle rule moves the slot past them instead. A pair split across
    two chunks passes through unchanged (harmless: an empty transaction).
    """
    starts = chunk.offsets[:-1]
    if len(starts) < 2:
        return chunk
    kinds = chunk.data[starts]
    pair = (kinds[:-1] == BEGIN) & (kinds[1:] == COMMIT)
    if not pair.any():
        return chunk
    keep = np.ones(len(kinds), dtype=bool)
    keep[:-1] &= ~pair
    keep[1:] &= ~pair
    if not keep.any():
        return None
    ends = chunk.message_ends[keep]
    return WalChunk(
        data=chunk.data,
        offsets=np.append(starts[keep], ends[-1]).astype(np.int64),
        lsns=chunk.lsns[keep],
        ends=ends,
    )
