"""Arrow → Stream Load bodies: every DESIGN §5 type, NULL vs '', hostile text in CSV."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbmazz.sink.starrocks import serialize as serialize_module
from dbmazz.sink.starrocks.serialize import CSV_HEADERS, JSON_HEADERS, serialize


def json_rows(table: pa.Table, **kw: Any) -> list[dict[str, Any]]:
    body = serialize(table, "json", **kw)
    assert body.format == "json"
    assert dict(body.headers) == dict(JSON_HEADERS)
    rows = json.loads(body.data, parse_float=Decimal)
    assert isinstance(rows, list)
    assert body.rows == len(rows) == table.num_rows
    return rows


def csv_fields(data: bytes, headers: Mapping[str, str] | None = None) -> list[list[str | None]]:
    """Read a body the way StarRocks does with its headers (no enclose, no escape)."""
    headers = headers or CSV_HEADERS
    separator = bytes.fromhex(headers["column_separator"].removeprefix("\\x"))
    delimiter = bytes.fromhex(headers["row_delimiter"].removeprefix("\\x"))
    assert data.endswith(delimiter) or not data
    out = []
    for record in data.split(delimiter)[:-1]:
        fields = record.decode("utf-8").split(separator.decode())
        out.append([None if f == "\\N" else f for f in fields])
    return out


def one(arr: pa.Array, name: str = "c") -> pa.Table:
    return pa.table({name: arr})


# -- JSON: one test per type ---------------------------------------------------------------


def test_integers_and_booleans_are_json_numbers_and_literals() -> None:
    t = pa.table(
        {
            "i8": pa.array([-128, None], pa.int8()),
            "i16": pa.array([32767, 0], pa.int16()),
            "i32": pa.array([-(2**31), 1], pa.int32()),
            "i64": pa.array([2**63 - 1, -(2**63)], pa.int64()),
            "u64": pa.array([2**64 - 1, 0], pa.uint64()),
            "b": pa.array([True, None]),
        }
    )
    assert json_rows(t) == [
        {"i8": -128, "i16": 32767, "i32": -(2**31), "i64": 2**63 - 1, "u64": 2**64 - 1, "b": True},
        {"i8": None, "i16": 0, "i32": 1, "i64": -(2**63), "u64": 0, "b": None},
    ]


def test_decimals_are_exact_text_never_floats() -> None:
    values = [Decimal("0.10"), Decimal("-12345678901234567890.123456789"), None]
    rows = json_rows(one(pa.array(values, pa.decimal128(38, 9))))
    assert [r["c"] for r in rows] == ["0.100000000", "-12345678901234567890.123456789", None]
    rows = json_rows(one(pa.array([Decimal("99999999.99")], pa.decimal128(10, 2))))
    assert rows == [{"c": "99999999.99"}]


def test_floats_keep_shortest_repr_and_special_values_survive() -> None:
    assert json_rows(one(pa.array([0.1, 1e300, None], pa.float64()))) == [
        {"c": Decimal("0.1")},
        {"c": Decimal("1E+300")},
        {"c": None},
    ]
    assert json_rows(one(pa.array([0.1], pa.float32()))) == [{"c": Decimal("0.1")}]
    # polars would print JSON null for NaN/inf; the column goes as text instead.
    special = one(pa.array([1.5, float("nan"), float("inf"), float("-inf"), None]))
    assert [r["c"] for r in json_rows(special)] == ["1.5", "nan", "inf", "-inf", None]


def test_text_null_and_empty_string_differ() -> None:
    rows = json_rows(one(pa.array(["", None, "x"])))
    assert rows == [{"c": ""}, {"c": None}, {"c": "x"}]


def test_hostile_text_in_json() -> None:
    hostile = ['a"b', "tab\there", "nl\nx\r\n", "back\\slash", "\x01\x02\x1f", "\\N", "日本 ✓", "𝄞"]
    assert [r["c"] for r in json_rows(one(pa.array(hostile)))] == hostile


def test_dates_times_and_durations() -> None:
    t = pa.table(
        {
            "d": pa.array([date(2024, 2, 29), date(1, 1, 1), None], pa.date32()),
            "ts": pa.array(
                [datetime(2024, 1, 2, 3, 4, 5, 6), datetime(1999, 12, 31, 23, 59, 59), None],
                pa.timestamp("us"),
            ),
            "tm": pa.array([time(1, 2, 3, 4), time(0, 0), None], pa.time64("us")),
            "iv": pa.array(
                [timedelta(days=1, microseconds=5), timedelta(seconds=-1), None],
                pa.duration("us"),
            ),
        }
    )
    assert json_rows(t) == [
        {
            "d": "2024-02-29",
            "ts": "2024-01-02 03:04:05.000006",
            "tm": "01:02:03.000004",
            "iv": 86_400_000_005,
        },
        {
            "d": "0001-01-01",
            "ts": "1999-12-31 23:59:59.000000",
            "tm": "00:00:00.000000",
            "iv": -1_000_000,
        },
        {"d": None, "ts": None, "tm": None, "iv": None},
    ]


def test_timestamptz_is_rendered_in_utc_whatever_the_zone() -> None:
    instant = datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    for tz in ("UTC", "+02:00", "America/New_York"):
        arr = pa.array([instant, None], pa.timestamp("us", tz))
        assert [r["c"] for r in json_rows(one(arr))] == ["2024-06-01 10:00:00.123456", None]


def test_other_timestamp_units_are_microseconds() -> None:
    arr = pa.array([1_700_000_000_123_456_789], pa.timestamp("ns"))
    assert json_rows(one(arr)) == [{"c": "2023-11-14 22:13:20.123456"}]
    arr = pa.array([1_700_000_000], pa.timestamp("s"))
    assert json_rows(one(arr)) == [{"c": "2023-11-14 22:13:20.000000"}]


def test_binary_is_lowercase_hex() -> None:
    arr = pa.array([b"\x00\xffAB", b"", None], pa.binary())
    assert [r["c"] for r in json_rows(one(arr))] == ["00ff4142", "", None]
    fixed = pa.array([b"\x01\x02"], pa.binary(2))
    assert json_rows(one(fixed)) == [{"c": "0102"}]


def test_json_columns_are_embedded_as_json_values() -> None:
    docs = ['{"a": [1, 2.50, "x"]}', "[]", '"str"', "3.14159265358979323846", None]
    body = serialize(pa.table({"id": [1, 2, 3, 4, 5], "j": docs}), "json", raw_json={"j"})
    rows = json.loads(body.data, parse_float=Decimal)
    assert [r["j"] for r in rows] == [
        {"a": [1, Decimal("2.50"), "x"]},
        [],
        "str",
        Decimal("3.14159265358979323846"),
        None,
    ]
    # The JSON text itself, byte for byte, so nothing is reformatted on the way.
    assert b'"j":{"a": [1, 2.50, "x"]}' in body.data


def test_json_scalars_other_than_strings_go_as_a_json_body(
        caplog: pytest.LogCaptureFixture) -> None:
    # StarRocks parses a CSV field for a JSON column only when it starts with {, [ or ":
    # 42, true or null would be stored as the JSON strings "42", "true", "null".
    containers = pa.table({"id": [1, 2, 3, 4],
                           "j": ['{"a": 1}', " [1]", '"42"', None]})
    body = serialize(containers, "csv", raw_json={"j"})
    assert body.format == "csv"
    assert [f[1] for f in csv_fields(body.data)] == ['{"a": 1}', " [1]", '"42"', None]
    for scalar in ("42", "-0.5e3", "true", "false", " null ", "null"):
        t = pa.table({"id": [1, 2], "j": ['{"a": 1}', scalar]})
        body = serialize(t, "csv", raw_json={"j"})
        assert body.format == "json", scalar
        assert json.loads(body.data)[1]["j"] == json.loads(scalar)
    # null lands as SQL NULL either way (no load keeps a JSON null): said once per column.
    serialize_module._WARNED_JSON_NULL.discard("jn")
    with caplog.at_level("WARNING"):
        for _ in range(2):
            serialize(pa.table({"jn": ["null"]}), "csv", raw_json={"jn"})
    assert [r.getMessage() for r in caplog.records].count(
        "json/jsonb column jn holds the JSON value null: StarRocks stores it as SQL NULL "
        "(no Stream Load keeps a JSON null; docs/types.md)") == 1


def test_only_json_columns() -> None:
    body = serialize(pa.table({"j": ['{"k": 1}', None]}), "json", raw_json={"j"})
    assert json.loads(body.data) == [{"j": {"k": 1}}, {"j": None}]


def test_lists_are_json_arrays_with_rendered_elements() -> None:
    t = pa.table(
        {
            "ints": pa.array([[1, None, 3], [], None], pa.list_(pa.int32())),
            "decs": pa.array([[Decimal("1.50")], None, [None]], pa.list_(pa.decimal128(5, 2))),
            "tss": pa.array(
                [[datetime(2024, 1, 1)], None, []], pa.list_(pa.timestamp("us", "UTC"))
            ),
            "txt": pa.array([["a", 'q"'], None, [""]], pa.large_list(pa.string())),
            "nested": pa.array([[[1], [2, 3]], None, []], pa.list_(pa.list_(pa.int64()))),
        }
    )
    assert json_rows(t) == [
        {
            "ints": [1, None, 3],
            "decs": ["1.50"],
            "tss": ["2024-01-01 00:00:00.000000"],
            "txt": ["a", 'q"'],
            "nested": [[1], [2, 3]],
        },
        {"ints": [], "decs": None, "tss": None, "txt": None, "nested": None},
        {"ints": None, "decs": [None], "tss": [], "txt": [""], "nested": []},
    ]


def test_sliced_and_chunked_inputs() -> None:
    arr = pa.array([[1], [2, 2], None, [4]], pa.list_(pa.int64()))
    chunked = pa.chunked_array([arr.slice(1, 2), arr.slice(3, 1)])
    t = pa.table({"l": chunked, "s": pa.chunked_array([["a", "b"], ["c"]])})
    assert json_rows(t) == [{"l": [2, 2], "s": "a"}, {"l": None, "s": "b"}, {"l": [4], "s": "c"}]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_slice_of_rows_with_a_null_list_serializes(fmt: str) -> None:
    # The rejected-rows bisection loads slices of a batch; a null list in a slice that
    # does not start at row 0 used to fail in Arrow ("Null bitmap with offsets slice").
    t = pa.table({"k": [1, 2, 3, 4, 5],
                  "l": pa.array([None, [2, 2], None, [4, 5], []], pa.list_(pa.int64()))})
    # From row 1 (its elements start past the parent's first) and from row 0's null
    # (they start at the first, but the slice's offsets are a view all the same).
    for start, expected in ((1, [[2, 2], None, [4, 5], []]), (2, [None, [4, 5], []])):
        part = t.slice(start, 5 - start)
        assert part.column("l").chunk(0).offset == start
        body = serialize(part, fmt)  # type: ignore[arg-type]
        if body.format == "json":
            assert [r["l"] for r in json.loads(body.data)] == expected
        else:
            assert [f[1] for f in csv_fields(body.data)] == [
                None if v is None else json.dumps(v, separators=(",", ":")) for v in expected]


def test_dictionary_columns_are_decoded() -> None:
    arr = pa.array(["x", None, "y"]).dictionary_encode()
    assert [r["c"] for r in json_rows(one(arr))] == ["x", None, "y"]


def test_empty_tables() -> None:
    t = pa.table({"a": pa.array([], pa.int64())})
    assert serialize(t, "json").data == b"[]"
    body = serialize(t, "csv")
    assert (body.data, body.format) == (b"", "csv")


# -- CSV --------------------------------------------------------------------------------------


def test_csv_renders_every_type_as_text() -> None:
    t = pa.table(
        {
            "i": pa.array([1, None], pa.int64()),
            "b": pa.array([True, False]),
            "f": pa.array([0.1, float("nan")]),
            "d": pa.array([Decimal("1.50"), None], pa.decimal128(4, 2)),
            "ts": pa.array([datetime(2024, 1, 2, 3, 4, 5), None], pa.timestamp("us", "UTC")),
            "day": pa.array([date(2024, 1, 2), None], pa.date32()),
            "bin": pa.array([b"\x00\x10", None]),
            "l": pa.array([["a", None], None], pa.list_(pa.string())),
            "j": pa.array(['{"x": "y"}', '"null"']),
            "s": pa.array(["", None]),
        }
    )
    body = serialize(t, "csv", raw_json={"j"})
    assert body.format == "csv"
    assert dict(body.headers) == dict(CSV_HEADERS)
    assert csv_fields(body.data) == [
        [
            "1",
            "true",
            "0.1",
            "1.50",
            "2024-01-02 03:04:05.000000",
            "2024-01-02",
            "0010",
            '["a",null]',
            '{"x": "y"}',
            "",
        ],
        [None, "false", "nan", None, None, None, None, None, '"null"', None],
    ]


def test_csv_keeps_tabs_newlines_quotes_commas_and_backslashes() -> None:
    hostile = ["a,b", 'say "hi"', "tab\tnl\ncr\r", "\\", "\\n", "'", "", " lead", "日本"]
    body = serialize(pa.table({"id": list(range(len(hostile))), "s": hostile}), "csv")
    assert body.format == "csv"
    assert [r[1] for r in csv_fields(body.data)] == hostile


@pytest.mark.parametrize(
    "text",
    ["has\x01separator", "has\x02delimiter", "\\N",
     "".join(chr(b) for b in (1, 2, *range(3, 9), *range(14, 32))) + "\x03"],
    ids=["column-separator", "row-delimiter", "null-marker", "every-control-byte"],
)
def test_csv_text_the_separators_would_misread(text: str) -> None:
    t = pa.table({"id": [1, 2], "s": [text, None]})
    body = serialize(t, "csv")
    if text == "\\N" or len(text) > 20:
        # A value StarRocks would read as NULL, or no byte left to separate: JSON.
        assert body.format == "json"
        assert dict(body.headers) == dict(JSON_HEADERS)
        assert json.loads(body.data) == [{"id": 1, "s": text}, {"id": 2, "s": None}]
    else:
        # Separator bytes no value holds.
        assert body.format == "csv"
        assert body.headers["column_separator"] not in ("\\x01", "\\x02")
        assert csv_fields(body.data, body.headers) == [["1", text], ["2", None]]


def test_csv_single_empty_text_column_would_be_a_blank_line() -> None:
    # StarRocks skips blank lines: a one-column record holding '' would vanish.
    body = serialize(pa.table({"k": ["", "x"]}), "csv")
    assert body.format == "json"
    assert serialize(pa.table({"k": ["y", "x"]}), "csv").format == "csv"


def test_csv_lists_are_the_array_text_starrocks_reads_not_json() -> None:
    # StarRocks' CSV ARRAY reader has no backslash escapes: JSON's \" \\ \n \u0001 would
    # be stored as typed. Text items are quoted with "" for a quote, other bytes raw;
    # numbers, decimals and booleans are bare (quoted, its readers refuse them).
    t = pa.table({
        "id": [1, 2],
        "txt": pa.array([['say "hi"', "a\\b", "nl\n\x01", None, "null", "", "[x],y"], []],
                        pa.list_(pa.string())),
        "dec": pa.array([[Decimal("1.50"), None], [Decimal("-0.01")]],
                        pa.list_(pa.decimal128(10, 2))),
        "f8": pa.array([[float("nan"), -0.0, float("-inf"), 1e-310], [0.1]],
                       pa.list_(pa.float64())),
        "ok": pa.array([[True, None], [False]], pa.list_(pa.bool_())),
        "day": pa.array([[date(2024, 2, 29)], None], pa.list_(pa.date32())),
        "at": pa.array([[datetime(2024, 1, 1, 0, 0, 0, 5, tzinfo=UTC)], []],
                       pa.list_(pa.timestamp("us", "UTC"))),
        "hex": pa.array([[b"\x00\xff"], [b""]], pa.list_(pa.binary())),
    })
    body = serialize(t, "csv")
    assert body.format == "csv"
    assert body.headers["column_separator"] != "\\x01"  # an item holds \x01
    assert csv_fields(body.data, body.headers) == [
        ["1", '["say ""hi""","a\\b","nl\n\x01",null,"null","","[x],y"]', "[1.50,null]",
         "[nan,-0,-inf,1e-310]", "[true,null]", '["2024-02-29"]',
         '["2024-01-01 00:00:00.000005"]', '["00ff"]'],
        ["2", "[]", "[-0.01]", "[0.1]", "[false]", None, "[]", '[""]'],
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(st.none(), st.text(alphabet=st.characters(exclude_categories=("Cs",)))),
        min_size=1,
        max_size=20,
    )
)
def test_any_text_survives_either_format(values: list[str | None]) -> None:
    t = pa.table({"id": list(range(len(values))), "s": pa.array(values, pa.string())})
    body = serialize(t, "csv")
    if body.format == "csv":
        got = [r[1] for r in csv_fields(body.data, body.headers)]
    else:
        got = [r["s"] for r in json.loads(body.data)]
    assert got == values
    assert [r["s"] for r in json_rows(t)] == values


def test_csv_single_empty_binary_key_also_falls_back() -> None:
    assert serialize(pa.table({"k": [b"", b"x"]}), "csv").format == "json"


# -- how bodies are assembled -----------------------------------------------------------


def _every_foldable_type(n: int) -> pa.Table:
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "b": pa.array([True] * n),
        "i8": pa.array([-3] * n, pa.int8()),
        "dec": pa.array([Decimal("1.50")] * n, pa.decimal128(5, 2)),
        "d": pa.array([date(2024, 2, 29)] * n, pa.date32()),
        "ts": pa.array([datetime(2024, 1, 1, 12, 0, 0, 5)] * n, pa.timestamp("us")),
        "tz": pa.array([datetime(2024, 1, 1, tzinfo=UTC)] * n,
                       pa.timestamp("us", "UTC")),
        "s": ["same"] * n,
        "varies": pa.array([1, 1, 1, 1, 2, 1][:n], pa.int32()),
    })


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_column_with_one_value_renders_as_if_it_varied(
    monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    t = _every_foldable_type(6).slice(1)  # an offset into every column
    folded = {n for n in t.column_names if serialize_module._is_constant(t.column(n).chunk(0))}
    assert folded == {"b", "i8", "dec", "d", "ts", "tz"}
    body = serialize(t, fmt)
    monkeypatch.setattr(serialize_module, "_is_constant", lambda arr: False)
    assert body.data == serialize(t, fmt).data
    assert body.format == fmt


def test_a_csv_body_rendered_in_slices_equals_one_piece(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (JSON bodies: tests/unit/test_throughput_paths.py, tests/unit/test_memory_paths.py)
    t = pa.table({
        "id": pa.array(range(7), pa.int64()),
        "note": ["a", None, "b,c", 'q"', "", None, "ü"],
        "at": pa.array([datetime(2024, 1, d) if d % 3 else None for d in range(1, 8)],
                       pa.timestamp("us")),
    })
    whole = serialize(t, "csv")
    assert whole.format == "csv"
    monkeypatch.setattr(serialize_module, "_SLICE_ROWS", 2)
    assert serialize(t, "csv").data == whole.data


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_rows_whose_every_column_holds_one_value(fmt: str) -> None:
    t = pa.table({"a": pa.array([7, 7, 7], pa.int64()), "b": pa.array([True] * 3)})
    body = serialize(t, fmt)
    assert body.rows == 3
    if fmt == "csv":
        assert csv_fields(body.data) == [["7", "true"]] * 3
    else:
        assert json.loads(body.data) == [{"a": 7, "b": True}] * 3


@pytest.mark.parametrize("last", ["varies", "constant", "null_or_text"])
def test_csv_records_end_with_the_delimiter_whatever_the_last_field(last: str) -> None:
    columns: dict[str, pa.Array] = {
        "id": pa.array([1, 2, 3], pa.int64()),
        "k": pa.array([5, 5, 5], pa.int32()),  # a constant beside the others
    }
    columns["z"] = {
        "varies": pa.array([10, None, 30], pa.int64()),
        "constant": pa.array([9, 9, 9], pa.int64()),
        "null_or_text": pa.array([None, "x", ""]),
    }[last]
    expected_z = {"varies": ["10", None, "30"], "constant": ["9"] * 3,
                  "null_or_text": [None, "x", ""]}[last]
    body = serialize(pa.table(columns), "csv")
    assert body.format == "csv"
    rows = zip([1, 2, 3], expected_z, strict=True)
    assert csv_fields(body.data) == [[str(i), "5", z] for i, z in rows]


# -- lists as StarRocks' CSV reader takes them ------------------------------------------------


def _csv_list_items(values: list[list[str | None] | None], item: str) -> list[Any]:
    """Serialize one list column as CSV, read it back as StarRocks' CSV reader does (the
    emulator's model of DefaultArrayReader), or as JSON when the batch went as JSON."""
    from dbmazz.testing.starrocks.coltypes import convert_csv, parse_type

    arrow = {"VARCHAR(1048576)": pa.string(), "DOUBLE": pa.float64(),
             "DECIMAL(38,10)": pa.decimal128(38, 10), "DATETIME": pa.timestamp("us")}[item]
    t = pa.table({"id": list(range(len(values))),
                  "l": pa.array(values, pa.list_(arrow))})
    body = serialize(t, "csv")
    if body.format == "json":
        return [r["l"] for r in json.loads(body.data)]
    array = parse_type(f"ARRAY<{item}>")
    return [None if f[1] is None else convert_csv(f[1], array)
            for f in csv_fields(body.data, body.headers)]


_ITEMS = st.one_of(st.none(), st.text(alphabet=st.characters(exclude_categories=("Cs",))))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(_ITEMS, max_size=6)), min_size=1, max_size=8))
def test_any_text_list_survives_the_csv_array_reader(
        values: list[list[str | None] | None]) -> None:
    assert _csv_list_items(values, "VARCHAR(1048576)") == values


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), st.lists(
    st.one_of(st.none(), st.floats(allow_nan=False)), max_size=5)), min_size=1, max_size=6))
def test_any_float_list_survives_the_csv_array_reader(
        values: list[list[float | None] | None]) -> None:
    assert _csv_list_items(values, "DOUBLE") == values  # type: ignore[arg-type]


def test_decimal_and_datetime_lists_survive_the_csv_array_reader() -> None:
    decimals = [[Decimal("1234567890123456789012345678.0123456789"), None,
                 Decimal("-0.0000000001")], [], None]
    assert _csv_list_items(decimals, "DECIMAL(38,10)") == decimals  # type: ignore[arg-type]
    stamps = [[datetime(2024, 2, 29, 1, 2, 3, 4), None, datetime(1, 1, 1)], None]
    assert _csv_list_items(stamps, "DATETIME") == stamps  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_a_list_holding_an_item_beyond_starrocks_range_is_sent_as_text_no_array_takes(
        fmt: str) -> None:
    # StarRocks would store NULL for such an item and load the row (strict mode compares
    # only whole columns): the row's array is sent as a text, so strict mode rejects it.
    days = pa.array([-719_528, -719_529, 2_932_896, 2_932_897], pa.int32()).cast(pa.date32())
    t = pa.table({
        "id": [1, 2, 3],
        "d": pa.ListArray.from_arrays(pa.array([0, 2, 3, 4], pa.int32()), days),
        "ts": pa.array([[datetime(9999, 12, 31, 23, 59, 59, 999999)], None,
                        [datetime(1, 1, 1)]], pa.list_(pa.timestamp("us"))),
        "s": pa.array([["x" * 1_048_576], ["x" * 1_048_577], None], pa.list_(pa.string())),
    })
    t = t.append_column("late", pa.array(
        [[0], [253_402_300_800_000_000], []], pa.list_(pa.int64())).cast(
        pa.list_(pa.timestamp("us"))))
    body = serialize(t, fmt)  # type: ignore[arg-type]
    if body.format == "csv":
        rows = csv_fields(body.data, body.headers)
    else:
        rows = [[str(r["id"]), *(v if isinstance(v, str) or v is None else "list"
                                 for v in list(r.values())[1:])]
                for r in json.loads(body.data)]
    refused = [[isinstance(v, str) and v.startswith("array holding") for v in row[1:]]
               for row in rows]
    assert refused == [[True, False, False, False], [False, False, True, True],
                       [True, False, False, False]]
    assert "outside StarRocks' DATE range" in rows[0][1]  # type: ignore[operator]
    assert "longer than 1048576 bytes" in rows[1][3]  # type: ignore[operator]
