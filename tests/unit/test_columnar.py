"""decode_changes: message shapes, change semantics, audit columns, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dbmazz.errors import ProtocolError
from dbmazz.source import types as T
from dbmazz.source.columnar import (
    batch_schema,
    decode_changes,
    unchanged_mask,
)
from dbmazz.source.types import DecodeStats
from tests.columnar_helpers import (
    NULL,
    UNCHANGED,
    assert_matches_reference,
    build_buffer,
    encode_delete,
    encode_insert,
    encode_update,
    relation,
    storage,
    t,
)

OID = 16384
REL = relation([("id", T.INT8, -1), ("name", T.TEXT, -1), ("doc", T.TEXT, -1)])
LSN = np.uint64(0x16B3748)


def decode(rel: object, keys: list[str], messages: list[bytes], **kwargs: object
           ) -> pa.RecordBatch:
    data, starts = build_buffer(messages)
    lsns = np.full(len(messages), LSN, dtype=np.uint64)
    batch = decode_changes(rel, keys, data, starts, lsns, **kwargs)  # type: ignore[arg-type]
    assert_matches_reference(batch, rel, keys, data, starts, lsns)  # type: ignore[arg-type]
    return batch


def test_insert_update_delete_semantics() -> None:
    batch = decode(REL, ["id"], [
        encode_insert(OID, [t("1"), t("ann"), t("x" * 40)]),
        # Key unchanged, TOASTed doc not sent: null + bit 2.
        encode_update(OID, [t("1"), t("anna"), UNCHANGED]),
        # Key changed: old key sent as K.
        encode_update(OID, [t("2"), t("anna"), UNCHANGED], old=[t("1"), NULL, NULL]),
        # REPLICA IDENTITY DEFAULT delete: only the key.
        encode_delete(OID, [t("2"), NULL, NULL]),
    ])
    assert batch.schema.names == ["id", "name", "doc", "__dbmazz_op", "__dbmazz_lsn",
                                  "__dbmazz_seq", "__dbmazz_unchanged", "__dbmazz_old_id"]
    assert batch.column("id").to_pylist() == [1, 1, 2, 2]
    assert batch.column("name").to_pylist() == ["ann", "anna", "anna", None]
    assert batch.column("doc").to_pylist() == ["x" * 40, None, None, None]
    assert batch.column("__dbmazz_op").to_pylist() == [0, 1, 1, 2]
    assert batch.column("__dbmazz_lsn").to_pylist() == [int(LSN)] * 4
    assert batch.column("__dbmazz_seq").to_pylist() == [0, 1, 2, 3]
    assert batch.column("__dbmazz_unchanged").to_pylist() == [0, 4, 4, 0]
    assert unchanged_mask(batch, 2).tolist() == [False, True, True, False]
    assert batch.column("__dbmazz_old_id").to_pylist() == [None, None, 1, None]
    assert batch.schema == batch_schema(REL, ["id"])


def test_replica_identity_full_fills_unchanged_from_old_row() -> None:
    rel = relation([("id", T.INT8, -1), ("name", T.TEXT, -1), ("doc", T.TEXT, -1)],
                   identity="f")
    batch = decode(rel, ["id"], [
        encode_update(OID, [t("1"), t("b"), UNCHANGED], old=[t("1"), t("a"), t("big doc")],
                      old_kind="O"),
        # Old row has doc NULL: an unchanged TOASTed value cannot be NULL, so the old row
        # does not hold it (a partition narrower than its FULL root): still unchanged.
        encode_update(OID, [t("2"), t("b"), UNCHANGED], old=[t("2"), t("a"), NULL],
                      old_kind="O"),
        # A K old tuple cannot fill.
        encode_update(OID, [t("4"), t("b"), UNCHANGED], old=[t("3"), NULL, NULL]),
        encode_delete(OID, [t("5"), t("gone"), t("doc 5")], old_kind="O"),
    ])
    assert batch.column("doc").to_pylist() == ["big doc", None, None, "doc 5"]
    assert batch.column("__dbmazz_unchanged").to_pylist() == [0, 4, 4, 0]
    assert batch.column("name").to_pylist() == ["b", "b", "b", "gone"]
    assert batch.column("__dbmazz_old_id").to_pylist() == [1, 2, 3, None]


def test_primary_key_differs_from_identity_flags() -> None:
    rel = relation([("a", T.INT4, -1), ("b", T.INT4, -1)], identity="f")
    batch = decode(rel, ["b"], [
        encode_update(OID, [t("1"), t("20")], old=[t("1"), t("10")], old_kind="O")])
    assert batch.column("__dbmazz_old_b").to_pylist() == [10]
    assert batch.schema.field("__dbmazz_old_b").type == pa.int32()


def test_wide_relation_uses_byte_mask() -> None:
    cols = [("id", T.INT4, -1)] + [(f"c{i}", T.TEXT, -1) for i in range(1, 70)]
    rel = relation(cols)
    new = [t("1")] + [UNCHANGED if i in (1, 63, 64, 69) else t(str(i)) for i in range(1, 70)]
    batch = decode(rel, ["id"], [encode_update(OID, new), encode_insert(OID, [t("2")] + [
        t("v")] * 69)])
    mask_type = batch.schema.field("__dbmazz_unchanged").type
    assert mask_type == pa.binary(9)
    for i in range(70):
        assert unchanged_mask(batch, i).tolist() == [i in (1, 63, 64, 69), False], i
    assert batch.column("__dbmazz_unchanged")[0].as_py() == bytes(
        [0b10, 0, 0, 0, 0, 0, 0, 0b10000000, 0b100001])
    assert unchanged_mask(batch.slice(1), 64).tolist() == [False]


def test_bit_63_of_uint64_mask() -> None:
    rel = relation([("id", T.INT4, -1)] + [(f"c{i}", T.INT4, -1) for i in range(1, 64)])
    new = [t("1")] + [t("0")] * 62 + [UNCHANGED]
    batch = decode(rel, ["id"], [encode_update(OID, new)])
    assert batch.schema.field("__dbmazz_unchanged").type == pa.uint64()
    assert batch.column("__dbmazz_unchanged").to_pylist() == [1 << 63]
    assert unchanged_mask(batch, 63).tolist() == [True]


def test_empty_batch_has_the_schema() -> None:
    batch = decode_changes(REL, ["id"], np.zeros(0, np.uint8), np.zeros(0, np.int64),
                           np.zeros(0, np.uint64))
    assert batch.num_rows == 0
    assert batch.schema == batch_schema(REL, ["id"])


def test_messages_interleaved_with_other_bytes_and_at_buffer_end() -> None:
    messages = [encode_insert(OID, [t(str(i)), t("é" * i), NULL]) for i in range(5)]
    data, starts = build_buffer(messages, [b"\xff" * 7, b"", b"Z", b"\x00\x00", b"q" * 30])
    # Shuffle the order of the starts: rows come out in starts order.
    order = np.array([4, 0, 3, 1, 2])
    lsns = np.arange(5, dtype=np.uint64)
    batch = decode_changes(REL, ["id"], data, starts[order], lsns)
    assert batch.column("id").to_pylist() == order.tolist()
    assert batch.column("name").to_pylist() == ["é" * i for i in order]
    # The last message ends exactly at the buffer end (tail padding path).
    assert int(starts[-1]) + len(messages[-1]) == len(data)


def test_value_lengths_around_the_inline_limit() -> None:
    values = ["", "a", "abcdefghijk", "abcdefghijkl", "abcdefghijklm", "ü" * 6, "ü" * 7,
              "€" * 4, "😀" * 3 + "x", "x" * 1000]
    batch = decode(REL, [], [encode_insert(OID, [t("1"), t(v), NULL]) for v in values])
    assert batch.column("name").to_pylist() == values


def test_zero_column_relation() -> None:
    rel = relation([])
    batch = decode(rel, [], [encode_insert(OID, []), encode_delete(OID, [])])
    assert batch.column("__dbmazz_op").to_pylist() == [0, 2]


def test_binary_format_is_rejected_with_a_fix() -> None:
    text_field = b"t\x00\x00\x00\x01a"
    message = encode_insert(OID, [t("1"), t("a"), NULL]).replace(text_field, b"b" + text_field[1:])
    data, starts = build_buffer([message])
    with pytest.raises(ProtocolError, match="binary 'true'"):
        decode_changes(REL, [], data, starts, np.zeros(1, np.uint64))


@pytest.mark.parametrize("message, match", [
    (b"T" + encode_insert(OID, [t("1"), NULL, NULL])[1:], "not Insert/Update/Delete"),
    (encode_insert(OID + 1, [t("1"), NULL, NULL]), "holds a change of oid"),
    (encode_insert(OID, [t("1"), NULL]), "does not match its Relation"),
    (encode_insert(OID, [t("1"), NULL, NULL]).replace(b"N\x00", b"K\x00", 1), "malformed"),
    (encode_insert(OID, [t("1"), NULL, NULL]).replace(b"nn", b"nx"), "kind byte"),
    (encode_insert(OID, [t("1"), NULL, t("abc")])[:-2], "truncated"),
])
def test_corrupt_messages_raise_protocol_errors(message: bytes, match: str) -> None:
    data, starts = build_buffer([message])
    with pytest.raises(ProtocolError, match=match):
        decode_changes(REL, [], data, starts, np.zeros(1, np.uint64))


def test_unknown_key_column() -> None:
    data, starts = build_buffer([encode_insert(OID, [t("1"), NULL, NULL])])
    with pytest.raises(ValueError, match="not a column"):
        decode_changes(REL, ["nope"], data, starts, np.zeros(1, np.uint64))


def test_stats_count_rows_and_fallbacks() -> None:
    rel = relation([("id", T.INT4, -1), ("n", T.NUMERIC, ((10 << 16) | 2) + 4)])
    stats = DecodeStats()
    decode(rel, ["id"], [encode_insert(OID, [t("1"), t("NaN")]),
                         encode_insert(OID, [t("2"), t("1.50")])], stats=stats)
    assert stats.rows == 2 and stats.batches == 1
    assert stats.fallbacks == {"n": {"numeric_nan": 1}}
    assert stats.total == 1


def test_deletes_only_and_updates_with_full_old_rows_of_many_types() -> None:
    rel = relation([("id", T.INT8, -1), ("ts", T.TIMESTAMPTZ, -1), ("a", 1007, -1),
                    ("b", T.BYTEA, -1)], identity="f")
    old = [t("7"), t("2024-05-01 10:00:00+00"), t("{1,2}"), t("\\x00ff")]
    batch = decode(rel, ["id"], [encode_delete(OID, old, "O"), encode_delete(OID, old, "O")])
    assert storage(batch.column("ts")) == [1714557600000000] * 2
    assert batch.column("a").to_pylist() == [[1, 2]] * 2
    assert batch.column("b").to_pylist() == [b"\x00\xff"] * 2
    batch = decode(rel, ["id"], [
        encode_update(OID, [t("8"), UNCHANGED, UNCHANGED, UNCHANGED], old, "O")])
    assert batch.column("a").to_pylist() == [[1, 2]]
    assert batch.column("b").to_pylist() == [b"\x00\xff"]
    assert batch.column("__dbmazz_unchanged").to_pylist() == [0]
