"""The logical replication stream: one ``replication=database`` connection in CopyBoth mode.

Connected through psycopg 3's libpq wrapper (:class:`psycopg.PGconn`; psycopg has no
high-level replication API). Once streaming, the reader takes the walsender's bytes straight
from the socket (:mod:`dbmazz.source.wire`), megabytes per read, and splits them into
messages without a Python step per message (:mod:`dbmazz.source.frames`): the bytes read
become the :class:`~dbmazz.source.chunk.WalChunk` with one copy, frame headers left in
place. On SSL/GSS-encrypted connections it reads one CopyData frame per libpq call instead.
Streamed in-progress transactions (protocol 2+, ``streaming 'parallel'`` with protocol 4
on PostgreSQL 16+, see :func:`negotiate_protocol`) are split off at their Stream
Start/Stop/Commit/Abort messages, spooled and delivered at Stream Commit as an ordinary
``B … C`` run. Everything else (routing, decoding) happens downstream, vectorized over the
chunks this module produces.

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
import re
import selectors
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.pq.abc import PGconn, PGresult

from dbmazz.errors import (
    ProtocolError,
    SlotInUseError,
    SlotLostError,
    SourceConnectionError,
    SourceError,
)
from dbmazz.lsn import format_lsn, parse_lsn
from dbmazz.source.chunk import WalChunk
from dbmazz.source.frames import FRAME_HEADER, XLOG_HEADER, be_u64_at, split_messages, xlog_chunk
from dbmazz.source.names import describe_dsn, quote_ident, quote_literal, validate_slot_name
from dbmazz.source.spool import Spool
from dbmazz.source.wire import (
    COPY_DONE,
    LOW_WATER_BYTES,
    SocketWire,
    copy_data,
    error_fields,
    query_message,
)

#: Session settings that make text output of every type deterministic.
SESSION_SETTINGS: dict[str, str] = {
    "DateStyle": "ISO",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "IntervalStyle": "postgres",
}

#: Upper bound for the standby status interval (pg_recvlogical's and subscribers' default).
MAX_STATUS_INTERVAL_S = 10.0

log = logging.getLogger(__name__)

_PG_EPOCH_UNIX_S = 946_684_800  # 2000-01-01 00:00:00 UTC

_W, _K = ord("w"), ord("k")
_B, _C = ord("B"), ord("C")
_S, _E, _STREAM_COMMIT, _A, _O = ord("S"), ord("E"), ord("c"), ord("A"), ord("O")
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

_STATUS = struct.Struct(">cQQQqB")
_KEEPALIVE = struct.Struct(">QqB")
_XLOG_POS = struct.Struct(">QQ")
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT_BODY = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_STREAM_ABORT_PARALLEL = struct.Struct(">IIQq")  # protocol 4, streaming 'parallel'
_STREAM_CONTROL = np.array([_S, _E, _STREAM_COMMIT, _A], dtype=np.uint8)

#: Highest pgoutput protocol each server major speaks: 2 (streaming of in-progress
#: transactions) since PostgreSQL 14, 3 (two-phase) since 15, 4 (parallel streaming, Stream
#: Abort with abort LSN and time) since 16.
_PROTOCOL_SINCE = ((160000, 4), (150000, 3), (140000, 2))
PROTOCOL_CHOICES = ("auto", "1", "2", "3", "4")


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
_BEGIN = struct.Struct(">cQqI")
_COMMIT = struct.Struct(">cBQQq")


# --------------------------------------------------------------------------------------
# Connection strings and errors
# --------------------------------------------------------------------------------------


def _escape_option(value: str) -> str:
    # libpq splits `options` on unescaped spaces; backslash escapes both.
    return value.replace("\\", "\\\\").replace(" ", "\\ ")


def replication_conninfo(dsn: str, settings: Mapping[str, str] | None = None) -> str:
    """The DSN turned into a ``replication=database`` conninfo with deterministic session
    settings (merged after any ``options`` the DSN already carries)."""
    info = conninfo_to_dict(dsn)
    merged = {**SESSION_SETTINGS, **(settings or {})}
    ours = " ".join(f"-c {_escape_option(f'{k}={v}')}" for k, v in merged.items())
    existing = str(info.get("options") or "").strip()
    extra: dict[str, str] = {
        "replication": "database",
        "client_encoding": "UTF8",
        "options": f"{existing} {ours}".strip(),
    }
    if not info.get("connect_timeout"):
        extra["connect_timeout"] = "10"
    if not info.get("application_name"):
        extra["application_name"] = "dbmazz"
    return make_conninfo(dsn, **extra)


def connect_error(text: str, target: str) -> SourceError:
    """Classify a libpq connection failure (its text never contains the password)."""
    text = " ".join(text.split())
    low = text.lower()
    if "password authentication failed" in low or "authentication failed" in low:
        return SourceError(
            f"PostgreSQL at {target} rejected the credentials: {text}",
            "check the user and password of SOURCE_URL",
        )
    if "superuser or replication role" in low or "permission denied to start wal sender" in low:
        return SourceError(
            f"the role connecting to {target} may not open replication connections",
            "grant it with `ALTER ROLE <user> WITH REPLICATION` (run as a superuser)",
        )
    if "no pg_hba.conf entry" in low:
        return SourceError(
            f"PostgreSQL at {target} refuses the connection: {text}",
            "add a pg_hba.conf line allowing this user to connect to this database "
            "(logical replication matches the database name, not the `replication` keyword)"
            " and reload PostgreSQL",
        )
    if "database" in low and "does not exist" in low:
        return SourceError(f"{text} (at {target})", "check the database name in SOURCE_URL")
    return SourceConnectionError(
        f"cannot connect to PostgreSQL at {target}: {text}",
        "check the host and port of SOURCE_URL and that the server is running (a connection "
        "lost while streaming is retried with backoff)",
    )


def server_error(
    *, sqlstate: str | None, message: str, target: str, slot: str | None = None
) -> SourceError:
    """Classify an error the server reported on a replication connection.

    By SQLSTATE first; the message text only refines a SQLSTATE that does not say which
    object is meant (42704 ``undefined_object``: slot or publication; 55000: an invalidated
    slot among other prerequisite failures) or stands in when there is no SQLSTATE (a lost
    connection: libpq's text is all there is)."""
    text = " ".join(message.split())
    low = text.lower()
    state = sqlstate or ""
    slot_lost = "can no longer get changes from replication slot" in low or "invalidated" in low
    if state == "55006" or (not state and "replication slot" in low and "is active" in low):
        return SlotInUseError(
            f"replication slot {slot!r} on {target} is in use by another session: {text}",
            "stop the other consumer (see pg_stat_replication); after a crash the old "
            "session releases the slot within wal_sender_timeout",
        )
    if state == "42704" or (not state and "does not exist" in low):
        if "publication" in low:
            return SourceError(
                f"{text} (on {target})",
                "run `dbmazz setup` to create the publication, then restart",
            )
        if "replication slot" in low:
            return SlotLostError(
                f"replication slot {slot!r} does not exist on {target}",
                "if dbmazz never streamed from it, `dbmazz setup` creates it; if it did, the "
                "slot was dropped outside dbmazz and changes since the last checkpoint were "
                f"not captured: delete its row from dbmazz_checkpoints (slot_name = '{slot}') "
                "and run with SNAPSHOT=initial to start over",
            )
    if state in ("55000", "") and slot_lost:
        return SlotLostError(
            f"replication slot {slot!r} on {target} was invalidated: {text}",
            "PostgreSQL removed WAL the slot still needed (usually max_slot_wal_keep_size "
            "was exceeded while dbmazz was behind or stopped). Changes were lost: drop the "
            "slot, run setup again and take a new snapshot (SNAPSHOT=initial); raise "
            "max_slot_wal_keep_size to avoid it",
        )
    if state[:2] in ("08", "57", "53") or not state:
        return SourceConnectionError(
            f"replication connection to {target} failed: {text}",
            "dbmazz reconnects and resumes from the last confirmed LSN",
        )
    return SourceError(f"replication on {target} failed: {text} (SQLSTATE {state})")


def _result_error(res: PGresult, target: str, slot: str | None) -> SourceError:
    def field(code: pq.DiagnosticField) -> str:
        raw = res.error_field(code)
        return raw.decode("utf-8", "replace") if raw else ""

    message = field(pq.DiagnosticField.MESSAGE_PRIMARY) or res.error_message.decode(
        "utf-8", "replace"
    )
    detail = field(pq.DiagnosticField.MESSAGE_DETAIL)
    return server_error(
        sqlstate=field(pq.DiagnosticField.SQLSTATE) or None,
        message=f"{message} {detail}".strip(),
        target=target,
        slot=slot,
    )


def connect_replication(dsn: str, settings: Mapping[str, str] | None = None) -> PGconn:
    """A blocking libpq replication connection, or a classified error."""
    target = describe_dsn(dsn)
    try:
        conninfo = replication_conninfo(dsn, settings)
    except psycopg.ProgrammingError as exc:
        raise SourceError(f"invalid PostgreSQL connection string for {target}: {exc}") from None
    pgconn = pq.PGconn.connect(conninfo.encode())
    if pgconn.status != pq.ConnStatus.OK:
        text = pgconn.get_error_message()
        pgconn.finish()
        raise connect_error(text, target)
    return pgconn


def simple_query(
    pgconn: PGconn, query: str, *, target: str, slot: str | None = None
) -> list[tuple[str | None, ...]]:
    """Run one simple-protocol statement (the only kind a walsender accepts)."""
    try:
        res = pgconn.exec_(query.encode())
    except psycopg.OperationalError as exc:
        raise SourceConnectionError(f"connection to {target} lost: {exc}") from None
    if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
        raise _result_error(res, target, slot)
    return [
        tuple(
            None if (v := res.get_value(r, c)) is None else v.decode()
            for c in range(res.nfields)
        )
        for r in range(res.ntuples)
    ]


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


def _pg_now_us() -> int:
    return int((time.time() - _PG_EPOCH_UNIX_S) * 1_000_000)


def _start_copy(wire: SocketWire, command: str, target: str, slot: str) -> bytes:
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
            fields = error_fields(message.body)
            failure = server_error(
                sqlstate=fields.get("C"),
                message=f"{fields.get('M', '')} {fields.get('D', '')}".strip(),
                target=target,
                slot=slot,
            )
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


def _run_of(chunk: WalChunk, lo: int, hi: int) -> WalChunk:
    """Messages ``lo:hi`` of a chunk with frame gaps (views, no copy)."""
    assert chunk.ends is not None
    end = int(chunk.ends[hi - 1])
    return WalChunk(
        data=chunk.data[:end],
        offsets=np.append(chunk.offsets[lo:hi], end).astype(np.int64),
        lsns=chunk.lsns[lo:hi],
        ends=chunk.ends[lo:hi],
    )


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
    pair = (kinds[:-1] == _B) & (kinds[1:] == _C)
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


# --------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------


@dataclass
class StreamStats:
    """Counters for metrics and tests; updated by the reading thread only."""

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
    #: "socket" or "libpq".
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
        wire: SocketWire | None = None,
        received: bytes = b"",
        standby: bool = False,
        tls_version: str = "",
        skip_empty: bool = False,
    ) -> None:
        self._pgconn = pgconn
        self._skip_empty = skip_empty
        self._standby = standby
        self._tls_version = tls_version
        # Socket reading (see the module docstring): the receive buffer and how much of it
        # holds unread bytes (a partial message at its head between reads).
        self._wire = wire
        if wire is not None:
            wire.set_low_water(LOW_WATER_BYTES)
        self._rbuf = bytearray(max(_READ_BUFFER, len(received)))
        self._rbuf[: len(received)] = received
        self._rlen = len(received)
        self._eof = False
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
        self._spool_memory = spool_memory_bytes
        self._spool_dir = spool_dir
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
        self._last_status = float("-inf")
        self._reply_pending = False
        self._closed = False
        # Chunks due before reading more: a streamed transaction's delivery, lazily.
        self._pending: deque[Iterator[WalChunk]] = deque()
        self._spools: dict[int, Spool] = {}
        self._in_stream: Spool | None = None
        self._selector = selectors.DefaultSelector()
        self._selector.register(pgconn.socket, selectors.EVENT_READ)

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
        ``socket_reader``: read the socket directly (None: whenever the connection is not
        encrypted; True where that is impossible raises).
        ``skip_empty_transactions``: drop Begin/Commit pairs without changes, which
        PostgreSQL 14 sends for every transaction of the database (see
        :func:`drop_empty_transactions`); 15+ never sends them.
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
            options = [
                f"proto_version '{proto}'",
                "publication_names "
                + quote_literal(",".join(quote_ident(p) for p in publications)),
            ]
            if messages:
                options.append("messages 'true'")
            if binary:
                options.append("binary 'true'")
            if stream_on:
                # 'parallel' (protocol 4) only changes what Stream Abort carries for a
                # client that applies serially: it adds the abort LSN and time.
                options.append("streaming 'parallel'" if parallel else "streaming 'on'")
            command = (
                f"START_REPLICATION SLOT {quote_ident(slot)} LOGICAL {format_lsn(start_lsn)} "
                f"({', '.join(options)})"
            )
            encrypted = bool(pgconn.ssl_in_use or pgconn.used_gssapi)
            # For status: psycopg does not wrap PQsslAttribute, the server knows the version.
            [(in_recovery, tls_version)] = simple_query(
                pgconn,
                "SELECT pg_is_in_recovery(), "
                "(SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
                target=target,
            )
            if socket_reader and encrypted:
                raise SourceError(
                    f"the socket reader cannot read the connection to {target}: it is "
                    "encrypted (SSL/GSS)",
                    "set REPLICATION_READER=auto or libpq",
                )
            wire: SocketWire | None = None
            received = b""
            if socket_reader is False or encrypted:
                pgconn.send_query(command.encode())
                res = pgconn.get_result()
                if res is None or res.status != pq.ExecStatus.COPY_BOTH:
                    if res is None:
                        raise SourceConnectionError(
                            f"no answer to START_REPLICATION from {target}")
                    raise _result_error(res, target, slot)
            else:
                wire = SocketWire(pgconn.socket)
                received = _start_copy(wire, command, target, slot)
        except BaseException:
            pgconn.finish()
            raise
        return cls(
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

    @property
    def exhausted(self) -> bool:
        """A live stream never runs out (see :class:`dbmazz.engine.core.ChunkSource`)."""
        return False

    @property
    def reads_socket(self) -> bool:
        """Whether this stream reads the socket directly (else one libpq call a frame)."""
        return self._wire is not None

    @property
    def channel(self) -> SourceChannel:
        pgconn = self._pgconn
        return SourceChannel(
            tls=bool(pgconn.ssl_in_use),
            tls_version=self._tls_version,
            protocol=self.proto_version,
            streaming=("parallel" if self.parallel else "on") if self._streaming else "off",
            server_version=int(pgconn.server_version),
            standby=self._standby,
            reader="socket" if self._wire is not None else "libpq",
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
            chunk = self._next_pending()
            if chunk is None:
                chunk = self._read(max_bytes, timeout_s)
                if chunk is not None and self._skip_empty:
                    chunk = drop_empty_transactions(chunk)
            if chunk is not None:
                self._note_delivery(chunk)
            elif not self._pending:
                self._safe_wal_end = self._wal_end  # everything read was handed out
            self._status_if_due()
            return chunk

    def _read(self, max_bytes: int, timeout_s: float) -> WalChunk | None:
        if self._wire is not None:
            return self._read_socket(self._wire, max_bytes, timeout_s)
        pgconn = self._pgconn
        streaming = self._streaming
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
                    if streaming and self._route_streamed(frame):
                        if self._pending:  # a streamed transaction committed
                            break
                        continue
                    offsets.append(len(buf))
                    headers += frame[1:9]
                    buf += frame[XLOG_HEADER:]
                elif kind == _K:
                    self._on_keepalive(frame, clean=not offsets and not self._pending)
                else:
                    raise ProtocolError(
                        f"unexpected CopyData frame type {chr(kind)!r} from {self.target} "
                        f"after LSN {format_lsn(self._received)}"
                    )
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
                if offsets or self._pending:
                    break
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout_s
                remaining = deadline - now
                if remaining <= 0:
                    break
                self._status_if_due(now)
                if not self._selector.select(remaining):
                    continue  # re-check once; the deadline ends the loop
                try:
                    pgconn.consume_input()
                except psycopg.OperationalError as exc:
                    raise self._lost(exc) from None
                continue
            raise self._copy_ended()
        if last is not None:
            self._note_position(last)
            self.stats.frames += frames
        if not offsets:
            return self._next_pending()
        # Messages read before a streamed commit come before it (pending is then drained).
        return xlog_chunk(buf, offsets, headers)

    def _read_socket(self, wire: SocketWire, max_bytes: int, timeout_s: float
                     ) -> WalChunk | None:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            self._fill(wire, max_bytes)
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
            self._status_if_due(now)
            # The socket's low-water mark (SocketWire) wakes this when that much is there;
            # the slice bounds how long a few small messages wait.
            wire.wait_readable(min(remaining, _WAIT_SLICE_S))
            waited = True

    def _fill(self, wire: SocketWire, max_bytes: int) -> None:
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
                    got = wire.read_into(view[self._rlen :])
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
        if not is_w.all():
            others = np.flatnonzero(~is_w)
            for rank, i in enumerate(others.tolist()):
                start, end = int(starts[i]), int(ends[i])
                # Clean: no XLogData read before it in this read is still to be handed out.
                self._on_message(data[start:end].tobytes(), clean=(i == rank
                                                                      and not self._pending))
            starts, ends = starts[is_w], ends[is_w]
        if len(starts):
            lo, hi = int(starts[0]), int(ends[-1])
            own = data[lo:hi].copy()
            starts = starts - lo
            ends = ends - lo
            last = int(starts[-1]) + FRAME_HEADER
            self._note_position(memoryview(own[last : last + XLOG_HEADER].tobytes()))
            self.stats.frames += len(starts)
            chunk = WalChunk(
                data=own,
                offsets=np.append(starts + (FRAME_HEADER + XLOG_HEADER), ends[-1]),
                lsns=be_u64_at(own, starts + FRAME_HEADER + 1),
                ends=ends,
            )
            if self._streaming:
                chunk = self._route_run(chunk)
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
        """A backend message other than XLogData, read from the socket."""
        kind = message[0]
        if kind == _D:
            sub = message[FRAME_HEADER] if len(message) > FRAME_HEADER else 0
            if sub == _K:
                self._on_keepalive(memoryview(message)[FRAME_HEADER:], clean=clean)
                return
            raise ProtocolError(
                f"unexpected CopyData frame type {chr(sub)!r} from {self.target} "
                f"after LSN {format_lsn(self._received)}"
            )
        if kind == _ERROR:
            fields = error_fields(message[FRAME_HEADER:])
            raise server_error(
                sqlstate=fields.get("C"),
                message=f"{fields.get('M', '')} {fields.get('D', '')}".strip(),
                target=self.target,
                slot=self.slot,
            )
        if kind in _COPY_ENDED:
            # CopyDone, or what follows it (at shutdown the walsender may send only those).
            raise SourceConnectionError(
                f"the server at {self.target} ended replication of slot {self.slot!r}",
                "it is probably shutting down; dbmazz reconnects and resumes",
            )
        if kind == _NOTICE:
            fields = error_fields(message[FRAME_HEADER:])
            log.info("notice from %s: %s", self.target, fields.get("M", ""))
            return
        if kind in (_PARAMETER_STATUS, _NOTIFICATION):
            return
        raise ProtocolError(
            f"unexpected protocol message {chr(kind)!r} from {self.target} while streaming "
            f"(after LSN {format_lsn(self._received)})"
        )

    def _route_run(self, chunk: WalChunk) -> WalChunk | None:
        """Socket reader with streaming on: split a run of XLogData at the stream control
        messages (Start/Stop/Commit/Abort, few per run). Runs inside a stream block go to
        their transaction's spool whole; ordinary runs and committed streamed transactions
        are queued in arrival order. Nothing is pending here (read_chunk drained it)."""
        payload = chunk.offsets[:-1]
        control = np.flatnonzero(np.isin(chunk.data[payload], _STREAM_CONTROL))
        if not len(control) and self._in_stream is None:
            return chunk
        assert chunk.ends is not None
        prev = 0
        for at in [*control.tolist(), len(chunk)]:
            if at > prev:
                run = _run_of(chunk, prev, at)
                if self._in_stream is not None:
                    self._in_stream.append_run(run)
                else:
                    self._pending.append(iter((run,)))
            if at < len(chunk):
                start = int(payload[at]) - XLOG_HEADER
                frame = memoryview(chunk.data[start : int(chunk.ends[at])].tobytes())
                self._route_streamed(frame)
            prev = at + 1
        return self._next_pending()

    def _next_pending(self) -> WalChunk | None:
        while self._pending:
            chunk = next(self._pending[0], None)
            if chunk is not None:
                return chunk
            self._pending.popleft()
        return None

    def _route_streamed(self, frame: memoryview) -> bool:
        """Handle protocol-2 stream messages; False means "an ordinary message"."""
        kind = frame[XLOG_HEADER]
        spool = self._in_stream
        if spool is not None:
            if kind == _E:
                self._in_stream = None
            elif kind == _S:
                raise ProtocolError(f"Stream Start inside a stream block from {self.target}")
            else:
                spool.append(frame)
            return True
        if kind == _S:
            xid, _first = _STREAM_START.unpack_from(frame, XLOG_HEADER + 1)
            spool = self._spools.get(xid)
            if spool is None:
                spool = self._spools[xid] = Spool(xid, self._spool_memory, self._spool_dir)
            self._in_stream = spool
            self.stats.stream_blocks += 1
            return True
        if kind == _A:
            xid, subxid = self._stream_abort(frame)
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
        if kind == _STREAM_COMMIT:
            self._stream_commit(frame)
            return True
        return False

    def _stream_abort(self, frame: memoryview) -> tuple[int, int]:
        """Stream Abort's (xid, subxid); with parallel streaming it also carries the abort
        LSN and time (protocol 4), kept in the stats."""
        size = len(frame) - XLOG_HEADER - 1
        layout = _STREAM_ABORT_PARALLEL if self.parallel else _STREAM_ABORT
        if size != layout.size:
            raise ProtocolError(
                f"Stream Abort of {size} bytes from {self.target} (expected {layout.size} "
                f"for protocol {self.proto_version}"
                + (" with parallel streaming)" if self.parallel else ")")
            )
        if self.parallel:
            xid, subxid, abort_lsn, _abort_time = layout.unpack_from(frame, XLOG_HEADER + 1)
            self.stats.last_abort_lsn = abort_lsn
            return xid, subxid
        xid, subxid = layout.unpack_from(frame, XLOG_HEADER + 1)
        return xid, subxid

    def _stream_commit(self, frame: memoryview) -> None:
        xid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT_BODY.unpack_from(
            frame, XLOG_HEADER + 1
        )
        spool = self._spools.pop(xid, None)
        if spool is None:
            raise ProtocolError(
                f"Stream Commit for transaction {xid} that never streamed, from {self.target}"
            )
        (data_start,) = struct.unpack_from(">Q", frame, 1)
        begin = WalChunk.from_messages([_BEGIN.pack(b"B", commit_lsn, ts, xid)], [0])
        commit = WalChunk.from_messages(
            [_COMMIT.pack(b"C", flags, commit_lsn, end_lsn, ts)], [data_start]
        )
        self.stats.streamed_committed += 1
        self.stats.spilled_bytes += spool.spilled
        self._pending.append(spool.deliver(begin, commit))

    def _on_keepalive(self, frame: memoryview, *, clean: bool) -> None:
        wal_end, _sent, reply = _KEEPALIVE.unpack_from(frame, 1)
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
        begins = np.flatnonzero(types == ord("B"))
        commits = np.flatnonzero(types == ord("C"))
        last_b = int(begins[-1]) if len(begins) else -1
        last_c = int(commits[-1]) if len(commits) else -1
        if last_c > last_b:
            at = int(starts[last_c]) + 10  # 'C', flags, commit LSN, then end LSN
            self._last_commit_end = int.from_bytes(chunk.data[at : at + 8].tobytes(), "big")
            self._open_txn = False
        elif last_b > last_c:
            self._open_txn = True
        if not self._pending:
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
            and not self._pending
            and position >= self._last_commit_end
        ):
            position = max(position, self._safe_wal_end)
        return max(position, self._reported)

    def _note_position(self, frame: memoryview) -> None:
        data_start, wal_end = _XLOG_POS.unpack_from(frame, 1)
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
                self._status_if_due(now)

    def _status_if_due(self, now: float | None = None) -> None:
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
        message = _STATUS.pack(b"r", position, position, position, _pg_now_us(), 0)
        try:
            if self._wire is not None:
                self._wire.write_all(copy_data(message))
            else:
                self._pgconn.put_copy_data(message)
                self._pgconn.flush()
        except (psycopg.OperationalError, OSError) as exc:
            raise self._lost(exc) from None
        self._last_status = now
        self._reported = position
        self._reply_pending = False
        self.stats.status_updates += 1

    # -- errors and closing ----------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SourceError(f"replication stream for slot {self.slot!r} is closed")

    def _lost(self, exc: Exception) -> SourceError:
        # libpq's text carries the server's last error, if it sent one before closing.
        return server_error(
            sqlstate=None,
            message=f"connection lost (slot {self.slot!r}): {exc}",
            target=self.target,
            slot=self.slot,
        )

    def _copy_ended(self) -> SourceError:
        res = self._pgconn.get_result()
        if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
            return _result_error(res, self.target, self.slot)
        return SourceConnectionError(
            f"the server at {self.target} ended replication of slot {self.slot!r}",
            "it is probably shutting down; dbmazz reconnects and resumes",
        )

    def close(self, timeout_s: float = 5.0) -> None:
        """Report the durable LSN one last time, end COPY and disconnect (idempotent)."""
        with self._io_lock:
            if self._closed:
                return
            self._closed = True
            pgconn = self._pgconn
            try:
                if self._wire is not None and not self._eof:
                    self._send_status(time.monotonic())
                    self._wire.set_low_water(1)
                    self._wire.write_all(COPY_DONE, timeout_s)
                    self._drain_socket(self._wire, timeout_s)
                elif self._wire is None and pgconn.status == pq.ConnStatus.OK:
                    self._send_status(time.monotonic())
                    pgconn.put_copy_end()
                    pgconn.flush()
                    self._drain(timeout_s)
            except (psycopg.Error, SourceError, OSError):
                pass  # best effort: a lower confirmed position only means re-delivery
            finally:
                self._selector.close()
                pgconn.finish()
                for spool in self._spools.values():
                    spool.discard()
                self._spools.clear()
                for delivery in self._pending:
                    close = getattr(delivery, "close", None)
                    if close is not None:
                        close()  # runs the spool's cleanup
                self._pending.clear()

    def _drain_socket(self, wire: SocketWire, timeout_s: float) -> None:
        """Skip what is still in flight until the server is ready for queries again (so
        libpq, which never saw the COPY, closes an idle connection)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._fill(wire, _READ_BUFFER)
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

    def _drain(self, timeout_s: float) -> None:
        """Skip frames still in flight until the server acknowledges the end of COPY."""
        pgconn = self._pgconn
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

    def __enter__(self) -> ReplicationStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
