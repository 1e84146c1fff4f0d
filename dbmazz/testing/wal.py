"""Build pgoutput (protocol 1) messages by hand: for tests and for tools that write captures.

Tuple values are given as text (``str``), ``None`` for NULL, or :data:`UNCHANGED` for an
unchanged TOAST value. The byte layout follows PostgreSQL's "Logical Replication Message
Formats"; :func:`dbmazz.source.pgoutput.parse_message` reads it back.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from dbmazz.source.pgoutput import Relation


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
Value = str | bytes | None | _Unchanged


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def tuple_data(values: Sequence[Value]) -> bytes:
    out = [struct.pack(">h", len(values))]
    for value in values:
        if value is None:
            out.append(b"n")
        elif value is UNCHANGED:
            out.append(b"u")
        else:
            raw = value if isinstance(value, bytes) else str(value).encode()
            out.append(b"t" + struct.pack(">i", len(raw)) + raw)
    return b"".join(out)


def begin(final_lsn: int, xid: int = 1, commit_ts: int = 0) -> bytes:
    return b"B" + struct.pack(">QqI", final_lsn, commit_ts, xid)


def commit(commit_lsn: int, end_lsn: int, commit_ts: int = 0) -> bytes:
    return b"C" + struct.pack(">bQQq", 0, commit_lsn, end_lsn, commit_ts)


def relation(rel: Relation) -> bytes:
    out = [
        b"R",
        struct.pack(">I", rel.oid),
        _cstring(rel.namespace),
        _cstring(rel.name),
        rel.replica_identity.encode(),
        struct.pack(">h", len(rel.columns)),
    ]
    for c in rel.columns:
        out.append(struct.pack(">b", 1 if c.is_key else 0))
        out.append(_cstring(c.name))
        out.append(struct.pack(">Ii", c.type_oid, c.type_modifier))
    return b"".join(out)


def insert(oid: int, values: Sequence[Value]) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + tuple_data(values)


def update(
    oid: int, values: Sequence[Value], old: Sequence[Value] | None = None, old_kind: str = "K"
) -> bytes:
    head = b"U" + struct.pack(">I", oid)
    if old is not None:
        head += old_kind.encode() + tuple_data(old)
    return head + b"N" + tuple_data(values)


def delete(oid: int, old: Sequence[Value], old_kind: str = "K") -> bytes:
    return b"D" + struct.pack(">I", oid) + old_kind.encode() + tuple_data(old)


def truncate(oids: Sequence[int], options: int = 0) -> bytes:
    return b"T" + struct.pack(">Ib", len(oids), options) + b"".join(
        struct.pack(">I", o) for o in oids
    )


def message(prefix: str, content: bytes, lsn: int = 0, transactional: bool = True) -> bytes:
    return (
        b"M"
        + struct.pack(">bQ", 1 if transactional else 0, lsn)
        + _cstring(prefix)
        + struct.pack(">i", len(content))
        + content
    )


def type_message(oid: int, namespace: str, name: str) -> bytes:
    return b"Y" + struct.pack(">I", oid) + _cstring(namespace) + _cstring(name)
