"""pgoutput parser on hand-built bytes: every message type, stream framing, errors."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbmazz.errors import ProtocolError
from dbmazz.source import pgoutput as po
from dbmazz.source.pgoutput import ColumnValue, Relation, RelationColumn


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def tuple_bytes(*cols: tuple[str, bytes | None]) -> bytes:
    out = struct.pack(">h", len(cols))
    for kind, value in cols:
        out += kind.encode()
        if value is not None:
            out += struct.pack(">i", len(value)) + value
    return out


def test_begin_commit_origin() -> None:
    assert po.parse_message(b"B" + struct.pack(">QqI", 0x1_0000_0010, 12345, 77)) == po.Begin(
        final_lsn=0x1_0000_0010, commit_time=12345, xid=77
    )
    commit = po.parse_message(b"C" + struct.pack(">BQQq", 0, 10, 20, 99))
    assert commit == po.Commit(flags=0, commit_lsn=10, end_lsn=20, commit_time=99)
    assert po.parse_message(b"O" + struct.pack(">Q", 5) + cstr("origin_1")) == po.Origin(
        commit_lsn=5, name="origin_1"
    )


def test_relation_with_hostile_names() -> None:
    payload = (
        b"R"
        + struct.pack(">I", 16384)
        + cstr("My Schema")
        + cstr('we"ird tablé')
        + b"d"
        + struct.pack(">h", 2)
        + b"\x01" + cstr("Id") + struct.pack(">Ii", 23, -1)
        + b"\x00" + cstr("näme") + struct.pack(">Ii", 1043, 68)
    )
    rel = po.parse_message(payload)
    assert rel == Relation(
        oid=16384,
        namespace="My Schema",
        name='we"ird tablé',
        replica_identity="d",
        columns=(
            RelationColumn(name="Id", type_oid=23, type_modifier=-1, is_key=True),
            RelationColumn(name="näme", type_oid=1043, type_modifier=68, is_key=False),
        ),
    )
    assert po.encode_message(rel) == payload


def test_type_message() -> None:
    payload = b"Y" + struct.pack(">I", 90001) + cstr("public") + cstr("mood")
    assert po.parse_message(payload) == po.Type(oid=90001, namespace="public", name="mood")


def test_insert_all_column_kinds() -> None:
    payload = b"I" + struct.pack(">I", 7) + b"N" + tuple_bytes(
        ("t", b"42"), ("n", None), ("u", None), ("b", b"\x00\x01"), ("t", b"")
    )
    msg = po.parse_message(payload)
    assert msg == po.Insert(
        relation_oid=7,
        new=(
            ColumnValue("t", b"42"),
            ColumnValue("n", None),
            ColumnValue("u", None),
            ColumnValue("b", b"\x00\x01"),
            ColumnValue("t", b""),
        ),
    )


@pytest.mark.parametrize("marker", ["K", "O"])
def test_update_with_old_tuple(marker: str) -> None:
    payload = (
        b"U" + struct.pack(">I", 7) + marker.encode() + tuple_bytes(("t", b"1"), ("n", None))
        + b"N" + tuple_bytes(("t", b"2"), ("t", b"x"))
    )
    msg = po.parse_message(payload)
    assert isinstance(msg, po.Update)
    assert msg.old_kind == marker
    assert msg.old == (ColumnValue("t", b"1"), ColumnValue("n", None))
    assert msg.new == (ColumnValue("t", b"2"), ColumnValue("t", b"x"))


def test_update_without_old_tuple_and_delete() -> None:
    upd = po.parse_message(b"U" + struct.pack(">I", 3) + b"N" + tuple_bytes(("t", b"1")))
    assert upd == po.Update(relation_oid=3, new=(ColumnValue("t", b"1"),))
    dele = po.parse_message(b"D" + struct.pack(">I", 3) + b"K" + tuple_bytes(("t", b"1")))
    assert dele == po.Delete(relation_oid=3, old_kind="K", old=(ColumnValue("t", b"1"),))


def test_truncate_options() -> None:
    msg = po.parse_message(b"T" + struct.pack(">iBII", 2, 3, 10, 11))
    assert isinstance(msg, po.Truncate)
    assert msg.relation_oids == (10, 11)
    assert msg.cascade and msg.restart_identity


def test_logical_message() -> None:
    payload = b"M" + struct.pack(">BQ", 1, 0xABC) + cstr("dbmazz") + struct.pack(">i", 3) + b"a\0b"
    msg = po.parse_message(payload)
    assert msg == po.LogicalMessage(flags=1, lsn=0xABC, prefix="dbmazz", content=b"a\0b")
    assert isinstance(msg, po.LogicalMessage) and msg.transactional


def test_stream_control_messages() -> None:
    assert po.parse_message(b"S" + struct.pack(">IB", 9, 1)) == po.StreamStart(xid=9, first=True)
    assert po.parse_message(b"E") == po.StreamStop()
    assert po.parse_message(b"c" + struct.pack(">IBQQq", 9, 0, 100, 120, 5)) == po.StreamCommit(
        xid=9, flags=0, commit_lsn=100, end_lsn=120, commit_time=5
    )
    assert po.parse_message(b"A" + struct.pack(">II", 9, 10)) == po.StreamAbort(xid=9, subxid=10)
    assert po.parse_message(b"A" + struct.pack(">IIQq", 9, 9, 7, 8)) == po.StreamAbort(
        xid=9, subxid=9, abort_lsn=7, abort_time=8
    )


def test_in_stream_messages_carry_xid() -> None:
    insert = b"I" + struct.pack(">I", 7) + b"N" + tuple_bytes(("t", b"1"))
    streamed = insert[:1] + struct.pack(">I", 555) + insert[1:]
    msg = po.parse_message(streamed, in_stream=True)
    assert msg == po.StreamedMessage(xid=555, message=po.parse_message(insert))  # type: ignore[arg-type]
    assert po.encode_message(msg) == streamed
    # Origin never carries an xid, even inside a stream.
    origin = b"O" + struct.pack(">Q", 5) + cstr("o")
    assert po.parse_message(origin, in_stream=True) == po.Origin(commit_lsn=5, name="o")


def test_streamed_message_parsed_as_ordinary_is_an_error() -> None:
    insert = b"I" + struct.pack(">I", 7) + b"N" + tuple_bytes(("t", b"1"))
    with pytest.raises(ProtocolError):
        po.parse_message(insert[:1] + struct.pack(">I", 555) + insert[1:])


def test_unknown_type_names_byte_and_lsn() -> None:
    with pytest.raises(ProtocolError, match=r"'Z' \(0x5a\) at LSN 1/2A"):
        po.parse_message(b"Z123", lsn=(1 << 32) | 0x2A)
    with pytest.raises(ProtocolError, match="0x07"):
        po.parse_message(b"\x07")
    with pytest.raises(ProtocolError, match="two-phase"):
        po.parse_message(b"P" + bytes(30))
    with pytest.raises(ProtocolError, match="empty"):
        po.parse_message(b"")


@pytest.mark.parametrize(
    "payload",
    [
        b"B" + bytes(5),  # short
        b"I" + struct.pack(">I", 7) + b"X" + tuple_bytes(("t", b"1")),  # bad marker
        b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">h", 1) + b"t" + struct.pack(">i", 9),
        b"I" + struct.pack(">I", 7) + b"N" + struct.pack(">h", 1) + b"q",  # bad column kind
        b"R" + struct.pack(">I", 1) + b"no terminator",
        b"E" + b"extra",  # trailing bytes
    ],
)
def test_malformed_messages_raise(payload: bytes) -> None:
    with pytest.raises(ProtocolError, match="at LSN 0/10"):
        po.parse_message(payload, lsn=0x10)


def test_memoryview_input() -> None:
    raw = bytearray(b"xx" + b"C" + struct.pack(">BQQq", 0, 1, 2, 3))
    assert po.parse_message(memoryview(raw)[2:]) == po.Commit(0, 1, 2, 3)


def test_pg_time() -> None:
    assert po.pg_time_to_datetime(0).isoformat() == "2000-01-01T00:00:00+00:00"


# -- round trip over generated messages ---------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=20)
column = st.one_of(
    st.tuples(st.sampled_from("nu"), st.none()),
    st.tuples(st.sampled_from("tb"), st.binary(max_size=20)),
).map(lambda kv: ColumnValue(*kv))
tuples = st.lists(column, max_size=6).map(tuple)
relations = st.builds(
    Relation,
    oid=u32,
    namespace=names,
    name=names,
    replica_identity=st.sampled_from("dnfi"),
    columns=st.lists(
        st.builds(RelationColumn, name=names, type_oid=u32,
                  type_modifier=st.integers(-(2**31), 2**31 - 1), is_key=st.booleans()),
        max_size=5,
    ).map(tuple),
)
changes = st.one_of(
    relations,
    st.builds(po.Type, oid=u32, namespace=names, name=names),
    st.builds(po.Insert, relation_oid=u32, new=tuples),
    st.builds(po.Update, relation_oid=u32, new=tuples, old_kind=st.none(), old=st.none()),
    st.builds(po.Update, relation_oid=u32, new=tuples, old_kind=st.sampled_from("KO"), old=tuples),
    st.builds(po.Delete, relation_oid=u32, old_kind=st.sampled_from("KO"), old=tuples),
    st.builds(po.Truncate, options=st.integers(0, 3), relation_oids=st.lists(u32).map(tuple)),
    st.builds(po.LogicalMessage, flags=st.integers(0, 1), lsn=u64, prefix=names,
              content=st.binary(max_size=30)),
)
messages = st.one_of(
    changes,
    st.builds(po.Begin, final_lsn=u64, commit_time=i64, xid=u32),
    st.builds(po.Commit, flags=st.just(0), commit_lsn=u64, end_lsn=u64, commit_time=i64),
    st.builds(po.Origin, commit_lsn=u64, name=names),
    st.builds(po.StreamStart, xid=u32, first=st.booleans()),
    st.just(po.StreamStop()),
    st.builds(po.StreamCommit, xid=u32, flags=st.just(0), commit_lsn=u64, end_lsn=u64,
              commit_time=i64),
    st.builds(po.StreamAbort, xid=u32, subxid=u32),
)


@given(messages)
def test_round_trip(message: po.Message) -> None:
    raw = po.encode_message(message)
    assert po.parse_message(raw) == message
    assert po.encode_message(po.parse_message(raw)) == raw


@given(u32, changes)
def test_round_trip_in_stream(xid: int, message: po.Message) -> None:
    wrapped = po.StreamedMessage(xid=xid, message=message)  # type: ignore[arg-type]
    assert po.parse_message(po.encode_message(wrapped), in_stream=True) == wrapped
