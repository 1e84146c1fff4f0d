"""Replication helpers that need no server: conninfo, intervals, stream re-assembly."""

from __future__ import annotations

import struct

import pytest
from psycopg.conninfo import conninfo_to_dict

from dbmazz.errors import SlotInUseError, SlotLostError, SourceConnectionError, SourceError
from dbmazz.source import pgoutput as po
from dbmazz.source.chunk import WalChunk, concat_chunks
from dbmazz.source.connection import connect_error, replication_conninfo, server_error
from dbmazz.source.names import describe_dsn
from dbmazz.source.protocol import parse_duration_ms, status_interval_for
from dbmazz.source.spool import Spool, strip_streamed


def test_describe_dsn_never_shows_the_password() -> None:
    for dsn in (
        "postgresql://alice:s3cr3t@db.example:6543/shop?sslmode=require",
        "host=db.example port=6543 user=alice password=s3cr3t dbname=shop",
    ):
        text = describe_dsn(dsn)
        assert text == "alice@db.example:6543/shop"
        assert "s3cr3t" not in text
    assert "s3cr3t" not in describe_dsn("postgresql://alice:s3cr3t@[bad")


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


def test_strip_streamed_drops_aborted_subtransactions() -> None:
    origin = po.encode_message(po.Origin(commit_lsn=1, name="o"))
    msgs = [origin, rel(100), ins(100, b"a"), ins(101, b"gone"), rel(101), ins(102, b"b"),
            ins(101, b"gone too")]
    chunk = WalChunk.from_messages(msgs, range(1, len(msgs) + 1))
    out = strip_streamed(chunk, top_xid=100, aborted={101})
    assert out.messages() == [origin, rel(100)[:1] + rel(100)[5:], ins(None, b"a"),
                              ins(None, b"b")]
    assert out.lsns.tolist() == [1, 2, 3, 6]
    # Nothing aborted: only the xids go.
    kept = strip_streamed(chunk, top_xid=100, aborted=set())
    assert len(kept) == len(msgs)
    for message in kept.messages():
        po.parse_message(message)  # every stripped message parses as an ordinary one


def frame(payload: bytes, lsn: int) -> memoryview:
    return memoryview(b"w" + struct.pack(">QQq", lsn, lsn, 0) + payload)


@pytest.mark.parametrize("memory_limit", [0, 1 << 30])
def test_spool_delivers_in_order_in_memory_or_spilled(
    memory_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Spool, "SEGMENT_BYTES", 64)
    monkeypatch.setattr(Spool, "MIN_SEGMENT_BYTES", 64)
    spool = Spool(100, memory_limit, None)
    expected = []
    for i in range(50):
        xid = 100 if i % 3 else 101
        spool.append(frame(ins(xid, str(i).encode()), 1000 + i))
        if xid == 100:
            expected.append((ins(None, str(i).encode()), 1000 + i))
    spool.aborted.add(101)
    begin = WalChunk.from_messages([b"B" + bytes(20)], [0])
    commit = WalChunk.from_messages([b"C" + bytes(25)], [9999])
    pieces = list(spool.deliver(begin, commit))
    assert len(pieces) > 1  # tiny segments: delivered in several chunks
    whole = concat_chunks(pieces)
    got = whole.messages()
    assert got[0] == b"B" + bytes(20) and got[-1] == b"C" + bytes(25)
    assert list(zip(got[1:-1], whole.lsns.tolist()[1:-1], strict=True)) == expected
    assert (spool.spilled > 0) == (memory_limit == 0)
    assert spool.file is None  # temporary file released
