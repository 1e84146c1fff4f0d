"""Load bodies: CSV options, JSON modes, columns expressions, types, strictness, ratios."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dbmazz.testing.starrocks import StarRocksEmulator
from tests.emulator.helpers import BASIC_DDL, make_table, request, stream_load

TYPED_DDL = (
    "CREATE TABLE ty (id INT NOT NULL, b BOOLEAN, ti TINYINT, li LARGEINT, f DOUBLE,"
    " d DECIMAL(6,2), s VARCHAR(5), dd DATE, ts DATETIME, j JSON, a ARRAY<INT>,"
    " vb VARBINARY(4)) PRIMARY KEY (id) DISTRIBUTED BY HASH(id)"
)


@pytest.fixture
def sr(starrocks: StarRocksEmulator) -> StarRocksEmulator:
    make_table(starrocks, BASIC_DDL)
    make_table(starrocks, TYPED_DDL)
    return starrocks


def ids(sr: StarRocksEmulator, table: str = "t") -> list[object]:
    return [r["id"] for r in sr.rows("d", table)]


# -- CSV --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"column_separator": ","}, "1,a,2\n"),
        ({"column_separator": "\\x01"}, "1\x01a\x012\n"),
        ({"column_separator": "\\\\x01"}, "1\x01a\x012\n"),
        ({"column_separator": "||", "row_delimiter": "\\x0D0A"}, "1||a||2\r\n"),
        ({"row_delimiter": "|"}, "1\ta\t2|"),
    ],
)
def test_separators(sr: StarRocksEmulator, headers: dict[str, str], body: str) -> None:
    reply = stream_load(sr, "d", "t", body, **headers)
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "t") == [{"id": 1, "name": "a", "score": 2}]


def test_null_marker_empty_string_and_blank_lines(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1,\\N,2\n\n2,,3\n\n", column_separator=",")
    assert (reply["NumberTotalRows"], reply["NumberLoadedRows"]) == (2, 2)
    assert sr.rows("d", "t") == [
        {"id": 1, "name": None, "score": 2}, {"id": 2, "name": "", "score": 3},
    ]


def test_field_count_mismatch_is_filtered(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1,a,2\n2,b\n3,c,3,x\n", column_separator=",",
                        max_filter_ratio="1")
    assert (reply["NumberLoadedRows"], reply["NumberFilteredRows"]) == (1, 2)
    log = request(reply["ErrorURL"], method="GET", user=None).text.splitlines()
    assert log == [
        "Error: Value count does not match column count. Expect 3, but got 2. Row: 2,b",
        "Error: Value count does not match column count. Expect 3, but got 4. Row: 3,c,3,x",
    ]


def test_enclose_and_escape(sr: StarRocksEmulator) -> None:
    body = '1,"a,b",2\n2,"say ""hi""",3\n3,"line\nbreak",4\n4,x\\,y,5\n5,\\N,6\n'
    reply = stream_load(sr, "d", "t", body, column_separator=",", enclose='"', escape="\\")
    assert reply["NumberLoadedRows"] == 5, reply
    assert [r["name"] for r in sr.rows("d", "t")] == [
        "a,b", 'say "hi"', "line\nbreak", "x,y", None,
    ]


def test_skip_header_and_trim_space(sr: StarRocksEmulator) -> None:
    body = "id,name,score\nskip,me,too\n 1 , a ,2\n"
    reply = stream_load(sr, "d", "t", body, column_separator=",", skip_header="2",
                        trim_space="true")
    assert reply["NumberTotalRows"] == 1
    assert sr.rows("d", "t") == [{"id": 1, "name": "a", "score": 2}]


def test_invalid_utf8_is_filtered_even_when_not_strict(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", b"1,\xff\xfe,2\n2,ok,3\n", column_separator=",",
                        max_filter_ratio="0.5")
    assert (reply["NumberLoadedRows"], reply["NumberFilteredRows"]) == (1, 1)


# -- columns ----------------------------------------------------------------------------


def test_columns_reorder_constants_and_temporary_columns(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "x,a,1\ny,b,2\n", column_separator=",",
                        columns="tmp,name,id,score=100")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "a", "score": 100}, {"id": 2, "name": "b", "score": 100},
    ]


def test_columns_expressions(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", "1,a,5\n2,,6\n", column_separator=",",
                columns="id,n,s,name=upper(ifnull(n, 'none')),score=s*10+1")
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "A", "score": 51}, {"id": 2, "name": "", "score": 61},
    ]


def test_unsupported_expression_fails_the_plan(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1,a,5\n", column_separator=",",
                        columns="id,name,s,score=hll_hash(s)")
    assert reply["Status"] == "Fail"
    assert "does not support" in reply["Message"]


def test_unlisted_not_null_column_without_default_fails(sr: StarRocksEmulator) -> None:
    make_table(sr, "CREATE TABLE nn (id INT NOT NULL, v INT NOT NULL) PRIMARY KEY (id)")
    reply = stream_load(sr, "d", "nn", "1\n", columns="id")
    assert reply["Message"] == "Column has no default value. column: v"
    # A column with a default is filled in.
    stream_load(sr, "d", "t", "1\n", columns="id")
    assert sr.rows("d", "t") == [{"id": 1, "name": None, "score": 7}]


def test_where_counts_unselected(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1\ta\t1\n2\tb\t5\n3\tc\t9\n", where="score > 2")
    assert (reply["NumberTotalRows"], reply["NumberLoadedRows"],
            reply["NumberUnselectedRows"]) == (3, 2, 1)
    assert ids(sr) == [2, 3]


BINARY_DDL = "CREATE TABLE bin (id INT NOT NULL, v VARBINARY) PRIMARY KEY (id)"


@pytest.mark.parametrize(
    ("expr", "value", "expected"),
    [
        ("to_binary(x, 'hex')", "00ff7F", b"\x00\xff\x7f"),
        ("to_binary(x)", "4142", b"AB"),  # hex is the default
        ("to_binary(x, 'HEX')", "4142", b"AB"),
        ("to_binary(x, 'base64')", "4142", b"AB"),  # unknown types decode hex (BE code)
        ("to_binary(x, 'hex')", "", b""),
        ("to_binary(x, 'hex')", "414", b""),  # odd length: empty, like unhex
        ("to_binary(x, 'hex')", "41zz", b""),
        ("to_binary(x, 'hex')", "\\N", None),
        ("to_binary(x, 'encode64')", "YWJhYg==", b"abab"),
        ("to_binary(x, 'encode64')", "not base64!", None),
        ("to_binary(x, 'encode64')", "", None),
        ("to_binary(x, 'utf8')", "hé", "hé".encode()),
    ],
)
def test_to_binary(sr: StarRocksEmulator, expr: str, value: str, expected: bytes | None
                   ) -> None:
    make_table(sr, BINARY_DDL)
    reply = stream_load(sr, "d", "bin", f"1,{value}\n", column_separator=",",
                        columns=f"id,x,v={expr}")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "bin") == [{"id": 1, "v": expected}]


def test_to_binary_round_trips_every_byte(sr: StarRocksEmulator) -> None:
    # What the sink sends for bytea: lowercase hex text, mapped back with to_binary.
    make_table(sr, BINARY_DDL)
    payload = bytes(range(256))
    columns = "id,x,v=to_binary(x,'hex')"
    stream_load(sr, "d", "bin", f"1\t{payload.hex()}\n", columns=columns)
    stream_load(sr, "d", "bin", f'[{{"id": 2, "x": "{payload.hex()}"}}, {{"id": 3, "x": ""}}]',
                format="json", strip_outer_array="true", columns=columns)
    assert [r["v"] for r in sr.rows("d", "bin")] == [payload, payload, b""]


DECIMAL_DDL = (
    "CREATE TABLE dz (id INT NOT NULL, d DECIMAL(38,10), e DECIMAL(38,0))"
    " PRIMARY KEY (id)"
)
D38 = "1234567890123456789012345678.0123456789"  # 38 digits: beyond Python's default 28
E38 = "99999999999999999999999999999999999999"


def test_decimal_38_digits_is_exact(sr: StarRocksEmulator) -> None:
    make_table(sr, DECIMAL_DDL)
    reply = stream_load(sr, "d", "dz", f"1,{D38},{E38}\n2,-{D38},-{E38}\n",
                        column_separator=",", strict_mode="true")
    assert reply["Status"] == "Success", reply
    body = f'[{{"id": 3, "d": {D38}, "e": {E38}}}, {{"id": 4, "d": "-{D38}", "e": "-{E38}"}}]'
    reply = stream_load(sr, "d", "dz", body, format="json", strip_outer_array="true",
                        strict_mode="true")
    assert reply["Status"] == "Success", reply
    # Expressions compute with 38+ digits too: negation, arithmetic, rounding half-up.
    reply = stream_load(sr, "d", "dz", f"5,{D38}5\n", column_separator=",",
                        columns="id,x,d=x*1,e=-(x-x)-x+x-x", strict_mode="true")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "dz") == [
        {"id": 1, "d": Decimal(D38), "e": Decimal(E38)},
        {"id": 2, "d": Decimal(f"-{D38}"), "e": Decimal(f"-{E38}")},
        {"id": 3, "d": Decimal(D38), "e": Decimal(E38)},
        {"id": 4, "d": Decimal(f"-{D38}"), "e": Decimal(f"-{E38}")},
        {"id": 5, "d": Decimal("1234567890123456789012345678.0123456790"),
         "e": Decimal("-1234567890123456789012345678")},
    ]


@pytest.mark.parametrize(
    ("column", "value"),
    [("e", E38 + "9"), ("d", "12345678901234567890123456789.0"), ("d", "1e38")],
)
def test_decimal_38_out_of_range_is_still_rejected(sr: StarRocksEmulator, column: str,
                                                    value: str) -> None:
    make_table(sr, DECIMAL_DDL)
    reply = stream_load(sr, "d", "dz", f"1,{value}\n", column_separator=",",
                        columns=f"id,{column}", strict_mode="true")
    assert (reply["Status"], reply["NumberFilteredRows"]) == ("Fail", 1)


# -- JSON -------------------------------------------------------------------------------


def test_json_strip_outer_array_and_simple_mode(sr: StarRocksEmulator) -> None:
    body = '[{"id": 1, "NAME": "a", "score": 2, "extra": true}, {"id": 2, "score": 3}]'
    reply = stream_load(sr, "d", "t", body, format="json", strip_outer_array="true")
    assert reply["NumberLoadedRows"] == 2
    assert sr.rows("d", "t") == [
        {"id": 1, "name": "a", "score": 2}, {"id": 2, "name": None, "score": 3},
    ]


def test_json_missing_key_takes_the_default(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", '{"id": 5}', format="json")
    assert sr.rows("d", "t") == [{"id": 5, "name": None, "score": 7}]


def test_json_array_without_strip_outer_array_fails(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", '[{"id": 1}]', format="json")
    assert reply["Status"] == "Fail"
    assert "strip_outer_array" in reply["Message"]


def test_json_multiple_objects(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", '{"id": 1}\n{"id": 2}\n', format="json")
    assert reply["NumberLoadedRows"] == 2


def test_json_automatic_op(sr: StarRocksEmulator) -> None:
    stream_load(sr, "d", "t", '[{"id": 1}, {"id": 2}, {"id": 3}]', format="json",
                strip_outer_array="true")
    body = '[{"id": 1, "__op": 1}, {"id": 2, "__op": "delete"}, {"id": 4, "__op": 0}]'
    stream_load(sr, "d", "t", body, format="json", strip_outer_array="true")
    assert ids(sr) == [3, 4]


def test_jsonpaths_and_json_root(sr: StarRocksEmulator) -> None:
    body = '{"data": [{"k": {"v": 9}, "n": "x", "__op": 1}]}'
    reply = stream_load(sr, "d", "t", body, format="json", strip_outer_array="true",
                        json_root="$.data", jsonpaths='["$.k.v", "$.n"]', columns="id,name")
    assert reply["Status"] == "Success", reply
    # jsonpaths turn the automatic __op off: the row is upserted.
    assert sr.rows("d", "t") == [{"id": 9, "name": "x", "score": 7}]


# -- types and strict mode ----------------------------------------------------------------


def test_type_conversion_json(sr: StarRocksEmulator) -> None:
    body = (
        '[{"id": 1, "b": true, "ti": 5, "li": 170141183460469231731687303715884105727,'
        ' "f": 1.5, "d": "1234.565", "s": "hé", "dd": "2024-02-29",'
        ' "ts": "2024-02-29 10:11:12.123456", "j": {"a": [1, 2]}, "a": [1, null, 3],'
        ' "vb": "ab"}]'
    )
    reply = stream_load(sr, "d", "ty", body, format="json", strip_outer_array="true")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "ty") == [{
        "id": 1, "b": True, "ti": 5, "li": 2**127 - 1, "f": 1.5, "d": Decimal("1234.57"),
        "s": "hé", "dd": dt.date(2024, 2, 29),
        "ts": dt.datetime(2024, 2, 29, 10, 11, 12, 123456), "j": '{"a": [1, 2]}',
        "a": [1, None, 3], "vb": b"ab",
    }]


def test_a_json_column_keeps_a_json_bodys_string_as_a_string(sr: StarRocksEmulator) -> None:
    # As the BE's add_native_json_column: the value is stored as the JSON value it is.
    body = ('[{"id": 1, "j": "just a string"}, {"id": 2, "j": "123"},'
            ' {"id": 3, "j": "{\\"a\\": 1}"}, {"id": 4, "j": 123}]')
    reply = stream_load(sr, "d", "ty", body, format="json", strip_outer_array="true")
    assert reply["Status"] == "Success", reply
    assert [(r["id"], r["j"]) for r in sr.rows("d", "ty")] == [
        (1, '"just a string"'), (2, '"123"'), (3, '"{\\"a\\": 1}"'), (4, "123")]


def test_type_conversion_csv(sr: StarRocksEmulator) -> None:
    body = "1\tfalse\t-128\t-5\t2e3\t-0.5\tabc\t20240101\t2024-01-01T01:02:03\t[1]\t[2,3]\txy\n"
    reply = stream_load(sr, "d", "ty", body)
    assert reply["Status"] == "Success", reply
    row = sr.rows("d", "ty")[0]
    assert (row["b"], row["ti"], row["f"], row["d"], row["dd"], row["ts"], row["j"],
            row["a"]) == (False, -128, 2000.0, Decimal("-0.50"), dt.date(2024, 1, 1),
                          dt.datetime(2024, 1, 1, 1, 2, 3), "[1]", [2, 3])


BAD_VALUES = [
    ("ti", "2000"), ("ti", "abc"), ("d", "12345.6"), ("s", "toolong"), ("s", "ééé"),
    ("dd", "2024-13-01"),
    ("b", "yes"), ("j", "{nope"), ("vb", "12345"),
]


@pytest.mark.parametrize(("column", "value"), BAD_VALUES)
def test_non_strict_turns_bad_values_into_null(sr: StarRocksEmulator, column: str,
                                               value: str) -> None:
    reply = stream_load(sr, "d", "ty", f"1,{value}", column_separator=",",
                        columns=f"id,{column}")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "ty")[0][column] is None


@pytest.mark.parametrize(("column", "value"), BAD_VALUES)
def test_strict_filters_bad_values(sr: StarRocksEmulator, column: str, value: str) -> None:
    reply = stream_load(sr, "d", "ty", f"1,{value}", column_separator=",",
                        columns=f"id,{column}", strict_mode="true")
    assert (reply["Status"], reply["Message"]) == ("Fail", "too many filtered rows")
    assert reply["NumberFilteredRows"] == 1
    assert sr.rows("d", "ty") == []


@pytest.mark.parametrize("strict", ["true", "false"])
def test_null_into_not_null_is_always_filtered(sr: StarRocksEmulator, strict: str) -> None:
    reply = stream_load(sr, "d", "t", "1\ta\t\\N\n2\tb\tbad\n3\tc\t3\n", strict_mode=strict,
                        max_filter_ratio="1")
    assert reply["NumberFilteredRows"] == 2
    assert ids(sr) == [3]
    log = request(reply["ErrorURL"], method="GET", user=None).text
    assert "NULL value in non-nullable column 'score'" in log


def test_max_filter_ratio(sr: StarRocksEmulator) -> None:
    body = "1\ta\t1\n2\tb\n3\tc\t3\n4\td\t4\n"
    failed = stream_load(sr, "d", "t", body, max_filter_ratio="0.2", label="r1")
    assert (failed["Status"], failed["Message"]) == ("Fail", "too many filtered rows")
    assert failed["NumberFilteredRows"] == 1
    assert "ErrorURL" in failed
    assert sr.rows("d", "t") == []
    assert sr.label_state("d", "r1") == "ABORTED"
    ok = stream_load(sr, "d", "t", body, max_filter_ratio="0.25", label="r1")
    assert ok["Status"] == "Success"
    assert ids(sr) == [1, 3, 4]


def test_unselected_rows_do_not_count_in_the_ratio(sr: StarRocksEmulator) -> None:
    reply = stream_load(sr, "d", "t", "1\ta\t1\n2\tb\t1\n3\tc\n", where="id > 1",
                        max_filter_ratio="0.5")
    # 1 filtered of 2 selected: exactly the ratio, so the load passes.
    assert reply["Status"] == "Success"
    assert reply["NumberTotalRows"] == reply["NumberLoadedRows"] + reply[
        "NumberFilteredRows"] + reply["NumberUnselectedRows"]


# -- ARRAY in CSV and JSON bodies --------------------------------------------------------

ARRAY_DDL = (
    "CREATE TABLE arr (id INT NOT NULL, s ARRAY<VARCHAR(20)>, d ARRAY<DECIMAL(6,2)>,"
    " f ARRAY<DOUBLE>, dd ARRAY<DATE>, b ARRAY<BOOLEAN>, i ARRAY<INT>) PRIMARY KEY (id)"
)


def test_csv_array_is_read_as_the_be_reads_it(sr: StarRocksEmulator) -> None:
    # DefaultArrayReader: commas split outside double quotes, a bare null is NULL, text and
    # dates between quotes ("" is one quote), numbers bare; no backslash escape at all, so
    # JSON's escapes are stored as typed.
    make_table(sr, ARRAY_DDL)
    body = (r'1|["a""b","x\\y","nl\n",null,"null","","c,[d]"]|[1.50,null,-0.01]'
            r'|[nan,-0,-inf,1e-310]|["2024-02-29",null]|[true,false,null]|[1,-2]' "\n"
            "2|[]|[]|[]|[]|[]|[]\n")
    reply = stream_load(sr, "d", "arr", body, column_separator="|", strict_mode="true")
    assert reply["Status"] == "Success", reply
    first, second = sr.rows("d", "arr")
    assert first["s"] == ['a"b', "x\\\\y", "nl\\n", None, "null", "", "c,[d]"]
    assert first["d"] == [Decimal("1.50"), None, Decimal("-0.01")]
    assert repr(first["f"]) == repr([float("nan"), -0.0, float("-inf"), 1e-310])
    assert first["dd"] == [dt.date(2024, 2, 29), None]
    assert (first["b"], first["i"]) == ([True, False, None], [1, -2])
    assert second == {"id": 2, "s": [], "d": [], "f": [], "dd": [], "b": [], "i": []}


@pytest.mark.parametrize(("column", "value"), [
    ("s", "[a]"),  # text must be quoted
    ("s", r'["a\"b"]'),  # every quote toggles: unbalanced
    ("s", '["a" ,"b"]'),  # items are not trimmed
    ("d", '["1.50"]'),  # numbers must not be
    ("i", '["1"]'),
    ("dd", "[2024-02-29]"),  # dates must be quoted
    ("i", "[1"),
    ("i", " [1]"),
    ("i", "1"),
])
def test_csv_array_the_be_cannot_read_is_rejected(sr: StarRocksEmulator, column: str,
                                                 value: str) -> None:
    make_table(sr, ARRAY_DDL)
    reply = stream_load(sr, "d", "arr", f"1|{value}\n", column_separator="|",
                        columns=f"id,{column}", strict_mode="true")
    assert (reply["Status"], reply["NumberFilteredRows"]) == ("Fail", 1), reply


def test_json_array_item_the_type_cannot_take_is_null_even_in_strict_mode(
        sr: StarRocksEmulator) -> None:
    # The BE reads a JSON body's items with invalid_as_null (DATE/DECIMAL items as text then
    # cast), and strict mode compares only whole columns' NULLs: the row loads.
    make_table(sr, ARRAY_DDL)
    body = ('[{"id": 1, "dd": ["2024-13-01", "-0043-03-15", "10000-01-01", "2024-02-29"],'
            ' "i": [1, "x", 3000000000], "s": ["too long for twenty bytes", "ok"],'
            ' "d": ["1.5", "12345.6"]}]')
    reply = stream_load(sr, "d", "arr", body, format="json", strip_outer_array="true",
                        strict_mode="true")
    assert reply["Status"] == "Success", reply
    [row] = sr.rows("d", "arr")
    assert row["dd"] == [None, None, None, dt.date(2024, 2, 29)]
    assert row["i"] == [1, None, None]
    assert row["s"] == [None, "ok"]
    assert row["d"] == [Decimal("1.50"), None]


@pytest.mark.parametrize(("text", "stored"), [
    ('{"a": [1, 2]}', '{"a": [1, 2]}'),
    (' [1, "x"]', '[1, "x"]'),
    ('"s"', '"s"'),
    ("42", '"42"'),
    ("-0.5e3", '"-0.5e3"'),
    ("true", '"true"'),
    ("null", '"null"'),
])
def test_csv_json_field_is_parsed_only_when_it_looks_like_a_container_or_string(
        sr: StarRocksEmulator, text: str, stored: str) -> None:
    # util/json.cpp parse_json_or_string: other text is kept as a JSON string.
    reply = stream_load(sr, "d", "ty", f"1|{text}\n", column_separator="|", columns="id,j",
                        strict_mode="true")
    assert reply["Status"] == "Success", reply
    assert sr.rows("d", "ty")[0]["j"] == stored
