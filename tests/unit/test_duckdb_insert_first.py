"""DuckDB CDC writes tried as plain INSERTs first: the outcome equals the upserts' whatever
the target holds, and a table whose writes keep conflicting backs off. And what the sink
asks of DuckDB for a catch-up's writes: no checkpoint at every commit."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from dbmazz.errors import SetupError, SinkError
from dbmazz.sink.duckdb import DuckDBSink, InsertFirst
from dbmazz.snapshot.load import snapshot_batch
from tests.unit.test_duckdb_snapshot_load import TABLE, chunk, content


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    target = DuckDBSink(str(tmp_path / "t.duckdb"))
    target.setup([TABLE])
    yield target
    target.close()


def test_new_keys_then_a_write_mixing_new_held_and_stale_keys(sink: DuckDBSink) -> None:
    sink.write(chunk(range(0, 10), 5, text="a"))
    assert content(sink) == [(i, f"a{i}", 5) for i in range(10)]
    # 5..9 are held at version 5: a newer write replaces them, 10..14 are new.
    sink.write(chunk(range(5, 15), 7, text="b"))
    expected = [(i, f"a{i}", 5) for i in range(5)] + [(i, f"b{i}", 7) for i in range(5, 15)]
    assert content(sink) == expected
    # A replay of an older version beside a new key: the new key lands, nothing is
    # overwritten by the older rows.
    sink.write(chunk(range(12, 17), 6, text="old"))
    assert content(sink) == [*expected, (15, "old15", 6), (16, "old16", 6)]


def test_a_truncating_write_reinserts_the_keys_it_emptied(sink: DuckDBSink) -> None:
    sink.write(chunk(range(0, 10), 5, text="a"))
    sink.write(replace(chunk(range(3, 8), 6, text="t"), truncate=True))
    assert content(sink) == [(i, f"t{i}", 6) for i in range(3, 8)]


def test_a_refused_write_names_its_rows_and_leaves_the_target_as_it_was(
        sink: DuckDBSink) -> None:
    sink.write(chunk(range(0, 3), 5, text="a"))
    rows = pa.table({"id": pa.array([1, None], pa.int64()), "s": pa.array(["x", "y"])})
    with pytest.raises(SinkError) as info:
        sink.write(snapshot_batch(TABLE, rows, 6, "bad"))
    assert "NOT NULL" in info.value.message
    assert content(sink) == [(i, f"a{i}", 5) for i in range(3)]


def test_conflicts_back_off_doubling_up_to_the_cap_and_a_success_starts_over() -> None:
    policy = InsertFirst()
    assert policy.worth_trying("t")

    def skipped_after_conflict() -> int:
        policy.conflicted("t")
        skipped = 0
        while not policy.worth_trying("t"):
            skipped += 1
        return skipped

    waits = [skipped_after_conflict() for _ in range(9)]
    assert waits == [1, 2, 4, 8, 16, 32, 64, 64, 64]
    policy.inserted("t")
    assert skipped_after_conflict() == 1
    # Tables are independent.
    policy.conflicted("t")
    assert policy.worth_trying("u")


def test_writes_past_duckdbs_default_checkpoint_size_are_not_checkpointed_at_each_commit(
        tmp_path: Path) -> None:
    """The sink raises DuckDB's checkpoint threshold (16 MiB by default): a catch-up's WAL
    grows past 16 MiB without a checkpoint at every commit, and every row is there."""
    path = tmp_path / "wal.duckdb"
    sink = DuckDBSink(str(path))
    sink.setup([TABLE])
    try:
        padding = "x" * 400
        for start in range(0, 60_000, 20_000):
            sink.write(chunk(range(start, start + 20_000), 1, text=padding))
        wal = path.with_name(path.name + ".wal")
        assert wal.stat().st_size > 16 << 20
        assert sink.query("SELECT count(*), count(DISTINCT id) FROM public.t") == [
            (60_000, 60_000)]
    finally:
        sink.close()


def test_setup_skip_refuses_a_missing_table_before_any_load(tmp_path: Path) -> None:
    # SETUP=skip creates nothing: a missing table is named up front, not met by a load.
    target = DuckDBSink(str(tmp_path / "skip.duckdb"))
    try:
        with pytest.raises(SetupError, match=r"SETUP=skip, and DuckDB tables .* do not exist"):
            target.check_target([TABLE])
        target.setup([TABLE])
        target.check_target([TABLE])
    finally:
        target.close()
