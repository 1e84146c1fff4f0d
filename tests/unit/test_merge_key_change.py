"""Merge of key changes whose TOAST values arrive unchanged (REPLICA IDENTITY DEFAULT):
values followed across old keys within a batch, carry candidates for the rest, and their
resolution against the target's current rows."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import pytest

from dbmazz.pipeline.batch import SplitPart, TableBatch
from dbmazz.pipeline.carry import carry_columns, carry_keys, resolve_carries
from dbmazz.pipeline.merge import merge_changes
from tests.unit.test_merge import INS, TABLE, D, U, changes

DOC = ["doc"]


def merged(rows: list[dict[str, Any]]) -> TableBatch:
    return merge_changes(changes(rows), TABLE)


def deleted(batch: TableBatch) -> set[int]:
    return set(batch.deletes.column("id").to_pylist()) if batch.deletes is not None else set()


def candidates(batch: TableBatch) -> list[tuple[int, int, int | None, int | None]]:
    """(rank, key, lo, hi) of every carry candidate, by row then rank."""
    out = []
    for group in batch.upserts:
        if group.carry is not None:
            rows = group.carry.sort_by([("__dbmazz_row", "ascending"),
                                        ("__dbmazz_rank", "ascending")]).to_pylist()
            out += [(r["__dbmazz_rank"], r["id"], r["__dbmazz_lo"], r["__dbmazz_hi"])
                    for r in rows]
    return out


def test_value_changed_earlier_in_the_batch_under_the_old_key_moves_with_the_row() -> None:
    batch = merged([
        {"op": U, "id": 1, "name": "a", "doc": "D2", "lsn": 10},
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
    ])
    [group] = batch.upserts
    assert group.carry is None and not group.partial
    assert group.rows.to_pylist()[0]["doc"] == "D2"
    assert deleted(batch) == {1}


def test_insert_then_two_key_changes_take_the_inserted_value() -> None:
    batch = merged([
        {"op": INS, "id": 1, "name": "a", "doc": "D", "lsn": 10},
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
        {"op": U, "id": 2001, "name": "a", "unchanged": DOC, "old_id": 1001, "lsn": 30},
    ])
    [group] = batch.upserts
    assert group.rows.to_pylist()[0]["id"] == 2001
    assert group.rows.to_pylist()[0]["doc"] == "D" and not group.partial
    assert deleted(batch) == {1, 1001}


def test_key_change_without_the_value_in_the_batch_names_the_old_key() -> None:
    batch = merged([
        {"op": U, "id": 7, "name": "x", "doc": "other", "lsn": 5},
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
    ])
    carry = [g for g in batch.upserts if g.carry is not None]
    assert len(carry) == 1 and carry[0].partial
    assert carry[0].rows.column_names[:2] == ["id", "name"]
    assert batch.upserts[0] is carry[0], "carry groups come first"
    # Own key since the move; the old key until it.
    assert candidates(batch) == [(0, 1001, 20, None), (1, 1, None, 20)]
    assert carry_keys(batch) is not None and carry_keys(batch).column("id").to_pylist() == [1001, 1]
    assert carry_columns(batch) == ["doc"]


def test_key_changed_twice_lists_every_key_with_its_range() -> None:
    batch = merged([
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
        {"op": U, "id": 2001, "name": "b", "unchanged": DOC, "old_id": 1001, "lsn": 30},
    ])
    assert candidates(batch) == [(0, 2001, 30, None), (1, 1001, 20, 30), (2, 1, None, 20)]
    assert deleted(batch) == {1, 1001}
    [group] = batch.upserts
    assert group.rows.to_pylist()[0]["name"] == "b"


def test_unchanged_update_before_the_key_change_reaches_back_to_the_old_key() -> None:
    batch = merged([
        {"op": U, "id": 1, "name": "v2", "unchanged": DOC, "lsn": 10},
        {"op": U, "id": 1001, "name": "v2", "unchanged": DOC, "old_id": 1, "lsn": 20},
    ])
    assert candidates(batch) == [(0, 1001, 20, None), (1, 1, None, 20)]


def test_key_change_then_delete_leaves_only_deletes() -> None:
    batch = merged([
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
        {"op": D, "id": 1001, "lsn": 30},
    ])
    assert batch.upserts == []
    assert deleted(batch) == {1, 1001}


def test_moved_away_and_back_still_looks_for_the_value() -> None:
    batch = merged([
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
        {"op": U, "id": 1, "name": "b", "unchanged": DOC, "old_id": 1001, "lsn": 30},
    ])
    # Normally the target's row 1 still holds it; a replay may find it under 1001.
    assert candidates(batch) == [(0, 1, 30, None), (1, 1001, 20, 30), (2, 1, None, 20)]
    assert deleted(batch) == {1001}


def test_old_key_reused_after_the_move_is_not_a_source() -> None:
    batch = merged([
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
        {"op": INS, "id": 1, "name": "new", "doc": "NEW", "lsn": 20},
    ])
    rows = {r["id"]: r for g in batch.upserts for r in g.rows.to_pylist()}
    assert rows[1]["doc"] == "NEW"
    assert "doc" not in rows[1001]
    assert candidates(batch) == [(0, 1001, 20, None), (1, 1, None, 20)]


def test_same_key_updates_keep_plain_partial_groups() -> None:
    batch = merged([{"op": U, "id": 1, "name": "x", "unchanged": DOC, "lsn": 10}])
    [group] = batch.upserts
    assert group.partial and group.carry is None


def current(rows: list[tuple[int, str | None, int, bool]]) -> pa.Table:
    return pa.table({
        "id": pa.array([r[0] for r in rows], pa.int64()),
        "doc": pa.array([r[1] for r in rows], pa.string()),
        "dbmazz_cdc_version": pa.array([r[2] for r in rows], pa.int64()),
        "dbmazz_is_deleted": pa.array([r[3] for r in rows], pa.bool_()),
    })


def one_move() -> TableBatch:
    return merged([
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
    ])


def resolved_rows(batch: TableBatch) -> dict[int, tuple[bool, dict[str, Any]]]:
    assert all(g.carry is None for g in batch.upserts)
    return {r["id"]: (g.partial, r) for g in batch.upserts for r in g.rows.to_pylist()}


def test_resolve_takes_the_value_from_the_old_key() -> None:
    rows = resolved_rows(resolve_carries(one_move(), current([(1, "D", 5, False)])))
    partial, row = rows[1001]
    assert not partial and row["doc"] == "D" and row["name"] == "a"
    assert row["dbmazz_cdc_version"] == 20


def test_resolve_takes_a_row_soft_deleted_by_this_very_move() -> None:
    rows = resolved_rows(resolve_carries(one_move(), current([(1, "D", 20, True)])))
    assert rows[1001] == (False, rows[1001][1]) and rows[1001][1]["doc"] == "D"


def test_resolve_leaves_the_value_where_an_earlier_run_moved_it() -> None:
    # Replay: the move was applied (1001 alive at its version), the old key was reused.
    rows = resolved_rows(resolve_carries(
        one_move(), current([(1001, "D", 20, False), (1, "NEW", 20, False)])))
    partial, row = rows[1001]
    assert partial and "doc" not in row


def test_resolve_ignores_an_old_key_changed_after_the_move() -> None:
    rows = resolved_rows(resolve_carries(one_move(), current([(1, "LATER", 25, False)])))
    assert rows[1001][0] and "doc" not in rows[1001][1]


def test_resolve_ignores_a_soft_deleted_row_already_under_the_new_key() -> None:
    rows = resolved_rows(resolve_carries(
        one_move(), current([(1001, "STALE", 15, True), (1, "D", 5, False)])))
    assert rows[1001][1]["doc"] == "D"


def test_resolve_without_any_source_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dbmazz.pipeline.carry"):
        rows = resolved_rows(resolve_carries(one_move(), current([])))
    assert rows[1001][0] and "doc" not in rows[1001][1]
    assert "public.t" in caplog.text and "doc" in caplog.text


def test_resolve_two_hops_prefers_the_key_nearest_the_row() -> None:
    batch = merged([
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
        {"op": U, "id": 2001, "name": "b", "unchanged": DOC, "old_id": 1001, "lsn": 30},
    ])
    # An earlier run applied the first move (1 soft-deleted at 20, 1001 alive at 20).
    rows = resolved_rows(resolve_carries(
        batch, current([(1, "D", 20, True), (1001, "D", 20, False)])))
    assert rows[2001][1]["doc"] == "D" and not rows[2001][0]


def test_resolve_in_a_split_part_prefers_the_old_key_over_ties_of_earlier_parts() -> None:
    # Part 1 of transaction 20: earlier parts changed 1 (still there) and the old row 1001,
    # deleted just before the move (not applied yet): both rows carry version 20.
    batch = merged([
        {"op": D, "id": 1001, "lsn": 20},
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
    ])
    batch.split = SplitPart(commit_lsn=20, index=1, last=False)
    rows = resolved_rows(resolve_carries(
        batch, current([(1001, "OLD ROW", 20, False), (1, "D", 20, False)])))
    assert rows[1001][1]["doc"] == "D" and not rows[1001][0]
    # The same rows outside a split mean an earlier run applied the move: 1001 is kept.
    batch.split = None
    batch = merged([
        {"op": D, "id": 1001, "lsn": 20},
        {"op": U, "id": 1001, "name": "a", "unchanged": DOC, "old_id": 1, "lsn": 20},
    ])
    rows = resolved_rows(resolve_carries(
        batch, current([(1001, "D", 20, False), (1, "REUSED", 20, False)])))
    assert rows[1001][0] and "doc" not in rows[1001][1]


def test_resolve_in_the_first_part_of_a_split_takes_ties_as_an_earlier_runs_writes() -> None:
    # No part comes before the first: rows at the transaction's version were written by an
    # earlier run (a replay), so the key nearest the row holds the value, as outside a split.
    batch = one_move()
    batch.split = SplitPart(commit_lsn=20, index=0, last=False)
    rows = resolved_rows(resolve_carries(
        batch, current([(1001, "D", 20, False), (1, "REUSED", 20, False)])))
    assert rows[1001][0] and "doc" not in rows[1001][1]
