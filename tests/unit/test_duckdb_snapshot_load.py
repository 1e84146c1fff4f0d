"""DuckDB's snapshot loading: plain inserts with an upsert fallback, the bulk load of an empty
target without its primary key, and the repair of a target a kill -9 left between the bulk
load and the key."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from dbmazz.pipeline.batch import ColumnSpec, LoadResult, TableBatch, TableSchema, UpsertGroup
from dbmazz.sink.base import SnapshotLoader
from dbmazz.sink.duckdb import DuckDBSink
from dbmazz.snapshot.load import snapshot_batch
from dbmazz.snapshot.sink import SnapshotAwareSink
from dbmazz.source.types import INT8, TEXT

TABLE = TableSchema("public", "t", (ColumnSpec("id", pa.int64(), INT8, -1),
                                    ColumnSpec("s", pa.string(), TEXT, -1)), ("id",), "t")


def chunk(ids: range, version: int, text: str = "snap") -> TableBatch:
    rows = pa.table({"id": pa.array(list(ids), pa.int64()),
                     "s": pa.array([f"{text}{i}" for i in ids])})
    return snapshot_batch(TABLE, rows, version, f"snap-test-{ids.start}")


def has_key(sink: DuckDBSink) -> bool:
    return bool(sink.query("SELECT 1 FROM duckdb_constraints() WHERE table_name = 't' "
                           "AND constraint_type = 'PRIMARY KEY'"))


def content(sink: DuckDBSink) -> list[tuple[object, ...]]:
    return sink.query("SELECT id, s, dbmazz_cdc_version FROM public.t ORDER BY id")


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[DuckDBSink]:
    target = DuckDBSink(str(tmp_path / "t.duckdb"))
    target.setup([TABLE])
    yield target
    target.close()


def test_duckdb_is_a_snapshot_loader() -> None:
    assert isinstance(DuckDBSink(":memory:"), SnapshotLoader)


def test_bulk_snapshot_of_an_empty_target_loads_without_the_key_then_adds_it(
        sink: DuckDBSink) -> None:
    assert has_key(sink)
    assert sink.begin_snapshot(TABLE)
    assert not has_key(sink)
    sink.load_snapshot_chunk(chunk(range(0, 100), 7))
    sink.load_snapshot_chunk(chunk(range(100, 250), 7))
    sink.finish_snapshot(TABLE)
    assert has_key(sink)
    assert content(sink) == [(i, f"snap{i}", 7) for i in range(250)]
    # CDC afterwards: the guarded upsert needs the key, and respects the version.
    cdc = pa.table({"id": pa.array([1, 2], pa.int64()), "s": ["new", "old"],
                    "dbmazz_cdc_version": pa.array([9, 3], pa.int64())})
    sink.write(TableBatch(table=TABLE, upserts=[UpsertGroup(cdc, partial=True)]))
    assert content(sink)[1:3] == [(1, "new", 9), (2, "snap2", 7)]
    sink.finish_snapshot(TABLE)  # not in bulk mode any more: nothing happens
    assert has_key(sink)


def test_a_target_with_rows_is_not_bulk_loaded_and_conflicts_fall_back_to_the_upsert(
        sink: DuckDBSink) -> None:
    sink.load_snapshot_chunk(chunk(range(0, 10), 5))
    newer = pa.table({"id": pa.array([3], pa.int64()), "s": ["cdc"],
                      "dbmazz_cdc_version": pa.array([50], pa.int64())})
    sink.write(TableBatch(table=TABLE, upserts=[UpsertGroup(newer, partial=True)]))
    assert not sink.begin_snapshot(TABLE)
    assert has_key(sink)
    # The same keys again (a resumed snapshot), one newer: the plain INSERT conflicts,
    # the upsert takes over, the version guard keeps the newer row.
    result = sink.load_snapshot_chunk(chunk(range(0, 12), 6, text="again"))
    assert result.rows == 12
    rows = content(sink)
    assert len(rows) == 12
    assert rows[3] == (3, "cdc", 50)
    assert rows[4] == (4, "again4", 6)


def test_keys_loaded_twice_in_bulk_are_reduced_to_one_row_when_the_key_is_added(
        sink: DuckDBSink) -> None:
    assert sink.begin_snapshot(TABLE)
    sink.load_snapshot_chunk(chunk(range(0, 50), 7))
    sink.load_snapshot_chunk(chunk(range(40, 60), 7, text="reread"))  # overlaps 40..49
    sink.finish_snapshot(TABLE)
    assert has_key(sink)
    rows = content(sink)
    assert [r[0] for r in rows] == list(range(60))
    assert all(r[1] in (f"snap{r[0]}", f"reread{r[0]}") for r in rows)


def test_kill_9_between_bulk_load_and_key_is_repaired_by_setup(tmp_path: Path) -> None:
    """A process killed after loading chunks in bulk (one of them twice: committed in DuckDB
    but not recorded as done in PostgreSQL, so read again) and before the key was added:
    the next start's setup adds the key, one row per key, and CDC upserts work."""
    path = tmp_path / "killed.duckdb"
    script = textwrap.dedent(f"""
        import os, signal
        from tests.unit.test_duckdb_snapshot_load import TABLE, chunk
        from dbmazz.sink.duckdb import DuckDBSink
        sink = DuckDBSink({str(path)!r})
        sink.setup([TABLE])
        assert sink.begin_snapshot(TABLE)
        sink.load_snapshot_chunk(chunk(range(0, 100), 7))
        sink.load_snapshot_chunk(chunk(range(100, 200), 7))
        sink.load_snapshot_chunk(chunk(range(100, 200), 7, text="reread"))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2],
                          capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    sink = DuckDBSink(str(path))
    try:
        assert not has_key(sink)
        assert sink.query("SELECT count(*) FROM public.t") == [(300,)]
        sink.setup([TABLE])
        assert has_key(sink)
        assert [r[0] for r in content(sink)] == list(range(200))
        # The resumed snapshot: the target holds rows, so no bulk mode; chunks upsert.
        assert not sink.begin_snapshot(TABLE)
        sink.load_snapshot_chunk(chunk(range(150, 250), 7, text="resumed"))
        rows = content(sink)
        assert [r[0] for r in rows] == list(range(250))
        assert rows[249] == (249, "resumed249", 7)
    finally:
        sink.close()


def test_begin_again_keeps_bulk_mode_and_an_empty_keyless_target_is_bulk_loaded(
        tmp_path: Path) -> None:
    path = str(tmp_path / "e.duckdb")
    sink = DuckDBSink(path)
    sink.setup([TABLE])
    assert sink.begin_snapshot(TABLE)
    assert sink.begin_snapshot(TABLE)  # e.g. a retried snapshot in the same process
    sink.close()
    sink = DuckDBSink(path)  # a new process, before setup: the target is empty, no key
    try:
        assert not has_key(sink)
        assert sink.begin_snapshot(TABLE)
        sink.load_snapshot_chunk(chunk(range(0, 3), 1))
        sink.finish_snapshot(TABLE)
        assert has_key(sink)
        assert len(content(sink)) == 3
    finally:
        sink.close()


class _PlainSink:
    """A sink without the snapshot extras (like StarRocks)."""

    name = "plain"

    def __init__(self) -> None:
        self.written: list[TableBatch] = []

    def setup(self, tables: object) -> None:
        pass

    def apply_schema_delta(self, delta: object) -> None:
        pass

    def write(self, batch: TableBatch) -> LoadResult:
        self.written.append(batch)
        return LoadResult(rows=batch.num_rows, bytes=0)

    def close(self) -> None:
        pass


def test_snapshot_chunks_of_other_sinks_go_through_write() -> None:
    plain = _PlainSink()
    wrapper = SnapshotAwareSink(plain)
    assert not isinstance(plain, SnapshotLoader)
    assert not wrapper.begin_snapshot(TABLE)
    assert wrapper.write_snapshot(chunk(range(0, 5), 1)) == 5
    wrapper.finish_snapshot(TABLE)
    assert [b.num_rows for b in plain.written] == [5]


def test_snapshot_aware_sink_dispatches_to_duckdb(sink: DuckDBSink) -> None:
    wrapper = SnapshotAwareSink(sink)
    assert wrapper.begin_snapshot(TABLE)
    assert wrapper.write_snapshot(chunk(range(0, 30), 2)) == 30
    assert not has_key(sink)
    wrapper.finish_snapshot(TABLE)
    assert has_key(sink)
    assert len(content(sink)) == 30


def test_only_the_initial_snapshot_loads_in_bulk(sink: DuckDBSink) -> None:
    """An on-demand snapshot runs while CDC upserts into the table, which needs the key."""
    from types import SimpleNamespace

    from dbmazz.snapshot.context import Plan
    from dbmazz.snapshot.progress import INITIAL, ON_DEMAND
    from dbmazz.snapshot.read import Chunk
    from dbmazz.snapshot.stage import Snapshots

    snapshots = Snapshots(SimpleNamespace(sink=SnapshotAwareSink(sink)),  # type: ignore[arg-type]
                          mode="initial", tables={"public.t": TABLE}, source=None,
                          checkpoint=None)
    plan = Plan(1, None, [Chunk("public.t", 0, 0, None)], [], {})
    bulk: set[str] = set()
    snapshots._begin_bulk(plan, ON_DEMAND, {"public.t": TABLE}, bulk)
    assert not bulk and has_key(sink)
    snapshots._begin_bulk(plan, INITIAL, {"public.t": TABLE}, bulk)
    assert bulk == {"public.t"} and not has_key(sink)
    snapshots._finish_bulk(bulk, TABLE)
    assert not bulk and has_key(sink)
