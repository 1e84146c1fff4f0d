"""Lazy imports: a run loads polars only when a path uses it."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from dbmazz.lazy import lazy_module
from dbmazz.pipeline.merge import as_polars_delivers


def test_building_the_engine_does_not_import_polars() -> None:
    code = (
        "import sys, dbmazz.engine.build, dbmazz.cli, dbmazz.sink.starrocks.serialize, "
        "dbmazz.snapshot.sink, dbmazz.snapshot.stage, dbmazz.verify; print('polars' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "False"


def test_a_lazy_module_imports_at_first_use_from_many_threads() -> None:
    code = (
        "import sys, threading\n"
        "from dbmazz.lazy import lazy_module\n"
        "pl = lazy_module('polars')\n"
        "assert 'polars' not in sys.modules\n"
        "out = []\n"
        "def use(): out.append(pl.DataFrame({'a': [1, 2]}).height)\n"
        "ts = [threading.Thread(target=use) for _ in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\n"
        "print(out, 'polars' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout.strip()
    assert out == "[2, 2, 2, 2, 2, 2, 2, 2] True"


def test_a_lazy_module_is_the_module() -> None:
    lazy_json = lazy_module("json")
    assert lazy_json.dumps({"a": 1}) == '{"a": 1}'
    assert lazy_json.JSONDecodeError is __import__("json").JSONDecodeError


ARROW_TYPES = [
    pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint64(), pa.float16(),
    pa.float32(), pa.float64(), pa.bool_(), pa.string(), pa.large_string(), pa.string_view(),
    pa.binary(), pa.large_binary(), pa.binary(16), pa.date32(), pa.date64(), pa.time64("us"),
    pa.timestamp("us"), pa.timestamp("ms"), pa.timestamp("us", tz="UTC"),
    pa.timestamp("us", tz="+00:00"), pa.timestamp("us", tz="Europe/Paris"),
    pa.duration("us"), pa.decimal128(12, 2), pa.decimal128(38, 10), pa.decimal256(40, 2),
    pa.list_(pa.int32()), pa.struct([("a", pa.string())]), pa.null(),
    pa.dictionary(pa.int32(), pa.string()),
]


@pytest.mark.parametrize("dtype", ARROW_TYPES, ids=str)
def test_types_known_without_polars_are_what_polars_delivers(dtype: pa.DataType) -> None:
    import polars as pl

    known = as_polars_delivers(dtype)
    if known is None:
        return  # asked of polars at run time
    frame = pl.from_arrow(pa.table({"c": pa.array([], type=dtype)}))
    assert isinstance(frame, pl.DataFrame)
    assert frame.to_arrow().schema.field(0).type == known


def test_common_cdc_types_need_no_polars() -> None:
    assert all(as_polars_delivers(t) is not None for t in (
        pa.int64(), pa.int32(), pa.string(), pa.timestamp("us", tz="UTC"),
        pa.decimal128(12, 2), pa.float64(), pa.bool_(), pa.binary(), pa.date32()))


@pytest.mark.parametrize("keys,expected", [
    ([3, 1, 2], True), ([3, 1, 3], False), (["b", "a"], True), (["a", "a"], False),
    ([None, 1], True), ([None, None], False), ([5], True),
])
def test_bulk_insert_check_on_one_key_column(keys: list[object], expected: bool) -> None:
    import polars as pl

    from dbmazz.contract import OP_INSERT
    from dbmazz.pipeline import merge

    table = pa.table({"k": keys, merge.OP: pa.array([OP_INSERT] * len(keys), pa.int8())})
    assert merge._bulk_inserts(table, ["k"]) is expected
    # The same answer as polars' is_unique, which the check stands in for.
    assert bool(pl.Series(keys).is_unique().all()) is expected
