"""pgoutput protocol messages (protocol versions 1–2) and their parser.

Data classes describe the messages the pipeline handles one at a time (relations, types,
transaction boundaries, truncates, logical messages). Insert/Update/Delete are parsed here
too for tools and tests, but the hot path never does: it decodes their tuples columnwise in
:mod:`dbmazz.source.columnar` straight from the raw bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple, TypeAlias

from dbmazz.errors import ProtocolError
from dbmazz.lsn import format_lsn


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    #: Part of the replica identity (flag bit 1). Under REPLICA IDENTITY FULL every column is.
    is_key: bool


@dataclass(frozen=True, slots=True)
class Relation:
    """A ``R`` message: the shape of a table as the walsender describes it."""

    oid: int
    namespace: str
    name: str
    #: ``d`` default, ``n`` nothing, ``f`` full, ``i`` index.
    replica_identity: str
    columns: tuple[RelationColumn, ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}.{self.name}"

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def identity_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.is_key)


# --------------------------------------------------------------------------------------
# Messages other than Relation, and the parser.
# --------------------------------------------------------------------------------------

#: PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def pg_time_to_datetime(us: int) -> datetime:
    """A protocol timestamp (µs since 2000-01-01 UTC) as an aware datetime."""
    return PG_EPOCH + timedelta(microseconds=us)


class ColumnValue(NamedTuple):
    """One column of a TupleData: kind ``n`` null, ``u`` unchanged TOAST, ``t`` text,
    ``b`` binary; ``value`` is the raw bytes for ``t``/``b`` and None otherwise."""

    kind: str
    value: bytes | None


TupleData: TypeAlias = tuple[ColumnValue, ...]


@dataclass(frozen=True, slots=True)
class Begin:
    final_lsn: int  # LSN of the commit record
    commit_time: int  # µs since 2000-01-01 UTC
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    flags: int
    commit_lsn: int
    #: End of the commit record: the position to confirm once the transaction is durable.
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Type:
    """A ``Y`` message: a non-built-in type used by a published column."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    relation_oid: int
    new: TupleData
    #: ``K`` (old replica identity key, sent when it changed) or ``O`` (old full row, under
    #: REPLICA IDENTITY FULL); None when no old tuple was sent.
    old_kind: Literal["K", "O"] | None = None
    old: TupleData | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    relation_oid: int
    old_kind: Literal["K", "O"]
    old: TupleData


TRUNCATE_CASCADE = 1
TRUNCATE_RESTART_IDENTITY = 2


@dataclass(frozen=True, slots=True)
class Truncate:
    options: int
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        return bool(self.options & TRUNCATE_CASCADE)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & TRUNCATE_RESTART_IDENTITY)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """An ``M`` message from ``pg_logical_emit_message`` (needs ``messages 'true'``)."""

    flags: int
    lsn: int
    prefix: str
    content: bytes

    @property
    def transactional(self) -> bool:
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class StreamStart:
    xid: int
    first: bool  # first block of this transaction


@dataclass(frozen=True, slots=True)
class StreamStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True, slots=True)
class StreamAbort:
    xid: int
    #: Equal to ``xid`` when the whole transaction aborted, else the aborted subtransaction.
    subxid: int
    # Only sent with parallel streaming (protocol 4); None otherwise.
    abort_lsn: int | None = None
    abort_time: int | None = None


@dataclass(frozen=True, slots=True)
class StreamedMessage:
    """A message read inside a Stream Start/Stop block, with the (sub)transaction xid the
    walsender put after its type byte."""

    xid: int
    message: Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage


Message: TypeAlias = (
    Begin
    | Commit
    | Origin
    | Relation
    | Type
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | StreamedMessage
)

#: Message types that carry an xid after the type byte inside a streamed block.
STREAM_XID_TYPES = frozenset(b"RYIUDTM")
#: Two-phase commit messages (protocol 3), which dbmazz never requests.
_TWO_PHASE_TYPES = frozenset(b"bPKrp")

_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


class _Reader:
    """A cursor over one message; raises IndexError/struct.error when it runs short."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf = buf
        self.pos = pos

    def u8(self) -> int:
        value: int = self.buf[self.pos]
        self.pos += 1
        return value

    def char(self) -> str:
        return chr(self.u8())

    def i16(self) -> int:
        (value,) = _I16.unpack_from(self.buf, self.pos)
        self.pos += 2
        return int(value)

    def u32(self) -> int:
        (value,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def i32(self) -> int:
        (value,) = _I32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def i64(self) -> int:
        (value,) = _I64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(value)

    def string(self) -> str:
        end = self.buf.index(b"\0", self.pos)
        # Names come in the server encoding; surrogateescape keeps odd bytes instead of
        # failing on a SQL_ASCII database.
        text = self.buf[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end + 1
        return text

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise IndexError("length runs past the end of the message")
        value = self.buf[self.pos : self.pos + n]
        self.pos += n
        return value

    def tuple_data(self) -> TupleData:
        ncols = self.i16()
        values: list[ColumnValue] = []
        for _ in range(ncols):
            kind = self.char()
            if kind in ("t", "b"):
                values.append(ColumnValue(kind, self.take(self.i32())))
            elif kind in ("n", "u"):
                values.append(ColumnValue(kind, None))
            else:
                raise ValueError(f"unknown tuple column kind {kind!r}")
        return tuple(values)


def _begin(r: _Reader) -> Begin:
    return Begin(final_lsn=r.u64(), commit_time=r.i64(), xid=r.u32())


def _commit(r: _Reader) -> Commit:
    return Commit(flags=r.u8(), commit_lsn=r.u64(), end_lsn=r.u64(), commit_time=r.i64())


def _origin(r: _Reader) -> Origin:
    return Origin(commit_lsn=r.u64(), name=r.string())


def _relation(r: _Reader) -> Relation:
    oid, namespace, name, identity = r.u32(), r.string(), r.string(), r.char()
    columns = []
    for _ in range(r.i16()):
        flags = r.u8()
        columns.append(
            RelationColumn(
                name=r.string(), type_oid=r.u32(), type_modifier=r.i32(), is_key=bool(flags & 1)
            )
        )
    return Relation(
        oid=oid,
        namespace=namespace,
        name=name,
        replica_identity=identity,
        columns=tuple(columns),
    )


def _type(r: _Reader) -> Type:
    return Type(oid=r.u32(), namespace=r.string(), name=r.string())


def _expect(r: _Reader, wanted: str) -> None:
    got = r.char()
    if got != wanted:
        raise ValueError(f"expected tuple marker {wanted!r}, got {got!r}")


def _insert(r: _Reader) -> Insert:
    oid = r.u32()
    _expect(r, "N")
    return Insert(relation_oid=oid, new=r.tuple_data())


def _update(r: _Reader) -> Update:
    oid = r.u32()
    marker = r.char()
    if marker in ("K", "O"):
        old = r.tuple_data()
        _expect(r, "N")
        return Update(relation_oid=oid, new=r.tuple_data(), old_kind=marker, old=old)  # type: ignore[arg-type]
    if marker != "N":
        raise ValueError(f"expected tuple marker 'K', 'O' or 'N', got {marker!r}")
    return Update(relation_oid=oid, new=r.tuple_data())


def _delete(r: _Reader) -> Delete:
    oid = r.u32()
    marker = r.char()
    if marker not in ("K", "O"):
        raise ValueError(f"expected tuple marker 'K' or 'O', got {marker!r}")
    return Delete(relation_oid=oid, old_kind=marker, old=r.tuple_data())  # type: ignore[arg-type]


def _truncate(r: _Reader) -> Truncate:
    nrels, options = r.i32(), r.u8()
    return Truncate(options=options, relation_oids=tuple(r.u32() for _ in range(nrels)))


def _message(r: _Reader) -> LogicalMessage:
    flags, lsn, prefix = r.u8(), r.u64(), r.string()
    return LogicalMessage(flags=flags, lsn=lsn, prefix=prefix, content=r.take(r.i32()))


def _stream_start(r: _Reader) -> StreamStart:
    return StreamStart(xid=r.u32(), first=bool(r.u8()))


def _stream_stop(r: _Reader) -> StreamStop:
    return StreamStop()


def _stream_commit(r: _Reader) -> StreamCommit:
    return StreamCommit(
        xid=r.u32(), flags=r.u8(), commit_lsn=r.u64(), end_lsn=r.u64(), commit_time=r.i64()
    )


def _stream_abort(r: _Reader) -> StreamAbort:
    xid, subxid = r.u32(), r.u32()
    if r.pos < len(r.buf):
        return StreamAbort(xid=xid, subxid=subxid, abort_lsn=r.u64(), abort_time=r.i64())
    return StreamAbort(xid=xid, subxid=subxid)


_PARSERS: dict[int, Callable[[_Reader], Message]] = {
    ord("B"): _begin,
    ord("C"): _commit,
    ord("O"): _origin,
    ord("R"): _relation,
    ord("Y"): _type,
    ord("I"): _insert,
    ord("U"): _update,
    ord("D"): _delete,
    ord("T"): _truncate,
    ord("M"): _message,
    ord("S"): _stream_start,
    ord("E"): _stream_stop,
    ord("c"): _stream_commit,
    ord("A"): _stream_abort,
}


def _describe(byte: int) -> str:
    shown = chr(byte) if 32 < byte < 127 else "?"
    return f"{shown!r} (0x{byte:02x})"


def parse_message(
    payload: bytes | bytearray | memoryview, *, in_stream: bool = False, lsn: int = 0
) -> Message:
    """Parse one pgoutput message (the XLogData payload, starting with its type byte).

    ``in_stream``: the message was read between Stream Start and Stream Stop, so
    Relation/Type/Insert/Update/Delete/Truncate/Message carry an xid, returned wrapped in
    :class:`StreamedMessage`. ``lsn`` only names the position in errors. Anything that does
    not parse exactly — unknown type byte, short or overlong message — raises
    :class:`ProtocolError`.
    """
    buf = bytes(payload)
    where = f"at LSN {format_lsn(lsn)}"
    if not buf:
        raise ProtocolError(f"empty pgoutput message {where}")
    kind = buf[0]
    parser = _PARSERS.get(kind)
    if parser is None:
        if kind in _TWO_PHASE_TYPES:
            raise ProtocolError(
                f"two-phase pgoutput message {_describe(kind)} {where}",
                "dbmazz requests protocol versions 1-4 without two_phase; check that nothing "
                "else consumes this slot with other options",
            )
        raise ProtocolError(f"unknown pgoutput message type {_describe(kind)} {where}")
    reader = _Reader(buf, 1)
    xid: int | None = None
    try:
        if in_stream and kind in STREAM_XID_TYPES:
            xid = reader.u32()
        message = parser(reader)
    except (IndexError, ValueError, struct.error) as exc:
        raise ProtocolError(
            f"malformed pgoutput message {_describe(kind)} {where} ({len(buf)} bytes): {exc}"
        ) from exc
    if reader.pos != len(buf):
        raise ProtocolError(
            f"pgoutput message {_describe(kind)} {where} has {len(buf) - reader.pos} "
            f"unexpected trailing bytes (streamed message parsed with in_stream=False?)"
        )
    if xid is not None:
        return StreamedMessage(xid=xid, message=message)  # type: ignore[arg-type]
    return message


# --------------------------------------------------------------------------------------
# Encoder: the inverse of parse_message, for synthesized messages, tools and tests.
# --------------------------------------------------------------------------------------


def _enc_string(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape") + b"\0"


def encode_tuple(values: TupleData) -> bytes:
    parts = [_I16.pack(len(values))]
    for kind, value in values:
        parts.append(kind.encode())
        if kind in ("t", "b"):
            assert value is not None
            parts.append(_I32.pack(len(value)) + value)
    return b"".join(parts)


def encode_message(message: Message) -> bytes:
    """Serialize a message exactly as the walsender would (byte-identical round trip)."""
    if isinstance(message, StreamedMessage):
        inner = encode_message(message.message)
        return inner[:1] + _U32.pack(message.xid) + inner[1:]
    if isinstance(message, Begin):
        return b"B" + struct.pack(">QqI", message.final_lsn, message.commit_time, message.xid)
    if isinstance(message, Commit):
        return b"C" + struct.pack(
            ">BQQq", message.flags, message.commit_lsn, message.end_lsn, message.commit_time
        )
    if isinstance(message, Origin):
        return b"O" + _U64.pack(message.commit_lsn) + _enc_string(message.name)
    if isinstance(message, Relation):
        parts = [
            b"R",
            _U32.pack(message.oid),
            _enc_string(message.namespace),
            _enc_string(message.name),
            message.replica_identity.encode(),
            _I16.pack(len(message.columns)),
        ]
        for col in message.columns:
            parts.append(_U8.pack(1 if col.is_key else 0) + _enc_string(col.name))
            parts.append(struct.pack(">Ii", col.type_oid, col.type_modifier))
        return b"".join(parts)
    if isinstance(message, Type):
        return b"Y" + _U32.pack(message.oid) + _enc_string(message.namespace) + _enc_string(
            message.name
        )
    if isinstance(message, Insert):
        return b"I" + _U32.pack(message.relation_oid) + b"N" + encode_tuple(message.new)
    if isinstance(message, Update):
        old = b""
        if message.old_kind is not None:
            assert message.old is not None
            old = message.old_kind.encode() + encode_tuple(message.old)
        return b"U" + _U32.pack(message.relation_oid) + old + b"N" + encode_tuple(message.new)
    if isinstance(message, Delete):
        return (
            b"D"
            + _U32.pack(message.relation_oid)
            + message.old_kind.encode()
            + encode_tuple(message.old)
        )
    if isinstance(message, Truncate):
        return b"T" + struct.pack(
            f">iB{len(message.relation_oids)}I",
            len(message.relation_oids),
            message.options,
            *message.relation_oids,
        )
    if isinstance(message, LogicalMessage):
        return (
            b"M"
            + struct.pack(">BQ", message.flags, message.lsn)
            + _enc_string(message.prefix)
            + _I32.pack(len(message.content))
            + message.content
        )
    if isinstance(message, StreamStart):
        return b"S" + struct.pack(">IB", message.xid, 1 if message.first else 0)
    if isinstance(message, StreamStop):
        return b"E"
    if isinstance(message, StreamCommit):
        return b"c" + struct.pack(
            ">IBQQq",
            message.xid,
            message.flags,
            message.commit_lsn,
            message.end_lsn,
            message.commit_time,
        )
    if isinstance(message, StreamAbort):
        tail = b""
        if message.abort_lsn is not None:
            tail = struct.pack(">Qq", message.abort_lsn, message.abort_time or 0)
        return b"A" + struct.pack(">II", message.xid, message.subxid) + tail
    raise TypeError(f"not a pgoutput message: {message!r}")
