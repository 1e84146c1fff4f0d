"""The canonical form and the ranges, without databases."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from dbmazz.pipeline.batch import ColumnSpec, TableSchema
from dbmazz.verify.canonical import canonical_frame, normalise_json, row_hashes
from dbmazz.verify.ranges import RangeSums, differing, sampled
from dbmazz.verify.target import coerce, readable


def schema(*columns: tuple[str, pa.DataType, int, str]) -> TableSchema:
    specs = tuple(ColumnSpec(name, kind, oid, -1, type_name)
                  for name, kind, oid, type_name in columns)
    return TableSchema("public", "t", specs, (columns[0][0],), "t")


def hashes(table: TableSchema, rows: pa.Table, json_text: bool = True) -> list[int]:
    return row_hashes(canonical_frame(rows, table, json_text=json_text)).tolist()


def test_null_and_empty_string_differ() -> None:
    t = schema(("id", pa.int32(), 23, "int4"), ("s", pa.string(), 25, "text"))
    a, b = hashes(t, pa.table({"id": [1, 1], "s": [None, ""]}))
    assert a != b


def test_json_normalised_only_when_the_target_re_renders_it() -> None:
    t = schema(("id", pa.int32(), 23, "int4"), ("j", pa.string(), 114, "json"))
    rows = pa.table({"id": [1, 1], "j": ['{"b": 1, "a": [1, "x"]}', '{"a":[1,"x"],"b":1}']})
    as_text = hashes(t, rows, json_text=True)
    normalised = hashes(t, rows, json_text=False)
    assert as_text[0] != as_text[1]
    assert normalised[0] == normalised[1]


def test_json_negative_zero_is_zero_when_the_target_re_renders_json() -> None:
    # PostgreSQL's json keeps `-0` as written; StarRocks' JSON prints the number as 0.
    t = schema(("id", pa.int32(), 23, "int4"), ("j", pa.string(), 114, "json"))
    rows = pa.table({"id": [1, 1, 1, 1],
                     "j": ["[1.0, -0, {\"a\": -0.0}]", "[1, 0, {\"a\": 0}]", "[1, 0, {\"a\": 1}]",
                           "-0"]})
    source, target, other, scalar = hashes(t, rows, json_text=False)
    assert source == target != other
    assert scalar == hashes(t, pa.table({"id": [1], "j": ["0"]}), json_text=False)[0]


@pytest.mark.parametrize("oid", [1700, 16386])  # numeric, and a domain over it
def test_unconstrained_numeric_ignores_trailing_zeros_only(oid: int) -> None:
    # A domain's column carries the domain's oid and its base type's name. Was: a domain
    # over numeric kept StarRocks' DECIMAL(38,9) zeros, every row "changed" for ever.
    t = schema(("id", pa.int32(), 23, "int4"), ("n", pa.string(), oid, "numeric"))
    a, b, c = hashes(t, pa.table({"id": [1, 1, 1], "n": ["1.50", "1.500000000", "1.05"]}))
    assert a == b != c


def test_starrocks_text_coerces_to_in_flight_types() -> None:
    """What the MySQL text protocol delivers equals what PostgreSQL delivered."""
    t = schema(("id", pa.int64(), 20, "int8"), ("ts", pa.timestamp("us", "UTC"), 1184, ""),
               ("d", pa.decimal128(10, 2), 1700, ""), ("b", pa.bool_(), 16, ""),
               ("l", pa.list_(pa.int32()), 1007, ""), ("f", pa.float64(), 701, ""))
    source = pa.table({
        "id": pa.array([1], pa.int64()),
        "ts": pa.array([dt.datetime(2024, 1, 1, 12, 0, 0, 5, tzinfo=dt.UTC)],
                       pa.timestamp("us", "UTC")),
        "d": pa.array([Decimal("1.50")], pa.decimal128(10, 2)),
        "b": [True], "l": pa.array([[1, None]], pa.list_(pa.int32())), "f": [0.1],
    })
    text = pa.table({"id": ["1"], "ts": ["2024-01-01 12:00:00.000005"], "d": ["1.50"],
                     "b": ["1"], "l": ["[1,null]"], "f": ["0.1"],
                     "dbmazz_cdc_version": ["7"], "dbmazz_is_deleted": ["0"]})
    target = coerce(text, t)
    assert hashes(t, target.select(list(t.column_names))) == hashes(t, source)
    assert target.column("dbmazz_is_deleted").to_pylist() == [False]


def test_sums_are_order_independent_and_count_duplicates() -> None:
    a, b = RangeSums(4), RangeSums(4)
    values = np.array([5, 7, 11], dtype=np.uint64)
    a.add(np.array([0, 1, 1]), values)
    b.add(np.array([1, 0, 1]), values[[1, 0, 2]])
    assert not differing(a, b, sampled(4, 1.0, 0)).any()
    b.add(np.array([1]), np.array([7], dtype=np.uint64))  # a duplicated row
    assert differing(a, b, sampled(4, 1.0, 0)).tolist() == [False, True, False, False]


def test_sample_checks_that_share_of_ranges() -> None:
    assert sampled(64, 0.25, 1).sum() == 16
    assert sampled(64, 0.001, 1).sum() == 1
    assert sampled(64, 1.0, 1).all()


def test_rate_limit_pauses_to_keep_the_rate() -> None:
    from dbmazz.verify.source import RateLimit

    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limit = RateLimit(1000, clock=lambda: now[0], sleep=sleep)
    limit.took(500)  # 0.5 s worth of rows at once: pause 0.5 s
    now[0] += 0.2    # the next read took 0.2 s
    limit.took(500)  # due at 1.0 s, now 0.7 s: pause 0.3 s
    assert slept == pytest.approx([0.5, 0.3])
    unlimited = RateLimit(0, clock=lambda: now[0], sleep=sleep)
    unlimited.took(10**9)
    assert len(slept) == 2


def _check_in_memory(rows: int, collect_rows: int, max_levels: int = 3) -> Any:
    from dbmazz.verify.compare import Options, TableCheck

    t = schema(("id", pa.int64(), 20, "int8"), ("v", pa.string(), 25, "text"))
    ids = np.arange(rows, dtype=np.int64)
    source = pa.table({"id": ids, "v": pa.array([f"v{i}" for i in ids])})
    values = source.column("v").to_pylist()
    values[17] = "drift"
    target = pa.table({"id": np.delete(ids, 4242), "v": np.delete(np.array(values), 4242),
                       "dbmazz_cdc_version": np.ones(rows - 1, dtype=np.int64),
                       "dbmazz_is_deleted": np.zeros(rows - 1, dtype=np.bool_)})
    check = TableCheck(
        t, lambda _: iter([source.slice(i, 1000) for i in range(0, rows, 1000)]),
        lambda _: iter([target.slice(i, 777) for i in range(0, rows, 777)]),
        snapshot_lsn=100, json_text=True, target_name="t",
        options=Options(ranges=8, collect_rows=collect_rows, max_levels=max_levels))
    return check.run()


def test_bisection_narrows_differing_ranges_before_collecting_rows() -> None:
    result = _check_in_memory(20_000, collect_rows=50)
    assert result.passes >= 2  # at least one level of sub-ranges, then the rows
    assert sorted((d.kind, d.key["id"], d.columns) for d in result.diffs) == [
        ("changed", 17, ("v",)), ("missing", 4242, ())]
    direct = _check_in_memory(20_000, collect_rows=10**9)
    assert direct.passes == 1 and sorted(map(repr, direct.diffs)) == sorted(map(repr, result.diffs))
    capped = _check_in_memory(20_000, collect_rows=1, max_levels=1)
    assert capped.passes == 2 and sorted(d.key["id"] for d in capped.diffs) == [17, 4242]


def test_columns_the_target_lacks_are_named_only_when_the_table_exists() -> None:
    t = schema(("id", pa.int32(), 23, "int4"), ("v", pa.string(), 25, "text"),
               ("w", pa.int32(), 23, "int4"))
    absent: dict[str, tuple[str, ...]] = {}
    assert readable(t, ["ID", "V"], absent) == ["id", "v"]  # names compared without case
    assert absent == {"public.t": ("w",)}
    # Was: a missing table's every column noted as "lacking" beside its read error.
    absent.clear()
    assert readable(t, [], absent) == ["id", "v", "w"] and absent == {}


def test_a_whole_json_null_is_sql_null_where_the_target_re_renders_json() -> None:
    # StarRocks has no load that keeps the JSON value null: dbmazz loads it as SQL NULL
    # (docs/types.md), so verify counts the two equal. A null inside a value stays.
    texts = pa.array(["null", " null ", '{"b": null, "a": 1.0}', "[null]", '"null"', None])
    assert normalise_json(texts).to_pylist() == [
        None, None, '{"a":1,"b":null}', "[null]", '"null"', None]
