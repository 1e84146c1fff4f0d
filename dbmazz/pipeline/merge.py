"""Columnwise merge of one table's decoded changes into a :class:`TableBatch` (polars).

Input: the in-flight record batch of one relation (DESIGN.md §3): user columns, the
metadata columns ``__dbmazz_op/lsn/seq/unchanged`` and ``__dbmazz_old_<key>`` columns.

What the merge guarantees:

* **Last change wins per primary key**, in stream order.
* **Primary-key changes** become a delete of the old key followed by an upsert of the new
  one (the delete sorts just before the update that moved the key).
* **TOAST unchanged columns** are filled from the latest earlier change of the same row in
  the batch that carried a value — of the same key, or across key changes of the old key
  (:mod:`dbmazz.pipeline.carry`). Values the decoder could take from the old row
  (REPLICA IDENTITY FULL) were filled already.
* Rows whose unchanged columns could not be filled are **grouped by the set of columns they
  do carry**, so the sink can send each group as a partial update and never write NULL
  over a value the source did not change. Such rows whose key changed in the batch form
  groups of their own, first, with ``carry`` candidates: the value is in the target under
  an old key, and the engine resolves them before the write.

Every step is a polars expression over whole columns; the only Python loops are over
columns and over distinct unchanged-column patterns (a handful per batch).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.contract import LSN_COLUMN as LSN
from dbmazz.contract import OP_COLUMN as OP
from dbmazz.contract import (
    OP_DELETE,
    OP_INSERT,
    OP_UPDATE,
    audit_exprs,
    old_key_column,
    with_audit,
)
from dbmazz.contract import SEQ_COLUMN as SEQ
from dbmazz.contract import UNCHANGED_COLUMN as UNCHANGED
from dbmazz.errors import ProtocolError
from dbmazz.lazy import lazy_module
from dbmazz.pipeline.batch import TableBatch, TableSchema, UpsertGroup
from dbmazz.pipeline.carry import CARRY, ROW, fill_along_chains, group_candidates
from dbmazz.source.columnar import unchanged_mask

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")  # imported at first use: ~30 MB a run may not need

_ORDER = "__dbmazz_order"
_PATTERN = "__dbmazz_pattern"


def merge_changes(
    batch: pa.RecordBatch | pa.Table,
    table: TableSchema,
    *,
    synced_at: datetime | None = None,
) -> TableBatch:
    """Merge one table's decoded changes (in stream order) into a :class:`TableBatch`."""
    keys = list(table.key_columns)
    columns = list(table.column_names)
    n_changes = batch.num_rows
    if n_changes == 0:
        return TableBatch(table=table)
    synced = (synced_at or datetime.now(UTC)).replace(tzinfo=None)

    masks = [unchanged_mask(batch, i) for i in range(len(columns))]
    arrow = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    arrow = _unchanged_keys_from_old(arrow, table, masks)
    toasted = [i for i, mask in enumerate(masks) if mask.any()]
    lsns = arrow.column(LSN)
    if not toasted and _bulk_inserts(arrow, keys):
        # A bulk load (inserts only, every key once, rows in stream order): nothing to
        # merge, and no copy through polars either — the decoded columns are the rows.
        return TableBatch(
            table=table,
            upserts=[UpsertGroup(rows=_with_audit(arrow, columns, synced), partial=False)],
            first_lsn=int(pc.min(lsns).as_py()),
            last_lsn=int(pc.max(lsns).as_py()),
            source_changes=n_changes,
        )
    df = pl.from_arrow(arrow.drop_columns([UNCHANGED]))
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(
        [pl.Series(f"__u{i}", masks[i]) for i in toasted]
        + [(pl.col(SEQ).cast(pl.Int64) * 2 + 1).alias(_ORDER)]
    )

    df, candidates = _fill_unchanged(df, keys, columns, toasted)
    df = _expand_key_changes(df, keys, toasted)
    audit = audit_exprs(OP, LSN, synced)
    last = df.sort(_ORDER).unique(subset=keys, keep="last", maintain_order=True)

    deleted = last.filter(pl.col(OP) == OP_DELETE)
    deletes = deleted.select([*keys, *audit]).to_arrow() if deleted.height else None

    upserts: list[UpsertGroup] = []
    alive = last.filter(pl.col(OP) != OP_DELETE)
    if alive.height:
        if toasted:
            # One character per toasted column: exact for any width; distinct patterns are few.
            alive = alive.with_columns(
                pl.concat_str([pl.col(f"__u{i}").cast(pl.Int8) for i in toasted]).alias(_PATTERN)
            )
            carried: list[UpsertGroup] = []
            by = [_PATTERN, CARRY] if candidates is not None else [_PATTERN]
            for values, group in alive.group_by(by, maintain_order=True):
                code = values[0]
                absent = {columns[i] for i, bit in zip(toasted, str(code), strict=True)
                          if bit == "1"}
                present = [c for c in columns if c not in absent]
                group = group.sort(_ORDER)
                rows = group.select([*present, *audit]).to_arrow()
                if candidates is not None and values[1]:
                    carry = group_candidates(candidates, group[ROW])
                    carried.append(UpsertGroup(rows=rows, partial=True, carry=carry))
                else:
                    upserts.append(UpsertGroup(rows=rows, partial=bool(absent)))
            # Carry groups first: see dbmazz.pipeline.carry.resolve_carries.
            upserts = carried + upserts
        else:
            rows = alive.sort(_ORDER).select([*columns, *audit]).to_arrow()
            upserts.append(UpsertGroup(rows=rows, partial=False))

    return TableBatch(
        table=table,
        upserts=upserts,
        deletes=deletes,
        first_lsn=int(pc.min(lsns).as_py()),
        last_lsn=int(pc.max(lsns).as_py()),
        source_changes=n_changes,
    )


def _unchanged_keys_from_old(arrow: pa.Table, table: TableSchema,
                             masks: list[npt.NDArray[np.bool_]]) -> pa.Table:
    """A primary-key value stored out of line (a long text key) that an update left
    unchanged arrives flagged unchanged, not sent; PostgreSQL then sends the old key
    (its values inlined) beside the update, under any replica identity. Take the key from
    there and clear its flag (``masks`` updated in place): the merge needs every key."""
    columns = list(table.column_names)
    for key in table.key_columns:
        i = columns.index(key)
        if not masks[i].any():
            continue
        name = old_key_column(key)
        old = arrow.column(name) if name in arrow.column_names else pa.nulls(len(arrow))
        present = ~np.asarray(old.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
        take = masks[i] & present
        if (masks[i] & ~present).any():
            raise ProtocolError(
                f"{table.source_name}: an update arrived without its primary key "
                f"{key} (an unchanged value stored out of line) and without the old key",
                "report this to the dbmazz maintainers with the PostgreSQL version",
            )
        value = pc.if_else(pa.array(take), old.cast(arrow.schema.field(key).type),
                           arrow.column(key))
        arrow = arrow.set_column(i, arrow.schema.field(key), value)
        masks[i] = masks[i] & ~take
    return arrow


def _bulk_inserts(arrow: pa.Table, keys: list[str]) -> bool:
    """Only inserts, and no key twice (checked without leaving Arrow for a single-column
    key; in ascending integer order without even hashing)."""
    if not pc.all(pc.equal(arrow.column(OP), OP_INSERT)).as_py():
        return False
    if arrow.num_rows < 2:
        return True
    if len(keys) == 1:
        key = arrow.column(keys[0])
        if pa.types.is_integer(key.type) and key.null_count == 0:
            values = key.to_numpy()
            if bool((values[1:] > values[:-1]).all()):
                return True
        if not pa.types.is_null(key.type):
            # Arrow's hash count, null counted as one value like polars' is_unique.
            return bool(pc.count_distinct(key, mode="all").as_py() == arrow.num_rows)
    frame = pl.from_arrow(arrow.select(keys))
    assert isinstance(frame, pl.DataFrame)
    unique = pl.col(keys[0]) if len(keys) == 1 else pl.struct(keys)
    return bool(frame.select(unique.is_unique().all()).item())


def as_polars_delivers(dtype: pa.DataType) -> pa.DataType | None:
    """The Arrow type polars' ``to_arrow`` gives back for a column of ``dtype``, for the
    types where that is known without importing polars (None for the others: nested,
    dictionary, time, non-UTC zones, ...). Checked against polars in the unit tests."""
    t = pa.types
    if t.is_string(dtype) or t.is_large_string(dtype) or t.is_string_view(dtype):
        return pa.large_string()
    if t.is_binary(dtype) or t.is_large_binary(dtype):
        return pa.large_binary()
    if t.is_timestamp(dtype):
        return dtype if dtype.tz in (None, "UTC") else None
    if (t.is_integer(dtype) or t.is_boolean(dtype) or t.is_date32(dtype)
            or t.is_duration(dtype) or t.is_decimal128(dtype) or t.is_null(dtype)
            or dtype in (pa.float32(), pa.float64())):
        return dtype
    return None


def _with_audit(arrow: pa.Table, columns: list[str], synced: datetime) -> pa.Table:
    """The user columns plus the audit columns, as the polars path computes them."""
    rows = arrow.select(columns)
    # The same column types as the polars path delivers (e.g. large_string), so a sink
    # sees one schema whichever path a batch took: string → large_string reuses the data.
    targets = [as_polars_delivers(field.type) for field in rows.schema]
    if any(t is None for t in targets):  # a type polars may convert otherwise: ask it
        empty = pl.from_arrow(rows.slice(0, 0))
        assert isinstance(empty, pl.DataFrame)
        targets = list(empty.to_arrow().schema.types)
    for i, target in enumerate(targets):
        assert target is not None
        if rows.field(i).type != target:
            rows = rows.set_column(i, rows.field(i).with_type(target),
                                   rows.column(i).cast(target))
    return with_audit(rows, arrow.column(OP), arrow.column(LSN), synced)


def _expand_key_changes(df: pl.DataFrame, keys: list[str], toasted: list[int]) -> pl.DataFrame:
    """Add a delete of the old key before every update that changed the primary key."""
    old = [old_key_column(k) for k in keys]
    if not all(c in df.columns for c in old):
        return df
    changed = df.filter(_moved(keys))
    if changed.height == 0:
        return df
    tombstones = changed.with_columns(
        [pl.col(o).alias(k) for k, o in zip(keys, old, strict=True)]
        + [
            pl.lit(OP_DELETE, dtype=df.schema[OP]).alias(OP),
            (pl.col(_ORDER) - 1).alias(_ORDER),
        ]
        + [pl.lit(False).alias(f"__u{i}") for i in toasted]
    )
    return pl.concat([df, tombstones.select(df.columns)], how="vertical")


def _moved(keys: list[str]) -> pl.Expr:
    """Updates that changed the primary key (their old key differs from the new one)."""
    old = [old_key_column(k) for k in keys]
    return (pl.col(OP) == OP_UPDATE) & pl.any_horizontal(
        [pl.col(o).is_not_null() & pl.col(o).ne_missing(pl.col(k))
         for k, o in zip(keys, old, strict=True)]
    )


def _fill_unchanged(
    df: pl.DataFrame, keys: list[str], columns: list[str], toasted: list[int]
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Fill unchanged TOAST values from the latest earlier change of the same row.

    Without key changes that is the latest earlier change of the same key that carried a
    value. With them, the row's chain is followed across its old keys, and rows whose
    value is only in the target under an old key come back with carry candidates
    (:mod:`dbmazz.pipeline.carry`)."""
    if not toasted:
        return df, None
    df = df.sort(_ORDER).with_row_index(ROW)
    old = [old_key_column(k) for k in keys]
    if all(c in df.columns for c in old) and df.select(_moved(keys).any()).item():
        return fill_along_chains(df, keys, old, columns, toasted, _moved(keys), lsn=LSN)
    fills = []
    for i in toasted:
        flag = f"__u{i}"
        source_row = (
            pl.when(~pl.col(flag)).then(pl.col(ROW)).otherwise(None).forward_fill().over(keys)
        )
        fills.append(source_row.alias(f"__src{i}"))
    df = df.with_columns(fills)
    updates = []
    for i in toasted:
        name, flag, src = columns[i], f"__u{i}", f"__src{i}"
        found = pl.col(flag) & pl.col(src).is_not_null()
        updates.append(
            pl.when(found)
            .then(pl.col(name).gather(pl.col(src).fill_null(0)))
            .otherwise(pl.col(name))
            .alias(name)
        )
        updates.append((pl.col(flag) & pl.col(src).is_null()).alias(flag))
    return df.with_columns(updates).drop([f"__src{i}" for i in toasted]), None
