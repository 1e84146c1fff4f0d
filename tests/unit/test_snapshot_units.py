"""Snapshot pieces without a database: chunk plans, SQL, CSV parsing, the CDC watch."""

from __future__ import annotations

import itertools

import pyarrow as pa

from dbmazz.contract import AUDIT_NAMES
from dbmazz.pipeline.batch import ColumnSpec, TableBatch, TableSchema, UpsertGroup
from dbmazz.snapshot.load import snapshot_batch
from dbmazz.snapshot.progress import TableProgress
from dbmazz.snapshot.read import (
    Chunk,
    TableLayout,
    column_expression,
    parse_csv,
    plan_chunks,
    select_sql,
    typed_table,
)
from dbmazz.snapshot.sink import Watch
from dbmazz.source.types import BOOL, INT8, NUMERIC, TEXT, TIMESTAMPTZ


def schema(*columns: tuple[str, pa.DataType, int, int], keys: tuple[str, ...] = ("id",)
           ) -> TableSchema:
    return TableSchema("public", "t", tuple(ColumnSpec(n, t, o, m) for n, t, o, m in columns),
                       keys, "t")


def test_chunks_cover_every_page_and_the_last_is_open() -> None:
    chunks = plan_chunks(TableLayout("public.t", 10, 100, "f"), chunk_pages=4)
    assert [(c.first_page, c.end_page) for c in chunks] == [(0, 4), (4, 8), (8, None)]
    assert chunks[0].predicate() == "ctid < '(4,0)'::tid"
    assert chunks[1].predicate() == "ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid"
    assert chunks[2].predicate() == "ctid >= '(8,0)'::tid"


def test_a_ramp_starts_with_smaller_chunks_and_still_covers_every_page_once() -> None:
    layout = TableLayout("public.t", 10_000, 1_000_000, "f")
    chunks = plan_chunks(layout, chunk_pages=1024, ramp=True)
    assert [c.pages for c in chunks] == [64, 128, 256, 512, *[1024] * 8, None]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert chunks[0].first_page == 0 and chunks[-1].first_page == 960 + 8 * 1024
    for before, after in itertools.pairwise(chunks):
        assert before.end_page == after.first_page  # no page twice, none left out
    # Ramp chunks smaller than MIN_RAMP_PAGES are not made (tests' 4-page chunks stay).
    assert plan_chunks(layout, chunk_pages=4, ramp=True) == plan_chunks(layout, 4)
    # A table of one chunk stays one chunk.
    assert plan_chunks(TableLayout("public.t", 900, 9, "f"), 1024, ramp=True)[0].pages is None


def test_small_empty_and_partitioned_tables_are_one_chunk() -> None:
    for layout in (TableLayout("public.t", 0, 0, "f"), TableLayout("public.t", 3, 9, "f"),
                   TableLayout("public.p", 0, 50, "f", partitioned=True)):
        [chunk] = plan_chunks(layout, chunk_pages=4)
        assert chunk.predicate() == "" and chunk.end_page is None
    assert plan_chunks(TableLayout("public.t", 100, 0, "f"), 4, tid_ranges=False)[0].pages is None


def test_every_chunk_reads_only_the_rows_the_publication_filters_in() -> None:
    layout = TableLayout("public.t", 10, 100, "f", row_filter="(amount > 5)")
    chunks = plan_chunks(layout, chunk_pages=4)
    assert [c.row_filter for c in chunks] == ["(amount > 5)"] * 3
    assert chunks[1].predicate() == (
        "ctid >= '(4,0)'::tid AND ctid < '(8,0)'::tid AND ((amount > 5))")
    [root] = plan_chunks(TableLayout("public.p", 0, 9, "f", True, "(region = 'eu')"), 4)
    assert select_sql(schema(("id", pa.int64(), INT8, -1)), root, native=False) == (
        "SELECT \"id\" FROM \"public\".\"t\" WHERE ((region = 'eu'))")


def test_columns_are_read_as_their_output_function_text() -> None:
    assert column_expression("id", INT8, native=True) == '"id"'
    assert column_expression("id", INT8, native=False) == '"id"'
    assert column_expression("ts", TIMESTAMPTZ, native=False) == '"ts"'
    assert column_expression("ts", TIMESTAMPTZ, native=True) == '"ts"::text'
    # Casts to text that differ from the output function go through format().
    assert "format('%s', \"ip\")" in column_expression("ip", 869, native=True)
    assert "format('%s', \"d\")" in column_expression("d", 70001, native=True)
    sql = select_sql(schema(("id", pa.int64(), INT8, -1)), Chunk("public.t", 0, 0, 4),
                     native=True)
    assert sql == "SELECT \"id\" FROM ONLY \"public\".\"t\" WHERE ctid < '(4,0)'::tid"


def test_csv_keeps_null_apart_from_the_empty_string() -> None:
    table = schema(("id", pa.int64(), INT8, -1), ("s", pa.string(), TEXT, -1),
                   ("b", pa.bool_(), BOOL, -1), ("n", pa.decimal128(5, 2), NUMERIC,
                                                 ((5 << 16) | 2) + 4))
    texts = parse_csv(b'1,"",t,1.50\n2,,f,\n3,"a,""b""\nc",,NaN\n', table)
    typed = typed_table(texts, table, None)
    assert typed.column("s").to_pylist() == ["", None, 'a,"b"\nc']
    assert typed.column("b").to_pylist() == [True, False, None]
    assert [str(v) if v is not None else None for v in typed.column("n").to_pylist()] == [
        "1.50", None, None]
    assert typed.schema == table.arrow_schema(with_audit=False)
    assert parse_csv(b"", table).num_rows == 0


def test_snapshot_rows_are_inserts_carrying_the_version() -> None:
    table = schema(("id", pa.int64(), INT8, -1))
    batch = snapshot_batch(table, pa.table({"id": [1, 2]}), 77, "snap-x-0")
    [group] = batch.upserts
    assert group.rows.column_names == ["id", *AUDIT_NAMES]
    assert group.rows.column("dbmazz_cdc_version").to_pylist() == [77, 77]
    assert group.rows.column("dbmazz_op_type").to_pylist() == [0, 0]
    assert not any(group.rows.column("dbmazz_is_deleted").to_pylist())
    assert (batch.first_lsn, batch.last_lsn, batch.batch_id) == (77, 77, "snap-x-0")
    assert snapshot_batch(table, pa.table({"id": pa.array([], pa.int64())}), 1, "b").is_empty


def _cdc(table: TableSchema, keys: list[tuple[int, str]], versions: list[int],
         deleted: bool = False) -> TableBatch:
    rows = pa.table({"a": [k[0] for k in keys], "b": [k[1] for k in keys],
                     "dbmazz_cdc_version": pa.array(versions, pa.int64())})
    if deleted:
        return TableBatch(table=table, deletes=rows)
    return TableBatch(table=table, upserts=[UpsertGroup(rows, partial=False)])


def test_watch_drops_keys_cdc_changed_at_or_after_the_watermark() -> None:
    table = schema(("a", pa.int64(), INT8, -1), ("b", pa.string(), TEXT, -1), keys=("a", "b"))
    watch = Watch(table)
    watch.begin_attempt()
    watch.observe(_cdc(table, [(1, "x")], [90]))  # before the watermark is known
    watch.set_watermark(100)
    watch.observe(_cdc(table, [(2, "x"), (3, "y")], [99, 100]))
    watch.observe(_cdc(table, [(4, "z")], [150], deleted=True))
    assert watch.open_gate()
    chunk = pa.table({"a": [1, 2, 3, 4, 3], "b": ["x", "x", "y", "z", "q"]})
    kept = watch.filter(chunk)
    assert list(zip(kept.column("a").to_pylist(), kept.column("b").to_pylist(),
                    strict=True)) == [(1, "x"), (2, "x"), (3, "q")]
    assert not watch.truncated
    watch.observe(TableBatch(table=table, truncate=True))
    assert watch.truncated


def test_a_truncate_before_the_gate_asks_for_a_new_watermark() -> None:
    table = schema(("id", pa.int64(), INT8, -1))
    watch = Watch(table)
    watch.begin_attempt()
    watch.observe(TableBatch(table=table, truncate=True))  # while the slot is created
    watch.set_watermark(10)
    assert not watch.open_gate()
    watch.begin_attempt()
    watch.set_watermark(20)
    assert watch.open_gate() and not watch.truncated


def test_progress_rate_and_eta() -> None:
    t = TableProgress("public.t", pages=100, rows_estimate=0, chunks_total=4, chunks_done=1,
                      rows_done=1000, started_at=0.0, finished_at=None)
    assert t.rows_expected == 4000
    assert t.eta_s is not None and t.eta_s > 0
    t.chunks_done, t.rows_done, t.finished_at = 4, 3900, 10.0
    assert t.done and t.eta_s == 0.0 and t.rows_per_s == 390.0 and t.rows_expected == 3900


def test_progress_bars_render_rows_rate_and_eta() -> None:
    import io

    from rich.console import Console

    from dbmazz.snapshot.progress import SnapshotProgress
    from dbmazz.ui.snapshot import show_progress

    table = TableProgress("public.t", pages=8, rows_estimate=4000, chunks_total=2,
                          chunks_done=1, rows_done=2000, started_at=1.0)
    progress = SnapshotProgress(kind="initial", tables={"public.t": table})
    out = io.StringIO()
    polls = iter([False, True])
    show_progress(lambda: progress.copy(), lambda: next(polls),
                  Console(file=out, force_terminal=True, width=120))
    text = out.getvalue()
    assert "public.t" in text and "2,000/4,000 rows" in text and "rows/s" in text
    assert "ETA" in text
