"""The batch contract: names and codes every layer agrees on, defined once.

Two shapes travel between the layers (docs/architecture.md, Data contracts):

* the **in-flight batch** (decoder output, Inspect/PeekBatch): the table's columns plus the
  metadata columns ``__dbmazz_op`` (an ``OP_*`` code), ``__dbmazz_lsn`` (commit LSN),
  ``__dbmazz_seq`` (input order), ``__dbmazz_unchanged`` (unchanged TOAST bitmask) and
  ``__dbmazz_old_<key>`` per key column;
* the **target rows** (merge and snapshot output, what sinks write): the table's columns
  plus the audit columns :data:`AUDIT_COLUMNS`, built from an op code and a version by
  :func:`audit_arrays` (Arrow) or :func:`audit_exprs` (the same rule as polars
  expressions, for the merge's grouped path).

This module sits below :mod:`dbmazz.source` and :mod:`dbmazz.pipeline` (it imports neither),
so the decoder, the merge, the snapshot and the sinks share it without an upward import.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.lazy import lazy_module

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")  # imported at first use: ~30 MB a run may not need

# --- in-flight batch ---------------------------------------------------------------------------
#: Every metadata column of an in-flight batch starts with this.
METADATA_PREFIX = "__dbmazz_"
OP_COLUMN = "__dbmazz_op"
LSN_COLUMN = "__dbmazz_lsn"
SEQ_COLUMN = "__dbmazz_seq"
UNCHANGED_COLUMN = "__dbmazz_unchanged"
OLD_KEY_PREFIX = "__dbmazz_old_"

#: ``__dbmazz_op`` values (int8).
OP_INSERT, OP_UPDATE, OP_DELETE = 0, 1, 2


def old_key_column(name: str) -> str:
    """The in-flight column holding the old value of key column ``name``."""
    return f"{OLD_KEY_PREFIX}{name}"


# --- target rows -------------------------------------------------------------------------------
OP_TYPE_COLUMN = "dbmazz_op_type"
IS_DELETED_COLUMN = "dbmazz_is_deleted"
SYNCED_AT_COLUMN = "dbmazz_synced_at"
#: The row's version: the commit LSN of its change (snapshot rows: the snapshot's point).
#: Upserts only replace a row with an equal or newer version (merge_condition / DuckDB).
VERSION_COLUMN = "dbmazz_cdc_version"

#: Audit columns every target table carries (DESIGN.md §3), in this order.
AUDIT_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    (OP_TYPE_COLUMN, pa.int8()),
    (IS_DELETED_COLUMN, pa.bool_()),
    (SYNCED_AT_COLUMN, pa.timestamp("us")),
    (VERSION_COLUMN, pa.int64()),
)
AUDIT_NAMES: tuple[str, ...] = tuple(name for name, _ in AUDIT_COLUMNS)


def audit_arrays(op: pa.Array | pa.ChunkedArray, version: pa.Array | pa.ChunkedArray,
                 synced_at: datetime) -> list[pa.Array | pa.ChunkedArray]:
    """The audit columns (in :data:`AUDIT_NAMES` order) of rows with these op codes and
    versions; ``synced_at`` is naive UTC."""
    n = len(op)
    return [
        op.cast(pa.int8()),
        pc.equal(op, OP_DELETE),
        pa.array(np.full(n, np.datetime64(synced_at, "us")), type=pa.timestamp("us")),
        version.cast(pa.int64()),
    ]


def audit_exprs(op: str, version: str, synced_at: datetime) -> list[pl.Expr]:
    """:func:`audit_arrays` as polars expressions over the columns ``op`` and ``version``."""
    return [
        pl.col(op).cast(pl.Int8).alias(OP_TYPE_COLUMN),
        (pl.col(op) == OP_DELETE).alias(IS_DELETED_COLUMN),
        pl.lit(synced_at, dtype=pl.Datetime("us")).alias(SYNCED_AT_COLUMN),
        pl.col(version).cast(pl.Int64).alias(VERSION_COLUMN),
    ]


def with_audit(rows: pa.Table, op: pa.Array | pa.ChunkedArray,
               version: pa.Array | pa.ChunkedArray, synced_at: datetime) -> pa.Table:
    """``rows`` followed by their audit columns."""
    for name, values in zip(AUDIT_NAMES, audit_arrays(op, version, synced_at), strict=True):
        rows = rows.append_column(name, values)
    return rows
