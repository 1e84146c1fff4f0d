"""Type mapping (arrow_type / TypeRegistry) and the text casts, value by value."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from dbmazz.source import types as T
from dbmazz.source.columnar import decode_changes
from dbmazz.source.types import (
    DecodeStats,
    TextColumn,
    TypeInfo,
    TypeRegistry,
    arrow_type,
    cast_text,
    gather_windows,
    numeric_precision_scale,
    resolve,
)
from tests.columnar_helpers import (
    US_MAX,
    US_MIN,
    assert_matches_reference,
    build_buffer,
    encode_insert,
    relation,
    storage,
    t,
)

OID = 16384


def typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


def column(oid: int, values: list[str | None], mod: int = -1,
           registry: TypeRegistry | None = None) -> tuple[pa.Array, DecodeStats]:
    """Decode one column of texts through decode_changes (and check the reference, which
    reads a text it cannot parse as null — the decoder's documented fallback)."""
    rel = relation([("v", oid, mod)], key=())
    messages = [encode_insert(OID, [t(v) if v is not None else ("n", None)]) for v in values]
    data, starts = build_buffer(messages)
    lsns = np.zeros(len(values), dtype=np.uint64)
    stats = DecodeStats()
    batch = decode_changes(rel, [], data, starts, lsns, types=registry, stats=stats)
    assert_matches_reference(batch, rel, [], data, starts, lsns, registry, lenient=True)
    return batch.column(0), stats


# --- mapping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("oid, mod, expected", [
    (T.BOOL, -1, pa.bool_()),
    (T.INT2, -1, pa.int16()),
    (T.INT4, -1, pa.int32()),
    (T.INT8, -1, pa.int64()),
    (T.OID, -1, pa.int64()),
    (T.FLOAT4, -1, pa.float32()),
    (T.FLOAT8, -1, pa.float64()),
    (T.NUMERIC, typmod(12, 2), pa.decimal128(12, 2)),
    (T.NUMERIC, typmod(38, 0), pa.decimal128(38, 0)),
    (T.NUMERIC, typmod(1, 1), pa.decimal128(1, 1)),
    (T.NUMERIC, -1, pa.string()),
    (T.NUMERIC, typmod(39, 2), pa.string()),
    (T.NUMERIC, typmod(2, -3), pa.string()),
    (T.NUMERIC, typmod(3, 5), pa.string()),
    (T.BYTEA, -1, pa.binary()),
    (T.DATE, -1, pa.date32()),
    (T.TIMESTAMP, 6, pa.timestamp("us")),
    (T.TIMESTAMPTZ, -1, pa.timestamp("us", tz="UTC")),
    (T.TIME, -1, pa.string()),
    (T.TIMETZ, -1, pa.string()),
    (T.INTERVAL, -1, pa.string()),
    (T.JSON, -1, pa.string()),
    (T.JSONB, -1, pa.string()),
    (T.TEXT, -1, pa.string()),
    (T.VARCHAR, 24, pa.string()),
    (T.BPCHAR, 9, pa.string()),
    (T.NAME, -1, pa.string()),
    (T.UUID, -1, pa.string()),
    (T.MONEY, -1, pa.string()),
    (T.XML, -1, pa.string()),
    (869, -1, pa.string()),  # inet
    (650, -1, pa.string()),  # cidr
    (829, -1, pa.string()),  # macaddr
    (3904, -1, pa.string()),  # int4range
    (T.POINT, -1, pa.string()),
    (3614, -1, pa.string()),  # tsvector
    (22, -1, pa.string()),  # int2vector prints "1 2", not an array literal
    (T.UNKNOWN, -1, pa.string()),
    (1007, -1, pa.list_(pa.int32())),
    (1009, -1, pa.list_(pa.string())),
    (1231, typmod(10, 2), pa.list_(pa.decimal128(10, 2))),
    (1185, -1, pa.list_(pa.timestamp("us", tz="UTC"))),
    (1001, -1, pa.list_(pa.binary())),
    (3807, -1, pa.list_(pa.string())),
    (99999, -1, pa.string()),  # unknown user type
])
def test_arrow_type(oid: int, mod: int, expected: pa.DataType) -> None:
    assert arrow_type(oid, mod) == expected


def test_numeric_typmod_decoding() -> None:
    assert numeric_precision_scale(-1) is None
    assert numeric_precision_scale(typmod(12, 2)) == (12, 2)
    assert numeric_precision_scale(typmod(2, -3)) == (2, -3)
    assert numeric_precision_scale(typmod(1000, 1000)) == (1000, 1000)


def test_registry_resolves_domains_enums_and_their_arrays() -> None:
    registry = TypeRegistry([
        TypeInfo(50000, "public", "money2", "d", base_oid=T.NUMERIC, base_typmod=typmod(10, 2)),
        TypeInfo(50001, "public", "mood", "e"),
        TypeInfo(50002, "public", "_mood", "b", element_oid=50001),
        TypeInfo(50003, "public", "_money2", "b", element_oid=50000),
        TypeInfo(50004, "public", "posint", "d", base_oid=T.INT4),
        TypeInfo(50005, "public", "d2", "d", base_oid=50004),  # domain over domain
        TypeInfo(50006, "public", "tags", "d", base_oid=1009),  # domain over text[]
    ])
    registry.add_type_message(50001, "public", "mood")  # keeps the richer entry
    registry.add_type_message(50007, "public", "only_seen")
    assert arrow_type(50000, -1, registry) == pa.decimal128(10, 2)
    assert arrow_type(50001, -1, registry) == pa.string()
    assert arrow_type(50002, -1, registry) == pa.list_(pa.string())
    assert arrow_type(50003, -1, registry) == pa.list_(pa.decimal128(10, 2))
    assert arrow_type(50005, -1, registry) == pa.int32()
    assert arrow_type(50006, -1, registry) == pa.list_(pa.string())
    assert arrow_type(50007, -1, registry) == pa.string()
    assert arrow_type(50000, -1) == pa.string()  # without knowledge: exact text
    assert 50007 in registry and len(registry) == 8
    values, _ = column(50003, ["{1.50,NULL}", "{}"], registry=registry)
    assert values.to_pylist() == [[Decimal("1.50"), None], []]


# --- scalar casts ----------------------------------------------------------------------------
def test_bool_int_float() -> None:
    assert column(T.BOOL, ["t", "f", None])[0].to_pylist() == [True, False, None]
    assert column(T.INT2, ["-32768", "32767"])[0].to_pylist() == [-32768, 32767]
    assert column(T.INT8, ["-9223372036854775808", "9223372036854775807"])[0].to_pylist() == [
        -(2**63), 2**63 - 1]
    assert column(T.OID, ["4294967295"])[0].to_pylist() == [2**32 - 1]
    floats = column(T.FLOAT8, ["NaN", "Infinity", "-Infinity", "1e+308", "-0", "5e-324",
                               "0.1"])[0].to_pylist()
    assert np.isnan(floats[0]) and floats[1:3] == [float("inf"), float("-inf")]
    assert floats[3:] == [1e308, -0.0, 5e-324, 0.1]
    f4 = column(T.FLOAT4, ["3.4028235e+38", "1.1", "NaN"])[0]
    assert f4.type == pa.float32()
    assert f4.to_pylist()[:2] == [float(np.float32(3.4028235e38)), float(np.float32(1.1))]


def test_bool_garbage_is_a_counted_null() -> None:
    col = TextColumn(np.frombuffer(b"tyes", np.uint8), np.array([0, 1]), np.array(
        [1, 3], np.int32), np.array([True, True]))
    stats = DecodeStats()
    out = cast_text(col, resolve(T.BOOL), stats, "flag")
    assert out.to_pylist() == [True, None]
    assert stats.fallbacks == {"flag": {"unparsable": 1}}


@pytest.mark.parametrize("precision, scale, texts", [
    (12, 2, ["0.00", "-0.50", "9999999999.99", "-9999999999.99", "0.01"]),
    (15, 0, ["999999999999999", "-999999999999999", "0", "1"]),
    (15, 15, ["0.999999999999999", "-0.000000000000001", "0.100000000000001"]),
    (15, 7, ["12345678.9012345", "-99999999.9999999", "0.0000001"]),
    (5, 5, ["0.12345", "-0.99999"]),
    (38, 10, ["9999999999999999999999999999.9999999999", "-0.0000000001", "0.0000000000"]),
    (18, 3, ["999999999999999.999", "-123456789012345.678"]),
])
def test_decimals_are_exact(precision: int, scale: int, texts: list[str]) -> None:
    values, stats = column(T.NUMERIC, texts, typmod(precision, scale))
    assert values.type == pa.decimal128(precision, scale)
    assert values.to_pylist() == [Decimal(x) for x in texts]
    assert stats.total == 0


@pytest.mark.parametrize("precision", [12, 30])  # float fast path and Arrow decimal path
def test_numeric_special_values_become_counted_nulls(precision: int) -> None:
    values, stats = column(T.NUMERIC, ["NaN", "1.25", None, "Infinity", "-Infinity"],
                           typmod(precision, 2))
    assert values.to_pylist() == [None, Decimal("1.25"), None, None, None]
    assert stats.fallbacks == {"v": {"numeric_nan": 1, "numeric_infinity": 2}}


def test_unconstrained_numeric_keeps_exact_text() -> None:
    texts = ["NaN", "Infinity", "123456789012345678901234567890.123456789012345678901",
             "-0.000000000000000000000000000000000000000001"]
    assert column(T.NUMERIC, texts)[0].to_pylist() == texts


def test_strings_pass_through_exactly() -> None:
    texts = ["", " padded  ", "multi\nline", "ünïcödé 漢字 😀", '{"a": [1, 2]}', "x" * 5000]
    for oid in (T.TEXT, T.VARCHAR, T.BPCHAR, T.JSONB, T.JSON, T.INTERVAL, T.TIME, T.MONEY):
        assert column(oid, texts)[0].to_pylist() == texts


def test_invalid_utf8_is_a_counted_null() -> None:
    buf = np.frombuffer(b"ok\xff\xfebad\xc3" + b"fine", np.uint8)
    col = TextColumn(buf, np.array([0, 2, 4, 8]), np.array([2, 2, 4, 4], np.int32),
                     np.ones(4, np.bool_))
    stats = DecodeStats()
    out = cast_text(col, resolve(T.TEXT), stats, "s")
    assert out.to_pylist() == ["ok", None, None, "fine"]
    assert stats.fallbacks == {"s": {"invalid_utf8": 2}}


def test_bytea() -> None:
    values, stats = column(T.BYTEA, ["\\x", "\\x00ff10", "\\xDEADbeef", "not hex", "\\x0g",
                                     None])
    assert values.to_pylist() == [b"", b"\x00\xff\x10", b"\xde\xad\xbe\xef", None, None, None]
    assert stats.fallbacks == {"v": {"bytea_not_hex": 1, "unparsable": 1}}


# --- dates and timestamps --------------------------------------------------------------------
def days(d: dt.date) -> int:
    return (d - dt.date(1970, 1, 1)).days


def test_dates_including_bc_infinity_and_big_years() -> None:
    values, stats = column(T.DATE, ["2024-02-29", "0001-01-01", "0001-12-31 BC",
                                    "0044-03-15 BC", "4713-01-01 BC", "10000-01-01",
                                    "5874897-12-31", "infinity", "-infinity", None])
    assert storage(values) == [
        days(dt.date(2024, 2, 29)), days(dt.date(1, 1, 1)), days(dt.date(1, 1, 1)) - 1,
        -735160, -2440550, days(dt.date(9999, 12, 31)) + 1, 2145042905,
        2932896, -719528, None]
    assert stats.fallbacks == {"v": {"date_infinity": 2}}
    assert values.slice(0, 2).to_pylist() == [dt.date(2024, 2, 29), dt.date(1, 1, 1)]


def test_dates_fast_path() -> None:
    values, stats = column(T.DATE, ["2024-01-01", "1999-12-31", "0001-01-01"])
    assert values.to_pylist() == [dt.date(2024, 1, 1), dt.date(1999, 12, 31),
                                  dt.date(1, 1, 1)]
    assert stats.total == 0


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def micros(ts: dt.datetime) -> int:
    return (ts - EPOCH) // dt.timedelta(microseconds=1)


@pytest.mark.parametrize("extra", [[], ["infinity"]])  # Arrow fast path / numpy parser
def test_timestamptz(extra: list[str]) -> None:
    texts = ["2024-01-01 12:00:00.123456+00", "2024-01-01 12:00:00+05:30",
             "2024-01-01 12:00:00.5-03", "1969-12-31 23:59:59.999999+00",
             "0001-01-01 00:00:00+00"]
    values, stats = column(T.TIMESTAMPTZ, texts + extra)
    utc = dt.UTC
    expected = [
        dt.datetime(2024, 1, 1, 12, 0, 0, 123456, utc), dt.datetime(2024, 1, 1, 6, 30, 0,
                                                                    tzinfo=utc),
        dt.datetime(2024, 1, 1, 15, 0, 0, 500000, utc),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999, utc), dt.datetime(1, 1, 1, tzinfo=utc)]
    assert storage(values) == [micros(e) for e in expected] + [US_MAX] * len(extra)
    assert values.type == pa.timestamp("us", tz="UTC")
    assert stats.total == len(extra)


def test_timestamps_only_the_numpy_parser_handles() -> None:
    values, stats = column(T.TIMESTAMPTZ, [
        "2024-01-01 12:00:00+05:30:17", "0044-03-15 12:00:00+00 BC", "12345-06-07 08:09:10+00",
        "294276-12-31 23:59:59.999999+00", "-infinity", "1900-01-01 00:00:00.000001-09:59:59"])
    expected_bc = -63517780800000000  # 44 BC (astronomical -43) March 15, 12:00 UTC
    assert storage(values) == [
        micros(dt.datetime(2024, 1, 1, 6, 29, 43, tzinfo=dt.UTC)), expected_bc,
        micros(dt.datetime(2345, 6, 7, 8, 9, 10, tzinfo=dt.UTC)) + 10000 * 31556952000000,
        US_MAX, US_MIN, micros(dt.datetime(1900, 1, 1, 9, 59, 59, 1, tzinfo=dt.UTC))]
    assert stats.fallbacks == {"v": {"timestamp_out_of_range": 1, "timestamp_infinity": 1}}


def test_timestamp_int64_boundary_is_exact() -> None:
    values, stats = column(T.TIMESTAMPTZ, ["294247-01-10 04:00:54.775807+00",
                                           "294247-01-10 04:00:54.775808+00",
                                           "294247-01-10 05:00:54.775807+01"])
    assert storage(values) == [2**63 - 1, US_MAX, 2**63 - 1]
    assert stats.fallbacks == {"v": {"timestamp_out_of_range": 1}}


def test_timestamp_without_zone() -> None:
    values, _ = column(T.TIMESTAMP, ["2024-03-10 02:30:00", "2000-01-01 00:00:00.000001",
                                     "0001-01-01 00:00:00 BC"])
    assert values.type == pa.timestamp("us")
    assert storage(values)[:2] == [micros(dt.datetime(2024, 3, 10, 2, 30, tzinfo=dt.UTC)),
                                   946684800000001]
    assert storage(values)[2] == micros(dt.datetime(1, 1, 1, tzinfo=dt.UTC)) - 366 * 86400 * \
        10**6


# --- arrays ----------------------------------------------------------------------------------
def test_arrays() -> None:
    values, stats = column(1009, [
        '{a,"b c","with \\"quote\\"","back\\\\slash",NULL,"NULL","",null}',
        "{}", "[2:3]={x,y}", '{"{braces}","a,b"}', None])
    assert values.to_pylist() == [
        ["a", "b c", 'with "quote"', "back\\slash", None, "NULL", "", "null"],
        [], ["x", "y"], ["{braces}", "a,b"], None]
    # '[2:3]=' is a lower bound of 2: a list cannot keep it, which is counted.
    assert stats.fallbacks == {"v": {"array_lower_bound": 1}}


def test_multidimensional_arrays_are_flattened_and_counted() -> None:
    values, stats = column(1007, ["{{1,2},{3,NULL}}", "{{{1}},{{2}}}", "{5}"])
    assert values.to_pylist() == [[1, 2, 3, None], [1, 2], [5]]
    assert stats.fallbacks == {"v": {"array_flattened": 2}}


def test_typed_arrays() -> None:
    assert column(1000, ["{t,f,NULL}"])[0].to_pylist() == [[True, False, None]]
    assert column(1231, ["{1.50,-2.25,NaN}"], typmod(6, 2))[0].to_pylist() == [
        [Decimal("1.50"), Decimal("-2.25"), None]]
    assert storage(column(1182, ['{2024-01-01,infinity,"0044-03-15 BC"}'])[0]) == [
        [19723, 2932896, -735160]]
    assert storage(column(1185, ['{"2024-01-01 00:00:00+00",NULL}'])[0]) == [
        [1704067200000000, None]]
    assert column(1001, ['{"\\\\x00ff",NULL}'])[0].to_pylist() == [[b"\x00\xff", None]]
    assert column(1020, ["{(1,1),(0,0);(3,3),(2,2)}"])[0].to_pylist() == [
        ["(1,1),(0,0)", "(3,3),(2,2)"]]
    assert column(3807, ['{"{\\"a\\": 1}"}'])[0].to_pylist() == [['{"a": 1}']]


def test_malformed_array_is_a_counted_null_and_does_not_spoil_others() -> None:
    values, stats = column(1009, ['{"unterminated}', "{a,b}", "not an array", "{c}"])
    assert values.to_pylist() == [None, ["a", "b"], None, ["c"]]
    assert stats.fallbacks == {"v": {"unparsable": 2}}


# --- building blocks -------------------------------------------------------------------------
def test_gather_windows_pads_past_the_end() -> None:
    buf = np.frombuffer(b"abcdef", np.uint8)
    out = gather_windows(buf, np.array([0, 4, 5, 6, 9]), 4)
    assert [bytes(r) for r in out] == [b"abcd", b"ef\0\0", b"f\0\0\0", b"\0\0\0\0",
                                       b"\0\0\0\0"]
    small = gather_windows(buf, np.array([2]), 10)
    assert bytes(small[0]) == b"cdef" + b"\0" * 6


def test_stats_merge() -> None:
    a, b = DecodeStats(), DecodeStats()
    a.add("x", "numeric_nan", 2)
    b.add("x", "numeric_nan", 1)
    b.add("y", "invalid_utf8", 3)
    b.add("y", "invalid_utf8", 0)
    a.merge(b)
    assert a.fallbacks == {"x": {"numeric_nan": 3}, "y": {"invalid_utf8": 3}}
    assert a.count("y") == 3 and a.count("x", "numeric_nan") == 3
