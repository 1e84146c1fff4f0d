"""Replication helpers that need no server: conninfo, intervals, stream re-assembly."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from psycopg.conninfo import conninfo_to_dict

from dbmazz.errors import (
    ProtocolError,
    SlotInUseError,
    SlotLostError,
    SourceConnectionError,
    SourceError,
)
from dbmazz.source import pgoutput as po
from dbmazz.source.chunk import WalChunk, concat_chunks
from dbmazz.source.connection import connect_error, replication_conninfo, server_error
from dbmazz.source.names import describe_dsn
from dbmazz.source.protocol import parse_duration_ms, status_interval_for
from dbmazz.source.spool import Spool, strip_run


def test_describe_dsn_never_shows_the_password() -> None:
    for dsn in (
        "postgresql://alice:s3cr3t@db.example:6543/shop?sslmode=require",
        "host=db.example port=6543 user=alice password=s3cr3t dbname=shop",
    ):
        text = describe_dsn(dsn)
        assert text == "alice@db.example:6543/shop"
        assert "s3cr3t" not in text
    assert "s3cr3t" not in describe_dsn("postgresql://alice:s3cr3t@[bad")
    # An unencoded '/' or '@' in the password: libpq reads part of it as the host, port
    # or database, and no part of it may show.
    for dsn, secret in (("postgresql://postgres:ab/cdSECRET@127.0.0.1:5432/shop", "cdSECRET"),
                        ("postgresql://postgres:SECRET@host2@127.0.0.1:5432/shop", "host2"),
                        ("postgres://u:x:y@SECRET@h/d", "SECRET")):
        assert secret not in describe_dsn(dsn), dsn
    # A well-formed URL is described as it is, even where its password repeats a name.
    assert describe_dsn("postgresql://postgres:postgres@db:5432/postgres") == \
        "postgres@db:5432/postgres"


def test_replication_conninfo_merges_options() -> None:
    dsn = "postgresql://u:p@h:1/d?options=-c%20statement_timeout%3D5s"
    info = conninfo_to_dict(replication_conninfo(dsn, {"application_name_x": "a b"}))
    assert info["replication"] == "database"
    options = str(info["options"])
    assert options.startswith("-c statement_timeout=5s ")
    for setting in ("DateStyle=ISO", "TimeZone=UTC", "extra_float_digits=3",
                    "IntervalStyle=postgres", "application_name_x=a\\ b"):
        assert f"-c {setting}" in options
    assert info["password"] == "p"


def test_durations_and_status_interval() -> None:
    assert parse_duration_ms("60s") == 60_000
    assert parse_duration_ms("1min") == 60_000
    assert parse_duration_ms("500ms") == 500
    assert parse_duration_ms("0") == 0
    assert status_interval_for(60_000) == 10.0  # capped
    assert status_interval_for(2_000) == 1.0  # half the timeout
    assert status_interval_for(0) == 10.0  # timeout disabled
    with pytest.raises(ValueError):
        parse_duration_ms("soon")


def test_error_classification() -> None:
    lost = server_error(
        sqlstate="55000",
        message='can no longer get changes from replication slot "s1"',
        target="h:1/d",
        slot="s1",
    )
    assert isinstance(lost, SlotLostError) and "max_slot_wal_keep_size" in str(lost)
    missing = server_error(sqlstate="42704", message='replication slot "s1" does not exist',
                           target="h:1/d", slot="s1")
    assert isinstance(missing, SlotLostError) and "'s1'" in str(missing)
    busy = server_error(sqlstate="55006", message='replication slot "s1" is active for PID 9',
                        target="h:1/d", slot="s1")
    assert isinstance(busy, SlotInUseError) and busy.retryable
    gone = server_error(sqlstate="57P01", message="terminating connection due to administrator "
                        "command", target="h:1/d")
    assert isinstance(gone, SourceConnectionError) and gone.retryable
    other = server_error(sqlstate="42601", message="syntax error", target="h:1/d")
    assert type(other) is SourceError and not other.retryable
    publication = server_error(sqlstate="42704", message='publication "p" does not exist',
                               target="h:1/d", slot="s1")
    assert type(publication) is SourceError and "dbmazz setup" in str(publication)
    # The SQLSTATE decides: a message that merely mentions a slot is not a lost slot.
    mention = server_error(sqlstate="42P01", message='relation "replication slot x" does '
                           "not exist", target="h:1/d", slot="s1")
    assert type(mention) is SourceError and "SQLSTATE 42P01" in str(mention)
    dropped = server_error(sqlstate=None, message='connection lost: replication slot "s1" '
                           "does not exist", target="h:1/d", slot="s1")
    assert isinstance(dropped, SlotLostError)  # no SQLSTATE: libpq's text is all there is
    assert not connect_error("FATAL: password authentication failed for user x", "t").retryable
    assert connect_error("Connection refused", "t").retryable


def ins(xid: int | None, value: bytes) -> bytes:
    raw = po.encode_message(po.Insert(relation_oid=7, new=(po.ColumnValue("t", value),)))
    return raw if xid is None else raw[:1] + struct.pack(">I", xid) + raw[1:]


def rel(xid: int) -> bytes:
    raw = po.encode_message(po.Relation(oid=7, namespace="public", name="t",
                                        replica_identity="d", columns=()))
    return raw[:1] + struct.pack(">I", xid) + raw[1:]


def origin() -> bytes:
    return po.encode_message(po.Origin(commit_lsn=1, name="o"))


def with_gaps(messages: list[bytes], lsns: list[int], *, extra: int = 0,
              writable: bool = True) -> WalChunk:
    """A run as the socket reader hands it: each message behind its 30-byte frame headers
    (``extra`` bytes more in front of the second, as a keepalive read between them leaves);
    the reader's own copy is writable."""
    raw = b"".join(bytes(30 + (extra if i == 1 else 0)) + m for i, m in enumerate(messages))
    if writable:
        raw = bytearray(raw)  # type: ignore[assignment]
    sizes = np.array([30 + len(m) + (extra if i == 1 else 0) for i, m in enumerate(messages)],
                     dtype=np.int64)
    ends = np.cumsum(sizes)
    starts = ends - np.array([len(m) for m in messages], dtype=np.int64)
    return WalChunk(data=np.frombuffer(raw, dtype=np.uint8),
                    offsets=np.append(starts, ends[-1]), lsns=np.array(lsns, np.uint64),
                    ends=ends)


@pytest.mark.parametrize(("first", "extra", "writable"), [
    (None, 0, True),  # the usual run: rewritten in place and sliced
    ("origin", 0, True),  # an Origin (no xid) among them
    (None, 17, True),  # something else read between two messages
    (None, 0, False),  # bytes the spool may not rewrite
])
def test_strip_run_drops_xids_and_frame_headers_and_keeps_each_xid(
    first: str | None, extra: int, writable: bool
) -> None:
    head = [origin()] if first == "origin" else [ins(100, b"first")]
    msgs = [*head, rel(100), ins(100, b"a"), ins(101, b"gone"), rel(101), ins(102, b"b")]
    lsns = list(range(1, len(msgs) + 1))
    out, xids = strip_run(with_gaps(msgs, lsns, extra=extra, writable=writable), top_xid=100)
    assert out.ends is None and out.offsets[0] == 0 and out.offsets[-1] == len(out.data)
    assert out.messages() == [head[0] if first else ins(None, b"first"),
                              rel(100)[:1] + rel(100)[5:], ins(None, b"a"),
                              ins(None, b"gone"), rel(101)[:1] + rel(101)[5:],
                              ins(None, b"b")]
    assert xids.tolist() == [100, 100, 100, 101, 101, 102]  # Origin: the top transaction's
    assert out.lsns.tolist() == lsns
    for message in out.messages():
        po.parse_message(message)  # every stripped message parses as an ordinary one


def test_strip_run_refuses_a_message_shorter_than_its_xid() -> None:
    with pytest.raises(ProtocolError, match="shorter than its xid"):
        strip_run(with_gaps([b"I\x00\x00"], [1]), top_xid=100)


def frame(payload: bytes, lsn: int) -> memoryview:
    return memoryview(b"w" + struct.pack(">QQq", lsn, lsn, 0) + payload)


@pytest.mark.parametrize("reader", ["libpq", "socket"])
@pytest.mark.parametrize("memory_limit", [0, 600, 1 << 30],
                         ids=["spilled", "memory-then-spilled", "in-memory"])
def test_spool_delivers_in_order_without_aborted_subtransactions(
    memory_limit: int, reader: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Spool, "SEGMENT_BYTES", 64)
    monkeypatch.setattr(Spool, "MIN_SEGMENT_BYTES", 64)
    spool = Spool(100, memory_limit, None)
    expected = []
    run: list[bytes] = []
    count = 63  # the libpq reader's last frames are still unsealed when it commits
    for i in range(count):
        xid = 100 if i % 3 else 101
        message = origin() if i == 7 else rel(xid) if i % 10 == 5 else ins(xid, str(i).encode())
        if reader == "libpq":
            spool.append(frame(message, 1000 + i))
        else:
            run.append(message)
            if len(run) == 4:  # runs of four, as the socket reader's reads hand them
                spool.append_run(with_gaps(run, list(range(1000 + i - 3, 1001 + i))))
                run = []
        if xid == 100 or i == 7:
            expected.append((message if i == 7 else message[:1] + message[5:], 1000 + i))
    if run:
        spool.append_run(with_gaps(run, list(range(1000 + count - len(run), 1000 + count))))
    spool.aborted.add(101)
    begin = WalChunk.from_messages([b"B" + bytes(20)], [0])
    commit = WalChunk.from_messages([b"C" + bytes(25)], [9999])
    pieces = list(spool.deliver(begin, commit))
    assert len(pieces) > 3  # tiny segments: delivered in several chunks
    whole = concat_chunks(pieces)
    got = whole.messages()
    assert got[0] == b"B" + bytes(20) and got[-1] == b"C" + bytes(25)
    assert list(zip(got[1:-1], whole.lsns.tolist()[1:-1], strict=True)) == expected
    assert (spool.spilled > 0) == (memory_limit < 1 << 30)
    assert (spool.memory > 0) == (memory_limit > 0)
    assert spool.file is None and spool.index is None  # temporary files released
