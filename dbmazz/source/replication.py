"""The logical replication stream: one ``replication=database`` connection in CopyBoth mode.

libpq connects, authenticates and runs the checks (:mod:`dbmazz.source.connection`); once
streaming, a reader (:mod:`dbmazz.source.readers`) takes the walsender's bytes straight
from the socket, megabytes per read, or on SSL/GSS-encrypted connections one CopyData frame
per libpq call. Streamed in-progress transactions (protocol 2+, ``streaming 'parallel'``
with protocol 4 on PostgreSQL 16+, see :func:`~dbmazz.source.protocol.negotiate_protocol`)
are split off at their Stream Start/Stop/Commit/Abort messages, spooled and delivered at
Stream Commit as an ordinary ``B … C`` run (:mod:`dbmazz.source.spool`). Everything else
(routing, decoding) happens downstream, vectorized over the chunks the readers produce.
This module orchestrates: opening, the positions, status updates, confirmation, closing.

Status updates report the *durable* LSN (what the caller confirmed), never merely received
data: the slot must keep every change the sink has not acknowledged (invariant 1). One
refinement, as PostgreSQL's own subscriber does: when every delivered transaction is
confirmed and none is open, the position the server has already read past (keepalive
walEnd) holds nothing unacknowledged, so it is reported instead. Without that a slot whose
tables are quiet never advances (WAL piles up on a busy server), and a fast shutdown of
PostgreSQL waits forever for the walsender, which exits only when flush == sentPtr.
``advance_when_idle=False`` turns it off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg.pq.abc import PGconn

from dbmazz.errors import SlotLostError, SourceError
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.source.chunk import WalChunk
from dbmazz.source.connection import connect_replication, server_error, simple_query
from dbmazz.source.empty import EmptyTransactionFilter
from dbmazz.source.names import describe_dsn, quote_literal, validate_slot_name
from dbmazz.source.protocol import (
    BEGIN,
    COMMIT,
    KEEPALIVE,
    PROTOCOL_CHOICES,
    XLOG_POS,
    StreamStats,
    negotiate_protocol,
    parse_duration_ms,
    start_replication_command,
    status_interval_for,
    status_update,
)
from dbmazz.source.readers import (
    LibpqReader,
    Reader,
    SocketReader,
    start_libpq_copy,
    start_socket_copy,
)
from dbmazz.source.slots import slot_moved_hint
from dbmazz.source.spool import StreamedTransactions
from dbmazz.source.tlswire import TlsWire, TlsWireUnavailable, tls_params
from dbmazz.source.wire import SocketWire, Wire

log = logging.getLogger(__name__)
#: (target, reason) pairs already logged: a fallback to libpq is reported once per process,
#: not at every reconnect.
_FALLBACKS_LOGGED: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class SystemInfo:
    """IDENTIFY_SYSTEM's answer."""

    system_id: str
    timeline: int
    xlogpos: int
    dbname: str | None


@dataclass(frozen=True)
class SourceChannel:
    """How the stream reaches the server, for status: encryption, protocol, server."""

    #: The connection is SSL/TLS-encrypted, and with which TLS version ("" if not).
    tls: bool
    tls_version: str
    #: Negotiated pgoutput protocol and streaming mode ("off", "on" or "parallel").
    protocol: int
    streaming: str
    server_version: int
    #: The server is a hot standby (logical decoding from a standby, PostgreSQL 16+).
    standby: bool
    #: "socket", "tls" (dbmazz's own TLS connection) or "libpq".
    reader: str


class ReplicationStream:
    """A started ``START_REPLICATION … LOGICAL`` session. See the module docstring.

    One thread reads (:meth:`read_chunk`, :meth:`keepalive`, :meth:`close`); any thread may
    :meth:`confirm`. Socket work is serialized by a lock, so calling :meth:`keepalive` from
    another thread is safe too (it waits for a running read to return).
    """

    def __init__(
        self,
        pgconn: PGconn,
        *,
        target: str,
        slot: str,
        system: SystemInfo,
        durable_lsn: int,
        status_interval_s: float,
        streaming: bool,
        spool_memory_bytes: int,
        proto_version: int = 1,
        parallel: bool = False,
        spool_dir: str | None,
        advance_when_idle: bool = True,
        wire: Wire | None = None,
        received: bytes = b"",
        standby: bool = False,
        tls_version: str = "",
        skip_empty: bool = False,
    ) -> None:
        self._pgconn = pgconn
        # Kept for status: with the own TLS connection libpq's is finished at the start.
        self._tls = bool(pgconn.ssl_in_use)
        self._server_version = int(pgconn.server_version)
        # PostgreSQL 14's empty transactions, dropped before delivery (None: 15+).
        self._empties = EmptyTransactionFilter() if skip_empty else None
        self._standby = standby
        self._tls_version = tls_version
        self.target = target
        self.slot = slot
        self.system = system
        self.status_interval_s = status_interval_s
        self.stats = StreamStats()
        self._streaming = streaming
        #: The negotiated pgoutput protocol; ``parallel``: streaming 'parallel' (protocol 4),
        #: so Stream Abort carries the abort LSN and time.
        self.proto_version = proto_version
        self.parallel = parallel
        self._durable = durable_lsn
        self._durable_lock = threading.Lock()
        self._io_lock = threading.RLock()
        self._received = 0
        self._wal_end = 0
        self._advance_when_idle = advance_when_idle
        # Delivery state for the idle rule: walEnd seen with nothing undelivered before it,
        # whether a delivered transaction lacks its Commit, and the last delivered Commit.
        self._safe_wal_end = 0
        self._open_txn = False
        self._last_commit_end = 0
        self._reported = -1
        # The highest position ever put on the wire (even by a send that failed): the slot
        # cannot have got further through this session (see SlotBound).
        self._highest_sent = 0
        self._last_status = float("-inf")
        self._reply_pending = False
        self._closed = False
        # Streamed transactions, and the chunks due before reading more (a streamed
        # transaction's delivery, lazily). Empty while streaming is off.
        self._streamed = StreamedTransactions(
            target=target, stats=self.stats, proto_version=proto_version, parallel=parallel,
            memory_bytes=spool_memory_bytes, spool_dir=spool_dir)
        routed = self._streamed if streaming else None
        self._reader: Reader = (
            SocketReader(self, wire, received, routed) if wire is not None
            else LibpqReader(self, pgconn, routed)
        )

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        dsn: str,
        slot: str,
        publications: Sequence[str],
        start_lsn: int = 0,
        *,
        proto_version: int | str = 1,
        messages: bool = False,
        binary: bool = False,
        streaming: bool | None = False,
        status_interval_s: float | None = None,
        settings: Mapping[str, str] | None = None,
        spool_memory_bytes: int = 64 << 20,
        spool_dir: str | None = None,
        advance_when_idle: bool = True,
        socket_reader: bool | None = None,
        skip_empty_transactions: bool = False,
        bound: SlotBound | None = None,
    ) -> ReplicationStream:
        """Connect, check the slot and publications, and start streaming.

        ``settings``: extra session GUCs for the walsender (e.g.
        ``logical_decoding_work_mem``). Streaming resumes at
        ``max(start_lsn, slot's confirmed_flush_lsn)``; that position is also the initial
        durable LSN (already confirmed, so reporting it changes nothing).
        ``proto_version``: 1-4, or ``"auto"`` for the highest the server speaks
        (:func:`negotiate_protocol`). ``streaming``: stream in-progress transactions (True),
        not (False), or whenever the protocol allows (None); with protocol 4 it is
        ``streaming 'parallel'``, so Stream Abort carries the abort LSN and time.
        ``socket_reader``: read the socket directly (None: whenever possible; True where
        that is impossible raises). On a TLS connection that means dbmazz's own TLS
        connection (:mod:`dbmazz.source.tlswire`), opened with what libpq resolved; where
        it cannot reproduce libpq's connection, None falls back to libpq's reader.
        ``skip_empty_transactions``: drop Begin/Commit pairs without changes, which
        PostgreSQL 14 sends for every transaction of the database (see
        :func:`drop_empty_transactions`); 15+ never sends them.
        ``bound``: the furthest this consumer let the slot get (:class:`SlotBound`); a slot
        confirmed past it raises :class:`SlotLostError` before streaming starts.
        """
        if str(proto_version) not in PROTOCOL_CHOICES:
            raise ValueError(f"proto_version must be auto or 1-4, not {proto_version!r}")
        if streaming and str(proto_version) == "1":
            raise ValueError("streaming needs proto_version 2 or higher")
        if not publications:
            raise ValueError("at least one publication is required")
        validate_slot_name(slot)
        target = describe_dsn(dsn)
        pgconn = connect_replication(dsn, settings)
        try:
            system = _identify(pgconn, target)
            confirmed = _check_slot(pgconn, slot, system, target)
            if bound is not None:
                bound.check(slot, target, confirmed)
            _check_publications(pgconn, publications, target)
            proto = negotiate_protocol(proto_version, pgconn.server_version, target)
            if streaming and proto < 2:
                raise SourceError(
                    f"PostgreSQL at {target} cannot stream in-progress transactions "
                    "(pgoutput protocol 2 needs PostgreSQL 14+)",
                    "turn streaming off",
                )
            stream_on = proto >= 2 if streaming is None else streaming
            parallel = stream_on and proto >= 4
            if status_interval_s is None:
                [(timeout,)] = simple_query(pgconn, "SHOW wal_sender_timeout", target=target)
                status_interval_s = status_interval_for(parse_duration_ms(timeout or "0"))
            command = start_replication_command(
                slot, start_lsn, publications, proto=proto, messages=messages, binary=binary,
                streaming=("parallel" if parallel else "on") if stream_on else "off")
            encrypted = bool(pgconn.ssl_in_use or pgconn.used_gssapi)
            # For status: psycopg does not wrap PQsslAttribute, the server knows the version.
            [(in_recovery, tls_version)] = simple_query(
                pgconn,
                "SELECT pg_is_in_recovery(), "
                "(SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
                target=target,
            )
            wire: Wire | None = None
            received = b""
            if socket_reader is not False and pgconn.ssl_in_use:
                tls_wire = _open_tls_wire(pgconn, target, required=bool(socket_reader))
                if tls_wire is not None:
                    try:
                        received = start_socket_copy(tls_wire, command, target, slot)
                    except BaseException:
                        tls_wire.close()
                        raise
                    wire, tls_version = tls_wire, tls_wire.tls_version or tls_version
            elif socket_reader and encrypted:
                raise SourceError(
                    f"the socket reader cannot read the connection to {target}: it is "
                    "GSS-encrypted",
                    "set REPLICATION_READER=auto or libpq (or add gssencmode=disable to "
                    "SOURCE_URL)",
                )
            elif socket_reader is not False and not encrypted:
                wire = SocketWire(pgconn.socket)
                received = start_socket_copy(wire, command, target, slot)
            if wire is None:
                start_libpq_copy(pgconn, command, target, slot)
        except BaseException:
            pgconn.finish()
            raise
        stream = cls(
            pgconn,
            target=target,
            slot=slot,
            system=system,
            durable_lsn=max(start_lsn, confirmed),
            status_interval_s=status_interval_s,
            streaming=stream_on,
            spool_memory_bytes=spool_memory_bytes,
            proto_version=proto,
            parallel=parallel,
            standby=in_recovery == "t",
            tls_version=tls_version or "",
            skip_empty=skip_empty_transactions and pgconn.server_version < 150000,
            spool_dir=spool_dir,
            advance_when_idle=advance_when_idle,
            wire=wire,
            received=received,
        )
        if isinstance(wire, TlsWire):
            # The stream reads its own connection: libpq's (a second walsender, idle since
            # the checks) goes now. Closing is polite: libpq sends Terminate.
            pgconn.finish()
        return stream

    @property
    def exhausted(self) -> bool:
        """A live stream never runs out (see :class:`dbmazz.engine.core.ChunkSource`)."""
        return False

    @property
    def reads_socket(self) -> bool:
        """Whether this stream reads the socket directly (else one libpq call a frame)."""
        return isinstance(self._reader, SocketReader)

    @property
    def channel(self) -> SourceChannel:
        return SourceChannel(
            tls=self._tls,
            tls_version=self._tls_version,
            protocol=self.proto_version,
            streaming=("parallel" if self.parallel else "on") if self._streaming else "off",
            server_version=self._server_version,
            standby=self._standby,
            reader=self._reader.name,
        )

    # -- positions -------------------------------------------------------------------

    @property
    def received_lsn(self) -> int:
        """Highest XLogData dataStart received."""
        return self._received

    @property
    def durable_lsn(self) -> int:
        """The highest LSN passed to :meth:`confirm` (initially the resume position).
        Status updates never report less (see :meth:`_flush_position` for when more)."""
        return self._durable

    @property
    def server_wal_end(self) -> int:
        """Highest walEnd seen in a keepalive or XLogData (how far the server has read)."""
        return self._wal_end

    @property
    def reported_lsn(self) -> int:
        """The flush position last sent to the server (-1 before the first update)."""
        return self._reported

    @property
    def highest_sent_lsn(self) -> int:
        """The highest flush position this session tried to send (0 before the first)."""
        return self._highest_sent

    def confirm(self, lsn: int) -> None:
        """Declare everything up to ``lsn`` (a Commit end LSN) durable. Never lowers it."""
        with self._durable_lock:
            if lsn > self._durable:
                self._durable = lsn

    # -- reading ---------------------------------------------------------------------

    def read_chunk(self, max_bytes: int = 4 << 20, timeout_s: float = 0.1) -> WalChunk | None:
        """Whatever whole messages are available, up to about ``max_bytes`` of frames.

        Waits at most ``timeout_s`` for the first frame; returns None if no message is
        ready (nothing came, or only parts of a streamed transaction, which are held until
        it commits). Also sends a status update when one is due.
        """
        with self._io_lock:
            self._check_open()
            def next_chunk() -> WalChunk | None:
                # A streamed transaction's delivery first (its Begin, its changes, its
                # Commit: one chunk each), then the socket.
                chunk = self._streamed.next_pending()
                return chunk if chunk is not None else self._reader.read(max_bytes, timeout_s)

            # The empty-transaction filter sees every chunk in delivery order: a Begin it
            # holds back must not be overtaken by the rest of its own transaction.
            chunk = next_chunk() if self._empties is None else self._empties.next(next_chunk)
            if chunk is not None:
                self._note_delivery(chunk)
            elif not self._streamed.deliveries:
                self._safe_wal_end = self._wal_end  # everything read was handed out
            self.status_if_due()
            return chunk

    # -- what the reader reports (ReaderHost) ---------------------------------------

    def on_keepalive(self, frame: memoryview, *, clean: bool) -> None:
        """A primary keepalive; ``clean``: nothing read before it awaits handing out."""
        wal_end, _sent, reply = KEEPALIVE.unpack_from(frame, 1)
        self.stats.keepalives += 1
        if wal_end > self._wal_end:
            self._wal_end = wal_end
        if clean:  # nothing read in this call is waiting to be handed out
            self._safe_wal_end = self._wal_end
        if reply:
            self.stats.replies_requested += 1
            self._reply_pending = True
            self._send_status(time.monotonic())

    def _note_delivery(self, chunk: WalChunk) -> None:
        """Track open transactions and the last Commit handed out (vectorized)."""
        self.stats.messages += len(chunk)
        self.stats.payload_bytes += chunk.payload_bytes
        starts = chunk.starts
        types = chunk.data[starts]
        begins = np.flatnonzero(types == BEGIN)
        commits = np.flatnonzero(types == COMMIT)
        last_b = int(begins[-1]) if len(begins) else -1
        last_c = int(commits[-1]) if len(commits) else -1
        if last_c > last_b:
            at = int(starts[last_c]) + 10  # 'C', flags, commit LSN, then end LSN
            self._last_commit_end = int.from_bytes(chunk.data[at : at + 8].tobytes(), "big")
            self._open_txn = False
        elif last_b > last_c:
            self._open_txn = True
        if not self._streamed.deliveries:
            self._safe_wal_end = self._wal_end

    def _flush_position(self) -> int:
        """What to report: the durable LSN, or past it when nothing delivered is unconfirmed.

        Never lower than a previous report: a reported position was safe when sent, and
        every transaction delivered later commits after it (the server had read that far).
        PostgreSQL 15 would otherwise move confirmed_flush_lsn backwards.
        """
        position = self._durable
        if (
            self._advance_when_idle
            and not self._open_txn
            and not self._streamed.deliveries
            and not (self._empties is not None and self._empties.holding)
            and position >= self._last_commit_end
        ):
            position = max(position, self._safe_wal_end)
        return max(position, self._reported)

    def note_position(self, frame: memoryview) -> None:
        """The last XLogData of a read: its dataStart and walEnd."""
        data_start, wal_end = XLOG_POS.unpack_from(frame, 1)
        if data_start > self._received:
            self._received = data_start
        if wal_end > self._wal_end:
            self._wal_end = wal_end

    # -- status updates --------------------------------------------------------------

    def keepalive(self, force: bool = False) -> None:
        """Send a status update if one is due (or ``force``). Does not read the socket, so
        it keeps the walsender alive while reading is paused without buffering anything."""
        with self._io_lock:
            self._check_open()
            now = time.monotonic()
            if force:
                self._send_status(now)
            else:
                self.status_if_due(now)

    def status_if_due(self, now: float | None = None) -> None:
        """Send a status update if one is due (also called by the reader while it waits)."""
        now = time.monotonic() if now is None else now
        elapsed = now - self._last_status
        if (
            self._reply_pending
            or elapsed >= self.status_interval_s
            # A newly durable LSN goes out at the reader's next step (≤ one wait slice,
            # 20 ms, while idle): the slot follows durability within the flush interval.
            # One update per confirm, i.e. per flush. Never ahead of it: what is sent is
            # _flush_position(), which only passes the durable LSN by the idle rule.
            or self._durable > self._reported
            # The idle rule's advances (walEnd past confirmed work) within a second.
            or (
                self._flush_position() != self._reported
                and elapsed >= min(1.0, self.status_interval_s)
            )
        ):
            self._send_status(now)

    def _send_status(self, now: float) -> None:
        position = self._flush_position()
        # Before the send: one that fails midway may still have reached the server.
        self._highest_sent = max(self._highest_sent, position)
        self._reader.send(status_update(position))
        self._last_status = now
        self._reported = position
        self._reply_pending = False
        self.stats.status_updates += 1

    # -- errors and closing ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SourceError(f"replication stream for slot {self.slot!r} is closed")

    def close(self, timeout_s: float = 5.0) -> None:
        """Report the durable LSN one last time, end COPY and disconnect (idempotent)."""
        with self._io_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._reader.connected:
                    self._send_status(time.monotonic())
                    self._reader.end_copy(timeout_s)
            except (psycopg.Error, SourceError, OSError):
                pass  # best effort: a lower confirmed position only means re-delivery
            finally:
                self._reader.close()
                self._pgconn.finish()
                self._streamed.close()

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SlotBound:
    """The furthest a consumer's sessions let the slot's ``confirmed_flush_lsn`` get.

    Only status updates move it, and every update a session sends is counted, so when the
    consumer opens the next session (a reconnect) and finds the slot past this bound,
    someone else moved it: the slot was dropped and created again under the same name
    (WAL in between was never decoded for it), advanced (``pg_replication_slot_advance``),
    or read by another consumer. Streaming from it would skip changes silently.
    """

    def __init__(self, known: int, on_moved: Callable[[str], None] | None = None) -> None:
        #: Where the slot was known to be before the first session (setup read it; a
        #: checkpoint ahead of it was written before its confirmation was sent).
        self._known = known
        self._last: ReplicationStream | None = None
        #: Told the error's message before it is raised (the engine records it, so a
        #: restart refuses the slot too).
        self._on_moved = on_moved

    @property
    def lsn(self) -> int:
        sent = self._last.highest_sent_lsn if self._last is not None else 0
        return max(self._known, sent)

    def track(self, stream: ReplicationStream) -> None:
        """``stream`` is the consumer's session now (its updates count from here)."""
        self._known = self.lsn
        self._last = stream

    def check(self, slot: str, target: str, confirmed: int) -> None:
        """Raise :class:`SlotLostError` when the slot is confirmed past the bound."""
        bound = self.lsn
        if confirmed <= bound:
            return
        error = _slot_moved(slot, target, confirmed, bound)
        if self._on_moved is not None:
            try:
                self._on_moved(error.message)
            except (psycopg.Error, SourceError) as exc:  # the refusal stands regardless
                log.warning("could not record that slot %s cannot be trusted: %s", slot, exc)
        raise error


def _slot_moved(slot: str, target: str, confirmed: int, bound: int) -> SlotLostError:
    return SlotLostError(
        f"replication slot {slot!r} on {target} is confirmed up to {format_lsn(confirmed)}, "
        f"past {format_lsn(bound)}, the furthest dbmazz confirmed to it: it was dropped and "
        "created again, advanced, or read by another consumer outside this dbmazz, so "
        "changes in between may not have been captured",
        slot_moved_hint(slot),
    )


def _open_tls_wire(pgconn: PGconn, target: str, *, required: bool) -> TlsWire | None:
    """dbmazz's own TLS connection with libpq's parameters; None (logged once) when it
    cannot reproduce libpq's and libpq's reader is to be used instead."""
    try:
        return TlsWire(tls_params(pgconn), target)
    except TlsWireUnavailable as exc:
        reason = str(exc)
        if required:
            raise SourceError(
                f"the socket reader cannot read the TLS connection to {target}: {reason}",
                "set REPLICATION_READER=auto (reads through libpq then) or libpq",
            ) from None
        if (target, reason) not in _FALLBACKS_LOGGED:
            _FALLBACKS_LOGGED.add((target, reason))
            log.warning(
                "replication from %s is read through libpq, one call per message (more CPU "
                "than dbmazz's own TLS reader): %s", target, reason)
        return None


def _identify(pgconn: PGconn, target: str) -> SystemInfo:
    [(system_id, timeline, xlogpos, dbname)] = simple_query(
        pgconn, "IDENTIFY_SYSTEM", target=target
    )
    return SystemInfo(
        system_id=system_id or "",
        timeline=int(timeline or 0),
        xlogpos=parse_lsn(xlogpos or "0/0"),
        dbname=dbname,
    )


def _check_slot(pgconn: PGconn, slot: str, system: SystemInfo, target: str) -> int:
    """Fail early, with the fix, on a missing/foreign/lost/busy slot; → confirmed_flush_lsn."""
    rows = simple_query(
        pgconn,
        "SELECT plugin, slot_type, database, active_pid, wal_status, confirmed_flush_lsn "
        f"FROM pg_replication_slots WHERE slot_name = {quote_literal(slot)}",
        target=target,
        slot=slot,
    )
    if not rows:
        raise server_error(
            sqlstate="42704",
            message=f'replication slot "{slot}" does not exist',
            target=target,
            slot=slot,
        )
    plugin, slot_type, database, active_pid, wal_status, confirmed = rows[0]
    if slot_type != "logical" or plugin != "pgoutput" or database != system.dbname:
        raise SourceError(
            f"replication slot {slot!r} on {target} is a {slot_type} slot "
            f"(plugin {plugin}, database {database}), not a pgoutput slot of database "
            f"{system.dbname}",
            "choose another SLOT_NAME, or drop that slot if it is unused",
        )
    if wal_status == "lost":
        raise server_error(
            sqlstate="55000",
            message=f'can no longer get changes from replication slot "{slot}"',
            target=target,
            slot=slot,
        )
    if active_pid is not None:
        raise server_error(
            sqlstate="55006",
            message=f'replication slot "{slot}" is active for PID {active_pid}',
            target=target,
            slot=slot,
        )
    return parse_lsn(confirmed) if confirmed else 0


def _check_publications(pgconn: PGconn, publications: Sequence[str], target: str) -> None:
    names = ", ".join(quote_literal(p) for p in publications)
    rows = simple_query(
        pgconn, f"SELECT pubname FROM pg_publication WHERE pubname IN ({names})", target=target
    )
    missing = sorted(set(publications) - {r[0] for r in rows})
    if missing:
        raise SourceError(
            f"publication(s) {', '.join(map(repr, missing))} do not exist on {target}",
            "run `dbmazz setup` to create the publication, then restart",
        )
