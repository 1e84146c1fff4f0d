"""Rows a target rejects (REJECTED_ROWS=table): finding them and recording them.

A load the target refuses because of some of its rows (StarRocks strict mode: a value out
of range, too long, bad JSON; DuckDB: a conversion or constraint error) is split in
halves, recursively, until the loads that still fail hold one row each: those rows are
the rejected ones, every other slice is accepted. Slices are Arrow slices (zero-copy) and a
batch with k bad rows among n costs about 2·k·log2(n) attempts, not n.

The rejected rows become rows of the target table ``dbmazz_rejected`` (:func:`records`),
keyed by (source table, key, cdc version) so a replayed batch rewrites the same records
instead of adding new ones. ``dbmazz verify --repair`` or a re-snapshot restores the rows
once the target is fixed: until then they are missing (or stale) in their table.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from dbmazz.contract import VERSION_COLUMN

#: The table the rejected rows go to, in the target's database (StarRocks) / schema (DuckDB).
REJECTED_TABLE = "dbmazz_rejected"

#: Columns of ``dbmazz_rejected``; the first three are its primary key.
REJECTED_SCHEMA = pa.schema([
    ("source_table", pa.string()),
    ("row_key", pa.string()),
    ("cdc_version", pa.int64()),
    ("column_name", pa.string()),
    ("error", pa.string()),
    ("row_json", pa.string()),
    ("rejected_at", pa.timestamp("us")),
])
REJECTED_KEY = ("source_table", "row_key", "cdc_version")

#: More rejected rows than this in one load means a wrong target table rather than a few
#: poison values: the load fails instead of diverting the table into dbmazz_rejected
#: (and the search stops before costing thousands of loads).
MAX_REJECTED_PER_LOAD = 100

#: Longest error text kept per rejected row.
_ERROR_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected row: its index in the table that was bisected, and why."""

    index: int
    error: str
    column: str | None = None


#: ``attempt(rows, offset)`` applies ``rows`` (rows ``offset…`` of the whole) and returns
#: None, or the target's error when it rejected some of them (nothing of them applied).
#: Any other failure is raised, and ends the search.
Attempt = Callable[[pa.Table, int], "str | None"]


class TooManyRejected(Exception):
    """More rows rejected than the search was allowed to find."""

    def __init__(self, found: list[Rejection]) -> None:
        super().__init__(f"more than {len(found) - 1} rows rejected")
        #: The rows found so far (one more than the limit), in row order.
        self.found = sorted(found, key=lambda r: r.index)


def bisect(rows: pa.Table, attempt: Attempt, first_error: str,
           limit: int | None = MAX_REJECTED_PER_LOAD) -> list[Rejection]:
    """The rows of ``rows`` the target rejects, every other row applied by ``attempt``.

    ``rows`` as a whole has already failed with ``first_error``; a one-row table is
    rejected with it at once. Work is a stack of slices, so depth costs no recursion.
    Raises :class:`TooManyRejected` once more than ``limit`` rows are rejected (slices
    applied until then stay applied: the caller fails the batch, which is resent whole).
    """
    rejected: list[Rejection] = []
    pending: list[tuple[int, int, str]] = [(0, rows.num_rows, first_error)]
    while pending:
        offset, length, error = pending.pop()
        if length == 1:
            rejected.append(Rejection(offset, error))
            if limit is not None and len(rejected) > limit:
                raise TooManyRejected(rejected)
            continue
        half = length // 2
        # Pushed in reverse so slices are tried in row order.
        for start, size in ((offset + half, length - half), (offset, half)):
            failed = attempt(rows.slice(start, size), start)
            if failed is not None:
                pending.append((start, size, failed))
    rejected.sort(key=lambda r: r.index)
    return rejected


#: StarRocks names the column in a strict-mode rejection ("… is 5, column: v. Row: …").
#: Read for display only (the ``column_name`` of a record); nothing is decided on it.
_COLUMN = re.compile(r"\bcolumn: ?`?([^\s,.`]+)`?")


def column_named(error: str) -> str | None:
    """The column an error text names in StarRocks' ``column: <name>`` form, if any."""
    found = _COLUMN.search(error)
    return found.group(1) if found else None


def records(source_table: str, key_columns: Sequence[str], rows: pa.Table,
            rejected: Sequence[Rejection], default_version: int) -> pa.Table:
    """The ``dbmazz_rejected`` rows of ``rejected`` (indexes into ``rows``).

    Rendering to JSON is per row, but only for the rejected rows (a handful), never the
    load's hot path.
    """
    picked = _python_rows(rows.take(pa.array([r.index for r in rejected], pa.int64())))
    now = int(time.time() * 1_000_000)
    keys, versions, texts = [], [], []
    for row in picked:
        keys.append(_json({k: row.get(k) for k in key_columns}))
        version = row.get(VERSION_COLUMN)
        versions.append(int(version) if version is not None else default_version)
        texts.append(_json(row))
    return pa.table({
        "source_table": pa.array([source_table] * len(picked), pa.string()),
        "row_key": pa.array(keys, pa.string()),
        "cdc_version": pa.array(versions, pa.int64()),
        "column_name": pa.array([r.column for r in rejected], pa.string()),
        "error": pa.array([r.error[:_ERROR_LIMIT] for r in rejected], pa.string()),
        "row_json": pa.array(texts, pa.string()),
        "rejected_at": pa.array([now] * len(picked), pa.timestamp("us")),
    }, schema=REJECTED_SCHEMA)


def _python_rows(rows: pa.Table) -> list[dict[str, Any]]:
    """The rows as Python values; dates and times Python cannot hold (year 0, the
    fallback of -infinity, is often why a row was rejected) as Arrow's text of them."""
    try:
        return rows.to_pylist()
    except (OverflowError, ValueError):
        return rows.cast(pa.schema([
            f.with_type(pa.string()) if pa.types.is_temporal(f.type) else f
            for f in rows.schema])).to_pylist()


def _json(value: object) -> str:
    def fallback(item: object) -> object:
        if isinstance(item, bytes):
            return item.hex()
        return str(item)

    return json.dumps(value, default=fallback, ensure_ascii=False, sort_keys=True)
