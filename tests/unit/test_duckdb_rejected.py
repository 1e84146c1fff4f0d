"""DuckDB with REJECTED_ROWS=table at the sink: snapshot chunks and CDC batches with rows
the target refuses, the one-transaction outcome, and the limit past which it stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dbmazz.errors import SinkError
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.sink.rejected import MAX_REJECTED_PER_LOAD
from tests.unit.test_duckdb_snapshot_load import TABLE, chunk


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    target = DuckDBSink(str(tmp_path / "t.duckdb"), rejected_rows="table")
    target.query("CREATE SCHEMA public")
    # A constraint the source does not have: values over 7 characters are refused.
    target.query("CREATE TABLE public.t (id BIGINT PRIMARY KEY, s VARCHAR CHECK (length(s) <= 7))")
    target.setup([TABLE])
    yield target
    target.close()


def test_a_snapshot_chunk_sets_rejected_rows_aside(sink: DuckDBSink) -> None:
    assert not sink.begin_snapshot(TABLE)  # the keyed path: rows are found by upserts
    # "long_1" … "long_99" fit, "long_100" … "long_149" (8 characters) do not.
    result = sink.load_snapshot_chunk(chunk(range(1, 150), 9, text="long_"))
    assert result.rejected == 50
    ids = [r[0] for r in sink.query("SELECT id FROM public.t ORDER BY id")]
    assert ids == list(range(1, 100))
    keys = sink.query("SELECT row_key, cdc_version FROM main.dbmazz_rejected ORDER BY row_key")
    assert keys == sorted((f'{{"id": {i}}}', 9) for i in range(100, 150))


def test_too_many_rejected_rows_stop_the_batch(sink: DuckDBSink) -> None:
    with pytest.raises(SinkError) as info:
        sink.load_snapshot_chunk(chunk(range(1000, 1000 + MAX_REJECTED_PER_LOAD + 5), 9,
                                       text="too_long_"))
    assert f"more than {MAX_REJECTED_PER_LOAD} rejected" in info.value.message
    assert "target is likely wrong" in info.value.hint
    assert sink.query("SELECT count(*) FROM public.t") == [(0,)]
    assert sink.query("SELECT count(*) FROM main.dbmazz_rejected") == [(0,)]
