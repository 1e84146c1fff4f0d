"""Unchanged TOAST values of rows whose primary key changed (REPLICA IDENTITY DEFAULT).

PostgreSQL sends such an update as the new row, with every unchanged out-of-line (TOAST)
value flagged ``u`` instead of sent, and the old row as its key only. The value is then
known only where the row was before the move: earlier in the batch, or in the target under
an old key. Two steps, both columnwise:

1. :func:`fill_along_chains` (in the merge). Every change is linked to the change it
   modified: its *predecessor* is the latest earlier change of the key it was made
   to — the old key for a key change, its own key otherwise. An unchanged value is taken
   from the nearest predecessor, following links across key changes, that carried it.
   Rows still lacking a value whose chain of predecessors contains a key change are
   *carry rows*: the value is in the target, under one of the keys the row had. Each gets
   a list of *candidates*, one per key of its chain, with the range of versions in which
   that key held the row (:data:`RANK` 0 is the row's own key).
2. :func:`resolve_carries` (in the engine, before the write), given the target's current
   rows of the candidate keys (:class:`dbmazz.sink.base.RowReader`): the first candidate,
   in rank order, whose current row held this row takes its values.

Which target row holds the value (``v`` = its ``dbmazz_cdc_version``; ``lo``/``hi`` the
commit LSNs of the moves into and out of that key within the chain):

* the row's own key, alive with ``v ≥ lo`` — an earlier run already applied the move
  (a replay after a restart): the value is there, the column stays absent (partial);
* an intermediate key, alive with ``lo ≤ v < hi`` — the same, one move further back;
* the oldest key (the origin), alive with ``v ≤ hi``, or soft-deleted with ``v = hi``
  (deleted by this very move, values intact) — the normal case: every earlier flush is
  applied, nothing later is.

The first qualifying candidate in rank order wins (the key nearest the row); in a part of
a split transaction after its first the oldest wins, since earlier parts of the same
transaction wrote versions equal to the move's (see :func:`resolve_carries`). Versions
alone cannot order two changes of one transaction, so a restart in the middle of a split
transaction whose later parts reuse an old key may still take the reused row's value when
the replayed move is in a part after the first (in the first part a tie can only be an
earlier run's write: tests/e2e/test_key_change_toast.py::
test_a_restart_in_a_split_transaction_whose_later_part_reused_the_old_key).

When no candidate qualifies the column stays absent and a warning says so (a replay of
changes a restart had applied, whose row a later change deleted again; or a target that
lost rows).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from dbmazz.contract import VERSION_COLUMN
from dbmazz.lazy import lazy_module
from dbmazz.pipeline.batch import TableBatch, UpsertGroup

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")  # imported at first use: ~30 MB a run may not need

log = logging.getLogger(__name__)

#: Position of a change in the merge's ordered frame (then: of a row in its upsert group).
ROW = "__dbmazz_row"
#: True on carry rows.
CARRY = "__dbmazz_carry"
RANK = "__dbmazz_rank"
LO = "__dbmazz_lo"
HI = "__dbmazz_hi"
VERSION = VERSION_COLUMN
DELETED = "dbmazz_is_deleted"

I64 = npt.NDArray[np.int64]


def _jump(link: I64) -> I64:
    """Follow ``link`` (a forest whose roots link to themselves) to each row's root, by
    pointer doubling: log2(longest chain) vectorized steps."""
    while True:
        nxt = link[link]
        if np.array_equal(nxt, link):
            return link
        link = nxt


def fill_along_chains(
    df: pl.DataFrame,
    keys: list[str],
    old: list[str],
    columns: list[str],
    toasted: list[int],
    moved: pl.Expr,
    *,
    lsn: str,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Fill unchanged values along predecessor chains (see the module docstring).

    ``df`` is in stream order with :data:`ROW` = 0..n-1, flags ``__u<i>`` per toasted
    column, the old key columns ``old`` and ``moved`` marking key-changing updates.
    Returns the frame (values filled, flags cleared where filled, :data:`CARRY` added) and
    the carry candidates (:data:`ROW`, :data:`RANK`, the key columns, :data:`LO`,
    :data:`HI`), or None when there are no carry rows.
    """
    n = df.height
    row = np.arange(n, dtype=np.int64)
    lookup = [pl.when(moved).then(pl.col(o)).otherwise(pl.col(k)).alias(f"__lk{j}")
              for j, (k, o) in enumerate(zip(keys, old, strict=True))]
    by = [f"__lk{j}" for j in range(len(keys))]
    left = df.select(pl.col(ROW).cast(pl.Int64), *lookup)
    right = df.select(pl.col(ROW).cast(pl.Int64).alias("__pred"),
                      *[pl.col(k).alias(b) for k, b in zip(keys, by, strict=True)])
    # The predecessor: the latest earlier change made to the key this one was made to.
    pred_frame = left.join_asof(right, left_on=ROW, right_on="__pred", by=by,
                                strategy="backward", allow_exact_matches=False,
                                check_sortedness=False)
    pred = pred_frame["__pred"].fill_null(-1).to_numpy().astype(np.int64)
    is_moved = df.select(moved.fill_null(False)).to_series().to_numpy().astype(np.bool_)
    has_pred = pred >= 0

    updates: list[pl.Expr] = []
    unresolved = np.zeros(n, dtype=np.bool_)
    for i in toasted:
        name, flag_name = columns[i], f"__u{i}"
        flag = df[flag_name].to_numpy().astype(np.bool_)
        root = _jump(np.where(flag & has_pred, pred, row))
        found = flag & ~flag[root]
        still = flag & flag[root]
        unresolved |= still
        if found.any():
            values = df[name].gather(pl.Series(root))
            updates.append(pl.when(pl.Series(found)).then(values).otherwise(pl.col(name))
                           .alias(name))
        updates.append(pl.lit(pl.Series(flag_name, still)).alias(flag_name))
    # The last key change at or before each change, on its chain.
    last_move = _jump(np.where(is_moved | ~has_pred, row, pred))
    carry = unresolved & is_moved[last_move]
    df = df.with_columns([*updates, pl.Series(CARRY, carry)])
    if not carry.any():
        return df, None

    versions = df[lsn].cast(pl.Int64)
    parts: list[pl.DataFrame] = []
    rows = np.flatnonzero(carry)
    moves = last_move[rows]
    # Rank 0: the row's own key, held since the last move into it.
    parts.append(pl.DataFrame({
        ROW: rows, RANK: np.zeros(len(rows), dtype=np.int32),
    }).with_columns(
        df.select(keys)[rows].to_dict().values(),
    ).with_columns(pl.Series(LO, versions.gather(pl.Series(moves)), dtype=pl.Int64),
                   pl.lit(None, dtype=pl.Int64).alias(HI)))
    old_keys = df.select([pl.col(o).alias(k) for k, o in zip(keys, old, strict=True)])
    rank = 1
    while len(rows):
        # The key each move left, held from the move before it on the chain (if any).
        before = pred[moves]
        prior = np.where(before >= 0, last_move[np.maximum(before, 0)], -1)
        prior = np.where((prior >= 0) & is_moved[np.maximum(prior, 0)], prior, -1)
        lo = versions.gather(pl.Series(np.maximum(prior, 0)))
        parts.append(pl.DataFrame({
            ROW: rows, RANK: np.full(len(rows), rank, dtype=np.int32),
        }).with_columns(
            old_keys[moves].to_dict().values(),
        ).with_columns(
            pl.when(pl.Series(prior >= 0)).then(lo).otherwise(None).cast(pl.Int64).alias(LO),
            pl.Series(HI, versions.gather(pl.Series(moves)), dtype=pl.Int64),
        ))
        keep = prior >= 0
        rows, moves = rows[keep], prior[keep]
        rank += 1
    return df, pl.concat(parts, how="vertical_relaxed")


def group_candidates(candidates: pl.DataFrame, group_rows: pl.Series) -> pa.Table:
    """The candidates of one upsert group, :data:`ROW` renumbered to the group's rows."""
    position = pl.DataFrame({ROW: group_rows.cast(pl.Int64),
                             "__pos": np.arange(len(group_rows), dtype=np.int64)})
    joined = candidates.join(position, on=ROW, how="inner")
    return joined.drop(ROW).rename({"__pos": ROW}).to_arrow()


def carry_keys(batch: TableBatch) -> pa.Table | None:
    """Every key whose current target row a carry needs (distinct), or None."""
    keys = list(batch.table.key_columns)
    frames = [_frame(g.carry).select(keys) for g in batch.upserts if g.carry is not None]
    if not frames:
        return None
    frame = pl.concat(frames, how="vertical")
    return frame.unique(maintain_order=True).to_arrow()


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def carry_columns(batch: TableBatch) -> list[str]:
    """The user columns some carry group lacks, in table order."""
    absent: set[str] = set()
    for group in batch.upserts:
        if group.carry is not None:
            absent.update(set(batch.table.column_names) - set(group.rows.column_names))
    return [c for c in batch.table.column_names if c in absent]


def resolve_carries(batch: TableBatch, current: pa.Table) -> TableBatch:
    """Fill carry groups from the target's ``current`` rows (key columns, the
    :func:`carry_columns`, ``dbmazz_cdc_version``, ``dbmazz_is_deleted``)."""
    keys = list(batch.table.key_columns)
    names = list(batch.table.column_names)
    # Which qualifying candidate wins. Versions equal to the move's commit LSN are
    # ambiguous: written by an earlier run that applied this transaction (a replay: the
    # key nearest the row holds it), or by earlier parts of this same transaction when it
    # is split across batches (the row has not moved yet: the oldest key holds it). Outside
    # a split only the first can happen; inside one the second is the normal case (DuckDB
    # commits each part; StarRocks refuses reads of keys its open transaction loaded and
    # skips the parts of a transaction committed before). The first part has no earlier
    # part: a tie there was written by an earlier run (a replay), as outside a split.
    oldest_first = batch.split is not None and batch.split.index > 0
    now = pl.from_arrow(current)
    assert isinstance(now, pl.DataFrame)
    resolved: list[UpsertGroup] = []
    rest: list[UpsertGroup] = []
    for group in batch.upserts:
        if group.carry is None:
            rest.append(group)
            continue
        cands = pl.from_arrow(group.carry)
        rows = pl.from_arrow(group.rows)
        assert isinstance(cands, pl.DataFrame) and isinstance(rows, pl.DataFrame)
        absent = [c for c in names if c not in rows.columns]
        target = now.select([
            *[pl.col(k).cast(cands.schema[k]) for k in keys],
            *[pl.col(c) for c in absent],
            pl.col(VERSION).cast(pl.Int64).fill_null(-1),
            pl.col(DELETED).cast(pl.Boolean).fill_null(False),
        ])
        alive, version = ~pl.col(DELETED), pl.col(VERSION)
        own, origin = pl.col(HI).is_null(), pl.col(LO).is_null()
        qualifies = (
            pl.when(own).then(alive & (version >= pl.col(LO)))
            .when(origin).then((alive & (version <= pl.col(HI)))
                               | (~alive & (version == pl.col(HI))))
            .otherwise(alive & (version >= pl.col(LO)) & (version < pl.col(HI)))
        )
        best = (cands.join(target, on=keys, how="inner").filter(qualifies)
                .sort([ROW, RANK], descending=[False, oldest_first])
                .unique(ROW, keep="first", maintain_order=True)
                .select([ROW, RANK, *absent]))
        indexed = rows.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64))
        joined = indexed.join(best, on=ROW, how="left")
        take = joined.filter(pl.col(RANK).fill_null(0) > 0)
        stay = joined.filter(pl.col(RANK).fill_null(0) == 0)
        missing = int(joined[RANK].null_count())
        if missing:
            log.warning(
                "%s: %d row(s) whose primary key changed had no row in the target holding "
                "their unchanged TOAST value(s) %s; they keep what the target has under the "
                "new key. Expected only when replaying changes an earlier run applied and a "
                "later change deleted again; otherwise the target lacks rows (resnapshot it).",
                batch.table.source_name, missing, ", ".join(absent))
        order = [c for c in names if c in rows.columns or c in absent]
        audit = [c for c in rows.columns if c not in names]
        if take.height:
            resolved.append(UpsertGroup(rows=take.select([*order, *audit]).to_arrow(),
                                        partial=False))
        if stay.height:
            resolved.append(UpsertGroup(rows=stay.select(rows.columns).to_arrow(),
                                        partial=True))
    # Carry rows go first: a restart that loaded any later group had loaded these too.
    batch.upserts = [*resolved, *rest]
    return batch

