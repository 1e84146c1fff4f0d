"""The two ways a replication stream reads the walsender, behind one :class:`Reader`.

:class:`SocketReader` takes the bytes straight from the socket
(:mod:`dbmazz.source.wire`; over TLS dbmazz's own TLS connection,
:mod:`dbmazz.source.tlswire`), megabytes per read, and splits them into messages without a
Python step per message (:mod:`dbmazz.source.frames`): the bytes read become the
:class:`~dbmazz.source.chunk.WalChunk` with one copy, frame headers left in place.
:class:`LibpqReader` reads one CopyData frame per libpq call: GSS-encrypted connections,
TLS connections the own TLS connection cannot reproduce (see
:class:`~dbmazz.source.tlswire.TlsWireUnavailable`), and ``REPLICATION_READER=libpq``.

A reader works for the stream (:class:`ReaderHost`, i.e.
:class:`~dbmazz.source.replication.ReplicationStream`): it tells it of keepalives and of
the last XLogData position read, lets it send a status update while waiting, and hands
stream control messages to its :class:`~dbmazz.source.spool.StreamedTransactions`. Every
per-message step stays inside the reader's loop (the socket reader's are vectorized); the
calls to the host come once per chunk or per keepalive.
"""

from __future__ import annotations

import logging
import selectors
import time
from typing import Protocol

import numpy as np
import psycopg
from psycopg import pq
from psycopg.pq.abc import PGconn

from dbmazz.errors import ProtocolError, SourceConnectionError, SourceError
from dbmazz.lsn import format_lsn
from dbmazz.source.chunk import WalChunk
from dbmazz.source.connection import fields_error, lost_error, result_error
from dbmazz.source.frames import FRAME_HEADER, XLOG_HEADER, be_u64_at, split_messages, xlog_chunk
from dbmazz.source.protocol import PRIMARY_KEEPALIVE, XLOG_DATA, StreamStats
from dbmazz.source.spool import StreamedTransactions
from dbmazz.source.wire import (
    COPY_DONE,
    LOW_WATER_BYTES,
    Wire,
    copy_data,
    error_fields,
    query_message,
)

log = logging.getLogger(__name__)

_W, _K = XLOG_DATA, PRIMARY_KEEPALIVE
_D = ord("d")
# Backend messages other than CopyData that may arrive while streaming (socket reader).
_ERROR, _NOTICE, _READY = ord("E"), ord("N"), ord("Z")
_PARAMETER_STATUS, _NOTIFICATION, _COPY_BOTH = ord("S"), ord("A"), ord("W")
_COPY_ENDED = frozenset(b"cCZTD")
#: Receive buffer of the socket reader (grows for a larger message, then shrinks back).
_READ_BUFFER = 4 << 20
_START_TIMEOUT_S = 120.0
# Longest wait of the socket reader for its low-water mark before reading what is there.
_WAIT_SLICE_S = 0.02


class ReaderHost(Protocol):
    """What a reader reports to the stream it reads for."""

    target: str
    slot: str
    stats: StreamStats

    @property
    def received_lsn(self) -> int: ...

    def on_keepalive(self, frame: memoryview, *, clean: bool) -> None:
        """A primary keepalive (``frame`` from its type byte). ``clean``: no XLogData read
        before it is still to be handed out."""

    def note_position(self, frame: memoryview) -> None:
        """The last XLogData of a read (``frame`` from its type byte): dataStart, walEnd."""

    def status_if_due(self, now: float | None = None) -> None:
        """Send a status update if one is due (the reader is about to wait)."""


class Reader(Protocol):
    """How the stream reads and writes its connection once COPY has started."""

    #: "socket", "tls" or "libpq" (for status).
    name: str

    def read(self, max_bytes: int, timeout_s: float) -> WalChunk | None:
        """Whole XLogData messages, up to about ``max_bytes``; waits at most ``timeout_s``
        for the first; None if nothing is ready."""

    def send(self, message: bytes) -> None:
        """Send one CopyData payload (a status update); a classified error if lost."""

    @property
    def connected(self) -> bool:
        """Whether COPY can still be ended politely."""

    def end_copy(self, timeout_s: float) -> None:
        """End COPY and skip what is still in flight (best effort, bounded)."""

    def close(self) -> None:
        """Release what the reader holds (not the connection: the stream finishes it)."""


def _unexpected_frame(kind: int, host: ReaderHost) -> ProtocolError:
    return ProtocolError(
        f"unexpected CopyData frame type {chr(kind)!r} from {host.target} "
        f"after LSN {format_lsn(host.received_lsn)}"
    )


def _copy_ended(target: str, slot: str) -> SourceConnectionError:
    return SourceConnectionError(
        f"the server at {target} ended replication of slot {slot!r}",
        "it is probably shutting down; dbmazz reconnects and resumes",
    )


# --------------------------------------------------------------------------------------
# libpq: one CopyData frame per call
# --------------------------------------------------------------------------------------


def start_libpq_copy(pgconn: PGconn, command: str, target: str, slot: str) -> None:
    """Send START_REPLICATION through libpq and wait for COPY BOTH."""
    pgconn.send_query(command.encode())
    res = pgconn.get_result()
    if res is None:
        raise SourceConnectionError(f"no answer to START_REPLICATION from {target}")
    if res.status != pq.ExecStatus.COPY_BOTH:
        raise result_error(res, target, slot)


class LibpqReader:
    """Reads one CopyData frame per libpq call, gathering what is already there into one
    chunk (see :meth:`read`)."""

    name = "libpq"

    def __init__(self, host: ReaderHost, pgconn: PGconn, streamed: StreamedTransactions | None
                 ) -> None:
        self._host = host
        self._pgconn = pgconn
        #: Stream control messages go here (None: streaming is off).
        self._streamed = streamed
        self._selector = selectors.DefaultSelector()
        self._selector.register(pgconn.socket, selectors.EVENT_READ)

    def _lost(self, exc: BaseException) -> SourceError:
        return lost_error(exc, self._host.target, self._host.slot)

    def read(self, max_bytes: int, timeout_s: float) -> WalChunk | None:
        host = self._host
        pgconn = self._pgconn
        streamed = self._streamed
        deliveries = streamed.deliveries if streamed is not None else ()
        buf = bytearray()
        offsets: list[int] = []
        headers = bytearray()
        last: memoryview | None = None
        frames = 0
        # Counts spooled frames too, so a long streamed transaction cannot keep the caller
        # inside this loop (away from its stop checks) indefinitely.
        consumed = 0
        progressed = True  # a frame came since the last consume_input
        deadline: float | None = None
        while consumed < max_bytes:
            try:
                n, frame = pgconn.get_copy_data(1)
            except psycopg.OperationalError as exc:
                raise self._lost(exc) from None
            if n > 0:
                consumed += n
                kind = frame[0]
                if kind == _W:
                    progressed = True
                    frames += 1
                    last = frame
                    if streamed is not None and streamed.route(frame):
                        if deliveries:  # a streamed transaction committed
                            break
                        continue
                    offsets.append(len(buf))
                    headers += frame[1:9]
                    buf += frame[XLOG_HEADER:]
                elif kind == _K:
                    host.on_keepalive(frame, clean=not offsets and not deliveries)
                else:
                    raise _unexpected_frame(kind, host)
                continue
            if n == 0:
                if offsets and progressed and consumed < max_bytes:
                    # Take what the socket holds already into this chunk (consume_input never
                    # blocks; a second empty get_copy_data ends the chunk). Over TLS libpq
                    # reads one record per call, and the walsender sends one message per
                    # record, while every chunk has a fixed cost downstream (wrapping,
                    # routing, joining) that chunks of a few messages multiply.
                    progressed = False
                    try:
                        pgconn.consume_input()
                    except psycopg.OperationalError as exc:
                        raise self._lost(exc) from None
                    continue
                if offsets or deliveries:
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout_s
                remaining = deadline - now
                if remaining <= 0:
                    break
                host.status_if_due(now)
                if not self._selector.select(remaining):
                    continue  # re-check once; the deadline ends the loop
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as exc:
                    raise self._lost(exc) from None
                continue
            raise self._copy_ended()
        if last is not None:
            host.note_position(last)
            host.stats.frames += frames
        if not offsets:
            return streamed.next_pending() if streamed is not None else None
        # Messages read before a streamed commit come before it (pending is then drained).
        return xlog_chunk(buf, offsets, headers)

    def _copy_ended(self) -> SourceError:
        res = self._pgconn.get_result()
        if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
            return result_error(res, self._host.target, self._host.slot)
        return _copy_ended(self._host.target, self._host.slot)

    def send(self, message: bytes) -> None:
        try:
            self._pgconn.put_copy_data(message)
            self._pgconn.flush()
        except psycopg.OperationalError as exc:
            raise self._lost(exc) from None

    @property
    def connected(self) -> bool:
        return self._pgconn.status == pq.ConnStatus.OK

    def end_copy(self, timeout_s: float) -> None:
        """End COPY and skip frames still in flight until the server acknowledges it."""
        pgconn = self._pgconn
        pgconn.put_copy_end()
        pgconn.flush()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            n, _ = pgconn.get_copy_data(1)
            if n > 0:
                continue
            if n == 0:
                self._selector.select(max(0.0, deadline - time.monotonic()))
                pgconn.consume_input()
                continue
            break
        while time.monotonic() < deadline:
            pgconn.consume_input()
            if pgconn.is_busy():
                self._selector.select(max(0.0, deadline - time.monotonic()))
                continue
            if pgconn.get_result() is None:
                return

    def close(self) -> None:
        self._selector.close()


# --------------------------------------------------------------------------------------
# The socket: the walsender's bytes, megabytes per read
# --------------------------------------------------------------------------------------


def start_socket_copy(wire: Wire, command: str, target: str, slot: str) -> bytes:
    """Send START_REPLICATION on the socket and read up to its CopyBothResponse; returns
    the bytes read past it (the first of the stream)."""
    wire.write_all(query_message(command))
    pending = bytearray()
    failure: SourceError | None = None
    while True:
        try:
            message = wire.read_message(pending, _START_TIMEOUT_S)
        except TimeoutError:
            raise SourceConnectionError(
                f"no answer to START_REPLICATION from {target} in {_START_TIMEOUT_S:.0f} s",
                "check that the server is not overloaded; dbmazz retries",
            ) from None
        except (EOFError, OSError) as exc:
            if failure is not None:
                raise failure from None
            raise SourceConnectionError(
                f"connection to {target} lost while starting replication: {exc}",
                "dbmazz reconnects and resumes from the last confirmed LSN; if this repeats "
                "and the connection is GSS-encrypted, set REPLICATION_READER=libpq",
            ) from None
        if message.kind == _COPY_BOTH and failure is None:
            return bytes(pending)
        if message.kind == _ERROR:
            failure = fields_error(error_fields(message.body), target, slot)
        elif message.kind == _READY and failure is not None:
            raise failure  # the connection is idle again; libpq may close it cleanly
        elif message.kind not in (_NOTICE, _PARAMETER_STATUS):
            raise ProtocolError(
                f"unexpected answer {chr(message.kind)!r} to START_REPLICATION from {target}",
                # The socket reader speaks the plain protocol; libpq tells SSL and GSS
                # authentication apart, but not GSS encryption under another method.
                "if the connection is GSS-encrypted, set REPLICATION_READER=libpq (or add "
                "gssencmode=disable to SOURCE_URL)",
            )


class SocketReader:
    """Reads the socket directly into a receive buffer and hands out its whole messages
    (:meth:`read`); a partial message stays at the buffer's head for the next read."""

    def __init__(self, host: ReaderHost, wire: Wire, received: bytes,
                 streamed: StreamedTransactions | None) -> None:
        #: "socket" (the plain socket) or "tls" (dbmazz's own TLS connection).
        self.name = wire.name
        self._host = host
        self._wire = wire
        self._streamed = streamed
        wire.set_low_water(LOW_WATER_BYTES)
        # The receive buffer and how much of it holds unread bytes.
        self._rbuf = bytearray(max(_READ_BUFFER, len(received)))
        self._rbuf[: len(received)] = received
        self._rlen = len(received)
        self._eof = False

    def _lost(self, exc: BaseException) -> SourceError:
        return lost_error(exc, self._host.target, self._host.slot)

    def read(self, max_bytes: int, timeout_s: float) -> WalChunk | None:
        wire = self._wire
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            self._fill(max_bytes)
            # Little data waits for more, one slice at most: the walsender writes message
            # by message, and every call here has a fixed cost (a split, a chunk, a batch).
            enough = self._rlen >= min(max_bytes, wire.low_water)
            if self._rlen and (enough or waited or self._eof):
                chunk = self._take_messages(max_bytes)
                if chunk is not None:
                    return chunk
            if self._eof:
                raise self._lost(EOFError("the server closed the connection"))
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                if self._rlen and not waited:
                    waited = True
                    continue  # take what is here before giving up
                return None
            self._host.status_if_due(now)
            # The socket's low-water mark (SocketWire) wakes this when that much is there;
            # the slice bounds how long a few small messages wait.
            wire.wait_readable(min(remaining, _WAIT_SLICE_S))
            waited = True

    def _fill(self, max_bytes: int) -> None:
        """Read what the socket has, until about ``max_bytes`` are buffered (more when the
        message at the head is larger)."""
        want = max(max_bytes, self._head_size())
        if want > len(self._rbuf):
            grown = bytearray(want)
            grown[: self._rlen] = self._rbuf[: self._rlen]
            self._rbuf = grown
        view = memoryview(self._rbuf)
        try:
            while self._rlen < want and not self._eof:
                try:
                    got = self._wire.read_into(view[self._rlen :])
                except EOFError:
                    self._eof = True
                    break
                except OSError as exc:
                    raise self._lost(exc) from None
                if not got:
                    break
                self._rlen += got
        finally:
            view.release()

    def _head_size(self) -> int:
        """Size of the (partial) message at the head of the buffer, 0 if unknown."""
        if self._rlen < FRAME_HEADER:
            return 0
        return 1 + int.from_bytes(self._rbuf[1:FRAME_HEADER], "big")

    def _take_messages(self, max_bytes: int) -> WalChunk | None:
        """Hand out the buffer's whole messages, up to about ``max_bytes``: XLogData as one
        chunk (one copy of the bytes, headers left between messages), the rest (keepalives,
        errors) handled here. Keeps what follows for the next call."""
        # Only the first ``max_bytes`` are looked at (the rest stays for the next call), or
        # the whole first message if it is larger.
        scan = min(self._rlen, max(max_bytes, self._head_size()))
        data = np.frombuffer(self._rbuf, dtype=np.uint8, count=scan)
        found = split_messages(data)
        starts, ends, kinds = found.starts, found.ends, found.kinds
        if not len(starts):
            return None
        consumed = found.consumed
        is_w = kinds == _W
        chunk = None
        streamed = self._streamed
        if not is_w.all():
            others = np.flatnonzero(~is_w)
            pending = streamed is not None and bool(streamed.deliveries)
            for rank, i in enumerate(others.tolist()):
                start, end = int(starts[i]), int(ends[i])
                # Clean: no XLogData read before it in this read is still to be handed out.
                self._on_message(data[start:end].tobytes(), clean=(i == rank and not pending))
            starts, ends = starts[is_w], ends[is_w]
        if len(starts):
            lo, hi = int(starts[0]), int(ends[-1])
            own = data[lo:hi].copy()
            starts = starts - lo
            ends = ends - lo
            last = int(starts[-1]) + FRAME_HEADER
            self._host.note_position(memoryview(own[last : last + XLOG_HEADER].tobytes()))
            self._host.stats.frames += len(starts)
            chunk = WalChunk(
                data=own,
                offsets=np.append(starts + (FRAME_HEADER + XLOG_HEADER), ends[-1]),
                lsns=be_u64_at(own, starts + FRAME_HEADER + 1),
                ends=ends,
            )
            if streamed is not None:
                chunk = streamed.route_run(chunk)
        del data
        rest = self._rlen - consumed
        if len(self._rbuf) > _READ_BUFFER and rest <= _READ_BUFFER:
            self._rbuf = bytearray(self._rbuf[consumed : self._rlen]) + bytearray(
                _READ_BUFFER - rest)  # a large message is gone: give its space back
        elif rest:
            self._rbuf[:rest] = self._rbuf[consumed : self._rlen]
        self._rlen = rest
        return chunk

    def _on_message(self, message: bytes, *, clean: bool) -> None:
        """A backend message other than XLogData."""
        host = self._host
        kind = message[0]
        if kind == _D:
            sub = message[FRAME_HEADER] if len(message) > FRAME_HEADER else 0
            if sub == _K:
                host.on_keepalive(memoryview(message)[FRAME_HEADER:], clean=clean)
                return
            raise _unexpected_frame(sub, host)
        if kind == _ERROR:
            raise fields_error(error_fields(message[FRAME_HEADER:]), host.target, host.slot)
        if kind in _COPY_ENDED:
            # CopyDone, or what follows it (at shutdown the walsender may send only those).
            raise _copy_ended(host.target, host.slot)
        if kind == _NOTICE:
            fields = error_fields(message[FRAME_HEADER:])
            log.info("notice from %s: %s", host.target, fields.get("M", ""))
            return
        if kind in (_PARAMETER_STATUS, _NOTIFICATION):
            return
        raise ProtocolError(
            f"unexpected protocol message {chr(kind)!r} from {host.target} while streaming "
            f"(after LSN {format_lsn(host.received_lsn)})"
        )

    def send(self, message: bytes) -> None:
        try:
            self._wire.write_all(copy_data(message))
        except OSError as exc:
            raise self._lost(exc) from None

    @property
    def connected(self) -> bool:
        return not self._eof

    def end_copy(self, timeout_s: float) -> None:
        """Send CopyDone and skip what is still in flight until the server is ready for
        queries again (so libpq, which never saw the COPY, closes an idle connection)."""
        wire = self._wire
        wire.set_low_water(1)
        wire.write_all(COPY_DONE, timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._fill(_READ_BUFFER)
            data = np.frombuffer(self._rbuf, dtype=np.uint8, count=self._rlen)
            found = split_messages(data)
            ready = bool((data[found.starts] == _READY).any()) if len(found.starts) else False
            del data
            rest = self._rlen - found.consumed
            self._rbuf[:rest] = self._rbuf[found.consumed : self._rlen]
            self._rlen = rest
            if ready or self._eof:
                return
            wire.wait_readable(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        self._wire.close()
