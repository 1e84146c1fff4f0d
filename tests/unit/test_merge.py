"""Merge semantics on hand-built in-flight batches (the decoder's output contract)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from dbmazz.pipeline.batch import ColumnSpec, TableSchema
from dbmazz.pipeline.merge import merge_changes

INS, U, D = 0, 1, 2
NAMES = ("id", "name", "doc")
TABLE = TableSchema(
    namespace="public",
    name="t",
    columns=(
        ColumnSpec("id", pa.int64(), 20, -1),
        ColumnSpec("name", pa.string(), 25, -1),
        ColumnSpec("doc", pa.string(), 25, -1),
    ),
    key_columns=("id",),
    target_name="t",
)


def changes(rows: list[dict[str, Any]], table: TableSchema = TABLE) -> pa.RecordBatch:
    """rows: {op, lsn, <col>: value, unchanged: [cols], old_id: value}."""
    names = table.column_names
    arrays: dict[str, list[Any]] = {c: [] for c in names}
    meta: dict[str, list[Any]] = {"op": [], "lsn": [], "mask": [], "old": []}
    for row in rows:
        for c in names:
            arrays[c].append(row.get(c))
        meta["op"].append(row["op"])
        meta["lsn"].append(row.get("lsn", 100))
        meta["mask"].append(sum(1 << names.index(c) for c in row.get("unchanged", ())))
        meta["old"].append(row.get("old_id"))
    fields = [(c.name, pa.array(arrays[c.name], c.arrow_type)) for c in table.columns]
    fields += [
        ("__dbmazz_op", pa.array(meta["op"], pa.int8())),
        ("__dbmazz_lsn", pa.array(meta["lsn"], pa.uint64())),
        ("__dbmazz_seq", pa.array(range(len(rows)), pa.uint32())),
        ("__dbmazz_unchanged", pa.array(meta["mask"], pa.uint64())),
        ("__dbmazz_old_id", pa.array(meta["old"], pa.int64())),
    ]
    return pa.RecordBatch.from_arrays([a for _, a in fields], names=[n for n, _ in fields])


def upserted(batch: Any) -> dict[int, dict[str, Any]]:
    out = {}
    for group in batch.upserts:
        for row in group.rows.to_pylist():
            out[row["id"]] = row
    return out


def test_last_change_wins_per_key() -> None:
    result = merge_changes(
        changes(
            [
                {"op": INS, "id": 1, "name": "a", "doc": "x", "lsn": 10},
                {"op": U, "id": 1, "name": "b", "doc": "y", "lsn": 11},
                {"op": INS, "id": 2, "name": "c", "doc": "z", "lsn": 11},
                {"op": U, "id": 1, "name": "final", "doc": "w", "lsn": 12},
            ]
        ),
        TABLE,
    )
    rows = upserted(result)
    assert set(rows) == {1, 2}
    assert rows[1]["name"] == "final" and rows[1]["doc"] == "w"
    assert rows[1]["dbmazz_cdc_version"] == 12 and rows[1]["dbmazz_op_type"] == U
    assert result.deletes is None
    assert (result.first_lsn, result.last_lsn, result.source_changes) == (10, 12, 4)


def test_delete_after_insert_leaves_only_the_delete() -> None:
    result = merge_changes(
        changes([{"op": INS, "id": 1, "name": "a", "doc": "x"}, {"op": D, "id": 1}]), TABLE
    )
    assert upserted(result) == {}
    assert result.deletes is not None
    [row] = result.deletes.to_pylist()
    assert row["id"] == 1 and row["dbmazz_is_deleted"] is True and row["dbmazz_op_type"] == D
    assert set(result.deletes.column_names) == {
        "id", "dbmazz_op_type", "dbmazz_is_deleted", "dbmazz_synced_at", "dbmazz_cdc_version"
    }


def test_reinsert_after_delete_is_an_upsert() -> None:
    result = merge_changes(
        changes([{"op": D, "id": 1}, {"op": INS, "id": 1, "name": "again", "doc": "d"}]), TABLE
    )
    assert result.deletes is None
    assert upserted(result)[1]["name"] == "again"
    assert upserted(result)[1]["dbmazz_is_deleted"] is False


def test_toast_filled_from_earlier_change_of_same_key() -> None:
    big = "v" * 100_000
    result = merge_changes(
        changes(
            [
                {"op": INS, "id": 1, "name": "a", "doc": big},
                {"op": U, "id": 1, "name": "b", "unchanged": ["doc"]},
                {"op": U, "id": 1, "name": "c", "unchanged": ["doc"]},
            ]
        ),
        TABLE,
    )
    [group] = result.upserts
    assert not group.partial
    assert upserted(result)[1]["doc"] == big and upserted(result)[1]["name"] == "c"


def test_unfillable_toast_goes_to_a_partial_group_without_the_column() -> None:
    result = merge_changes(
        changes(
            [
                {"op": U, "id": 1, "name": "only-name", "unchanged": ["doc"]},
                {"op": INS, "id": 2, "name": "full", "doc": "d"},
                {"op": U, "id": 3, "name": None, "doc": None},
            ]
        ),
        TABLE,
    )
    groups = {g.partial: g for g in result.upserts}
    assert set(groups) == {True, False}
    assert "doc" not in groups[True].rows.column_names
    assert groups[True].rows.column("id").to_pylist() == [1]
    full = {r["id"]: r for r in groups[False].rows.to_pylist()}
    # A real NULL sent by the source is a value, not an unchanged column.
    assert full[3]["doc"] is None and "doc" in groups[False].rows.column_names
    assert sorted(full) == [2, 3]


def test_null_value_is_not_mistaken_for_unchanged() -> None:
    result = merge_changes(
        changes(
            [
                {"op": INS, "id": 1, "name": "a", "doc": None},
                {"op": U, "id": 1, "name": "b", "unchanged": ["doc"]},
            ]
        ),
        TABLE,
    )
    [group] = result.upserts
    assert not group.partial and group.rows.to_pylist()[0]["doc"] is None


def test_primary_key_change_deletes_old_key() -> None:
    result = merge_changes(
        changes(
            [
                {"op": INS, "id": 1, "name": "a", "doc": "x"},
                {"op": U, "id": 5, "name": "a", "doc": "x", "old_id": 1},
            ]
        ),
        TABLE,
    )
    assert set(upserted(result)) == {5}
    assert result.deletes is not None and result.deletes.column("id").to_pylist() == [1]


def test_key_moved_away_and_back_keeps_the_row() -> None:
    result = merge_changes(
        changes(
            [
                {"op": U, "id": 2, "name": "a", "doc": "x", "old_id": 1},
                {"op": U, "id": 1, "name": "a", "doc": "x", "old_id": 2},
            ]
        ),
        TABLE,
    )
    assert set(upserted(result)) == {1}
    assert result.deletes is not None and result.deletes.column("id").to_pylist() == [2]


def test_an_unchanged_key_stored_out_of_line_comes_from_the_old_key() -> None:
    # A long text key is TOASTed: an update that leaves it alone sends it flagged unchanged,
    # with the old key (inlined) beside it. Neither a key change nor a row without a key.
    result = merge_changes(
        changes(
            [
                {"op": U, "name": "b", "unchanged": ["id", "doc"], "old_id": 7},
                {"op": U, "name": "c", "unchanged": ["id"], "doc": "d", "old_id": 8},
            ]
        ),
        TABLE,
    )
    assert result.deletes is None
    groups = {g.partial: g for g in result.upserts}
    assert groups[True].rows.column("id").to_pylist() == [7]
    assert "doc" not in groups[True].rows.column_names and groups[True].carry is None
    assert groups[False].rows.to_pylist()[0]["id"] == 8


def test_composite_keys_and_wide_tables() -> None:
    ncols = 70
    cols = tuple(ColumnSpec(f"c{i}", pa.int32(), 23, -1) for i in range(ncols))
    wide = TableSchema("s", "w", cols, key_columns=("c0", "c1"), target_name="w")
    n = 4
    data = {f"c{i}": pa.array([i * 10 + (r % 2) for r in range(n)], pa.int32())
            for i in range(ncols)}
    data["c0"] = pa.array([1, 1, 2, 1], pa.int32())
    data["c1"] = pa.array([1, 2, 1, 1], pa.int32())
    # Row 3 updates key (1,1) with column 69 unchanged: filled from row 0.
    mask = bytearray(n * 9)
    mask[3 * 9 + 69 // 8] |= 1 << (69 % 8)
    data["c69"] = pa.array([111, 2, 3, None], pa.int32())
    meta = {
        "__dbmazz_op": pa.array([INS, INS, INS, U], pa.int8()),
        "__dbmazz_lsn": pa.array([1, 1, 1, 2], pa.uint64()),
        "__dbmazz_seq": pa.array(range(n), pa.uint32()),
        "__dbmazz_unchanged": pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(9), n, [None, pa.py_buffer(bytes(mask))]
        ),
    }
    batch = pa.RecordBatch.from_pydict({**data, **meta})
    result = merge_changes(batch, wide)
    rows = {(r["c0"], r["c1"]): r for g in result.upserts for r in g.rows.to_pylist()}
    assert set(rows) == {(1, 1), (1, 2), (2, 1)}
    assert rows[(1, 1)]["c69"] == 111 and rows[(1, 1)]["dbmazz_cdc_version"] == 2
    assert all(not g.partial for g in result.upserts)


def test_empty_input_gives_empty_batch() -> None:
    assert merge_changes(changes([]), TABLE).is_empty
