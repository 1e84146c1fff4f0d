"""dbmazz.sink.rejected: bisection down to the rejected rows, and their records."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dbmazz.sink.rejected import (
    REJECTED_SCHEMA,
    Rejection,
    TooManyRejected,
    bisect,
    column_named,
    records,
)


@pytest.mark.parametrize(("n", "bad"), [(1, {0}), (2, {1}), (17, {0, 16}), (1000, {3, 500, 501}),
                                        (64, set(range(64)))])
def test_bisect_finds_exactly_the_bad_rows_and_applies_the_rest(n: int, bad: set[int]) -> None:
    rows = pa.table({"id": pa.array(range(n), pa.int64())})
    applied: list[int] = []
    calls = 0

    def attempt(part: pa.Table, offset: int) -> str | None:
        nonlocal calls
        calls += 1
        ids = part.column("id").to_pylist()
        assert ids == list(range(offset, offset + part.num_rows))  # offsets are exact
        hit = [i for i in ids if i in bad]
        if hit:
            return f"bad {hit[0]}"
        applied.extend(ids)
        return None

    found = bisect(rows, attempt, "whole load failed")
    assert [r.index for r in found] == sorted(bad)
    assert sorted(applied) == sorted(set(range(n)) - bad)
    if n > 1:
        assert all(r.error.startswith("bad ") for r in found)
    if len(bad) <= 3 and n >= 1000:
        assert calls < 80  # ~2·k·log2(n), not n


def test_records_render_key_row_and_version() -> None:
    rows = pa.table({"id": [1, 2], "name": ["a", "b"], "raw": [b"\x00\xff", None],
                     "dbmazz_cdc_version": pa.array([None, 77], pa.int64())})
    out = records("public.t", ["id"], rows, [Rejection(0, "e0", "name"), Rejection(1, "e1")], 5)
    assert out.schema == REJECTED_SCHEMA
    assert out.column("row_key").to_pylist() == ['{"id": 1}', '{"id": 2}']
    assert out.column("cdc_version").to_pylist() == [5, 77]  # the batch's LSN when absent
    assert out.column("column_name").to_pylist() == ["name", None]
    assert json.loads(out.column("row_json")[0].as_py())["raw"] == "00ff"
    assert pc.all(pc.equal(out.column("source_table"), "public.t")).as_py()


def test_records_of_rows_with_dates_python_cannot_hold() -> None:
    # Year 0 (the fallback of -infinity) is often why StarRocks rejected the row.
    rows = pa.table({"id": [1],
                     "ts": pa.array([-62167219200000000], pa.timestamp("us", "UTC")),
                     "d": pa.array([-719528], pa.date32())})
    out = records("public.t", ["id"], rows, [Rejection(0, "out of range", "ts")], 5)
    row = json.loads(out.column("row_json")[0].as_py())
    assert row["ts"].startswith("0000-01-01 00:00:00") and row["d"] == "0000-01-01"


def test_column_named() -> None:
    assert column_named("Error: String (length=22) is too long. The max length of "
                        "'VARCHAR(5)' is 5, column: v. Row: 2 | x") == "v"
    assert column_named("CHECK constraint failed on table t") is None


def test_bisect_gives_up_past_the_limit() -> None:
    rows = pa.table({"id": pa.array(range(50), pa.int64())})
    with pytest.raises(TooManyRejected) as info:
        bisect(rows, lambda part, offset: "bad", "bad", limit=3)
    assert [r.index for r in info.value.found] == [0, 1, 2, 3]
