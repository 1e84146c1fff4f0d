"""The hot path: pgoutput Insert/Update/Delete messages → one typed Arrow record batch.

Every step works on all messages of the batch at once (DESIGN.md §6): the cursors of all
rows advance one column at a time with array gathers, each column's values become an Arrow
``string_view`` pointing into the batch buffer, and pyarrow compute (or numpy, for the
forms Arrow cannot parse) casts them to the column's type. The Python-level work is a loop
over *columns*, never over rows or fields.

Per column and tuple the walk is: one gather of a 24-byte record starting 3 bytes before the
field (``[3 junk][kind][Int32 length][first 16 value bytes]`` — fetching 24 bytes costs the
same cache miss as fetching one), then ``p += where(kind == 't', 5 + length, 1)``. The
record also holds a string_view's 12 inline bytes, so short values need no second gather.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from dbmazz.errors import ProtocolError
from dbmazz.source.pgoutput import Relation
from dbmazz.source.types import (
    DecodeStats,
    TextColumn,
    TypePlan,
    TypeRegistry,
    arrow_type,
    cast_text,
    gather_windows,
    resolve,
)

__all__ = [
    "LSN_COLUMN",
    "OLD_KEY_PREFIX",
    "OP_COLUMN",
    "OP_DELETE",
    "OP_INSERT",
    "OP_UPDATE",
    "SEQ_COLUMN",
    "UNCHANGED_COLUMN",
    "DecodeStats",
    "TypeRegistry",
    "arrow_type",
    "batch_schema",
    "decode_changes",
    "unchanged_mask",
]

OP_COLUMN = "__dbmazz_op"
LSN_COLUMN = "__dbmazz_lsn"
SEQ_COLUMN = "__dbmazz_seq"
UNCHANGED_COLUMN = "__dbmazz_unchanged"
OLD_KEY_PREFIX = "__dbmazz_old_"
OP_INSERT, OP_UPDATE, OP_DELETE = 0, 1, 2

_MAX_BUFFER = 2**31 - 64  # int32 cursors and string_view offsets
_RECORD = 24  # bytes gathered per field: 3 before the kind byte, kind, length, 16 of value
_KIND_AT = 3
_VALUE_AT = 8

_I, _U, _D = ord("I"), ord("U"), ord("D")
_N, _K, _O = ord("N"), ord("K"), ord("O")
_KIND_TEXT, _KIND_NULL, _KIND_UNCHANGED, _KIND_BINARY = ord("t"), ord("n"), ord("u"), ord("b")

_OP_OF_TYPE = np.full(256, -1, dtype=np.int8)
_OP_OF_TYPE[[_I, _U, _D]] = [OP_INSERT, OP_UPDATE, OP_DELETE]
_KIND_OK = np.zeros(256, dtype=np.bool_)
_KIND_OK[[_KIND_TEXT, _KIND_NULL, _KIND_UNCHANGED]] = True

I32 = npt.NDArray[np.int32]
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]


def unchanged_type(ncols: int) -> pa.DataType:
    """uint64 for ≤ 64 columns, else little-endian bytes of ``ceil(ncols / 8)``."""
    return pa.uint64() if ncols <= 64 else pa.binary(max(1, math.ceil(ncols / 8)))


def batch_schema(relation: Relation, key_columns: Sequence[str],
                 types: TypeRegistry | None = None) -> pa.Schema:
    """The schema :func:`decode_changes` produces for ``relation`` (no data needed)."""
    by_name = {c.name: c for c in relation.columns}
    fields = [pa.field(c.name, arrow_type(c.type_oid, c.type_modifier, types))
              for c in relation.columns]
    fields += [
        pa.field(OP_COLUMN, pa.int8(), nullable=False),
        pa.field(LSN_COLUMN, pa.uint64(), nullable=False),
        pa.field(SEQ_COLUMN, pa.uint32(), nullable=False),
        pa.field(UNCHANGED_COLUMN, unchanged_type(len(relation.columns)), nullable=False),
    ]
    for key in key_columns:
        if key not in by_name:
            raise ValueError(f"key column {key!r} is not a column of {relation.qualified_name}")
        col = by_name[key]
        fields.append(pa.field(OLD_KEY_PREFIX + key,
                               arrow_type(col.type_oid, col.type_modifier, types)))
    return pa.schema(fields)


def unchanged_mask(batch: pa.RecordBatch | pa.Table, column_index: int) -> npt.NDArray[np.bool_]:
    """Rows whose column ``column_index`` is an unresolved unchanged-TOAST value."""
    mask = batch.column(UNCHANGED_COLUMN)
    if isinstance(mask, pa.ChunkedArray):
        mask = mask.combine_chunks()
    if pa.types.is_uint64(mask.type):
        bits = mask.to_numpy(zero_copy_only=False)
        return ((bits >> np.uint64(column_index)) & np.uint64(1)).astype(np.bool_)
    width = mask.type.byte_width
    raw = np.frombuffer(mask.buffers()[1], dtype=np.uint8)
    rows = raw[mask.offset * width : (mask.offset + len(mask)) * width].reshape(-1, width)
    return ((rows[:, column_index // 8] >> (column_index % 8)) & 1).astype(np.bool_)


def _be32(records: U8, at: int) -> I32:
    """Big-endian Int32 at byte ``at`` of each gathered record."""
    view = np.ndarray((len(records),), ">i4", records, at, (records.strides[0],))
    return view.astype(np.int32)


def _check_kinds(kind: U8, relation: Relation, column: str) -> None:
    if _KIND_OK[kind].all():
        return
    if (kind == _KIND_BINARY).any():
        raise ProtocolError(
            f"column {relation.qualified_name}.{column} arrived in binary format",
            "start replication without the option binary 'true'; dbmazz decodes text format",
        )
    bad = int(kind[~_KIND_OK[kind]][0])
    raise ProtocolError(
        f"malformed tuple for {relation.qualified_name}.{column}: field kind byte {bad:#04x}",
        "the replication stream is corrupt or not pgoutput; capture it and report a bug",
    )


class _Walk:
    """Cursor state of one tuple (old or new) of a set of messages."""

    def __init__(self, data: U8, positions: I32, relation: Relation) -> None:
        self.data = data
        self.relation = relation
        self.limit = len(data)
        self.p = positions

    def step(self, column: str) -> tuple[U8, U8, I32, I32]:
        """Read one field of every row: (records, kinds, field positions, lengths)."""
        p = self.p
        records = gather_windows(self.data, p - _KIND_AT, _RECORD)
        kind = records[:, _KIND_AT]
        _check_kinds(kind, self.relation, column)
        is_text = kind == _KIND_TEXT
        length = np.where(is_text, _be32(records, _KIND_AT + 1), 0).astype(np.int32)
        nxt = p + np.where(is_text, length + 5, 1).astype(np.int32)
        if len(p) and (int(length.min()) < 0 or int(nxt.max()) > self.limit):
            raise ProtocolError(
                f"truncated tuple for {self.relation.qualified_name}.{column}",
                "the replication stream is corrupt; capture it and report a bug",
            )
        self.p = nxt
        return records, kind, p, length


def _header_check(data: U8, at: I32, marker: int, ncols: int, relation: Relation) -> None:
    """Every tuple at ``at`` starts with ``marker`` (if nonzero) and Int16 ncols."""
    head = gather_windows(data, at, 3)
    width = (head[:, 1].astype(np.int32) << 8) | head[:, 2]
    ok = width == ncols
    if marker:
        ok &= head[:, 0] == marker
    if not ok.all():
        raise ProtocolError(
            f"tuple of {relation.qualified_name} does not match its Relation message "
            f"({ncols} columns)",
            "a Relation message must precede changes of a new table shape; the batch "
            "mixes shapes or the stream is corrupt",
        )


def _old_source(n: int, rows: I64, kinds: U8, positions: I32, data: U8) -> tuple[
        U8, I32]:
    """Records and positions for ``n`` rows where only ``rows`` take an old-tuple field."""
    records = np.zeros((n, _RECORD), dtype=np.uint8)
    fpos = np.zeros(n, dtype=np.int32)
    if rows.size:
        records[rows] = gather_windows(data, positions - _KIND_AT, _RECORD)
        fpos[rows] = positions
    del kinds
    return records, fpos


def decode_changes(
    relation: Relation,
    key_columns: Sequence[str],
    data: np.ndarray,
    starts: np.ndarray,
    commit_lsns: np.ndarray,
    *,
    types: TypeRegistry | None = None,
    stats: DecodeStats | None = None,
) -> pa.RecordBatch:
    """Decode Insert/Update/Delete messages of one relation into a typed record batch.

    ``data`` holds the messages (type byte, Int32 relation oid, tuple parts — no in-stream
    xid); ``starts[i]`` is the offset of message i, ``commit_lsns[i]`` its transaction's
    commit end LSN. Output columns: the relation's columns typed by
    :func:`~dbmazz.source.types.arrow_type`; ``__dbmazz_op`` (0/1/2), ``__dbmazz_lsn``,
    ``__dbmazz_seq`` (input order), ``__dbmazz_unchanged`` (bit i: column i is an
    unchanged TOAST value not resolved here); then ``__dbmazz_old_<key>`` per key column,
    the old key of an Update that carried an old tuple, else null.

    Insert/Update values come from the new tuple, a Delete's from its old tuple (``K``:
    identity columns, others null). An Update's ``u`` field is filled from its ``O`` (full)
    old tuple when that holds the value; otherwise it stays null with its bit set.
    """
    stats = stats if stats is not None else DecodeStats()
    columns = relation.columns
    ncols = len(columns)
    schema = batch_schema(relation, key_columns, types)
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    n = len(starts)
    if len(commit_lsns) != n:
        raise ValueError(f"{n} messages but {len(commit_lsns)} commit LSNs")
    if n == 0:
        return schema.empty_table().to_batches(max_chunksize=1)[0] if False else \
            pa.RecordBatch.from_pylist([], schema=schema)
    if len(data) >= _MAX_BUFFER:
        raise ValueError(
            f"decode buffer of {len(data)} bytes is too large: batches must stay under 2 GiB "
            "(lower FLUSH_BYTES)")
    starts32 = np.asarray(starts).astype(np.int32)
    if int(starts32.min()) < 0 or int(np.asarray(starts).max()) + 6 > len(data):
        raise ValueError("message start offsets lie outside the buffer")

    # Message headers: type byte, relation oid, first tuple marker — one gather.
    head = gather_windows(data, starts32, 6)
    msgtype = head[:, 0]
    op = _OP_OF_TYPE[msgtype]
    oids = _be32(head, 1).view(np.uint32)
    marker = head[:, 5]
    if (op < 0).any():
        bad = int(msgtype[op < 0][0])
        raise ProtocolError(f"message type {chr(bad)!r} is not Insert/Update/Delete",
                            "route only I/U/D messages to decode_changes")
    if (oids != np.uint32(relation.oid & 0xFFFFFFFF)).any():
        raise ProtocolError(
            f"batch for relation {relation.qualified_name} (oid {relation.oid}) holds a "
            f"change of oid {int(oids[oids != relation.oid][0])}",
            "route messages by relation oid before decoding")
    is_delete = op == OP_DELETE
    has_old = (marker == _K) | (marker == _O)
    marker_ok = np.where(op == OP_INSERT, marker == _N,
                         np.where(is_delete, has_old, has_old | (marker == _N)))
    if not marker_ok.all():
        raise ProtocolError(f"malformed change message for {relation.qualified_name}",
                            "the replication stream is corrupt; capture it and report a bug")

    # Old tuples (K/O) first: the new tuple of an Update starts where its old one ends.
    old_rows = np.flatnonzero(has_old)
    m_old = len(old_rows)
    old_kind = np.empty((ncols, m_old), dtype=np.uint8)
    old_pos = np.empty((ncols, m_old), dtype=np.int32)
    new_at = starts32 + 5
    if m_old:
        _header_check(data, starts32[old_rows] + 5, 0, ncols, relation)
        walk = _Walk(data, starts32[old_rows] + 8, relation)
        for c, col in enumerate(columns):
            _, old_kind[c], old_pos[c], _ = walk.step(col.name)
        new_at[old_rows] = walk.p
    new_rows = np.flatnonzero(~is_delete)
    all_new = len(new_rows) == n
    new_at = new_at if all_new else new_at[new_rows]
    _header_check(data, new_at, _N, ncols, relation)
    new_walk = _Walk(data, new_at + 3, relation)

    # Row index maps for the rows that read old-tuple fields.
    old_index = np.full(n, -1, dtype=np.int64)
    old_index[old_rows] = np.arange(m_old)
    new_index = np.full(n, -1, dtype=np.int64)
    new_index[new_rows] = np.arange(len(new_rows))
    deletes = np.flatnonzero(is_delete)
    fill_rows = np.flatnonzero((op == OP_UPDATE) & (marker == _O))
    fill_new, fill_old = new_index[fill_rows], old_index[fill_rows]

    arrays: list[pa.Array] = []
    u8_mask = ncols > 64
    mask64 = np.zeros(n, dtype=np.uint64)
    mask_bytes = np.zeros((n, max(1, math.ceil(ncols / 8))), dtype=np.uint8) if u8_mask else None
    plans: list[TypePlan] = [resolve(c.type_oid, c.type_modifier, types) for c in columns]
    for c, col in enumerate(columns):
        records, kind, fpos, length = new_walk.step(col.name)
        # Rows whose value comes from the old tuple: deletes, and `u` fields of Updates
        # whose full old row (REPLICA IDENTITY FULL) holds the value.
        from_old = deletes
        if fill_rows.size:
            fill = (kind[fill_new] == _KIND_UNCHANGED) & (
                old_kind[c, fill_old] != _KIND_UNCHANGED)
            if fill.any():
                from_old = np.union1d(deletes, fill_rows[fill])
        if not all_new or from_old.size:
            full_records, full_pos = _old_source(
                n, from_old, old_kind[c, old_index[from_old]], old_pos[c, old_index[from_old]],
                data)
            keep_new = np.setdiff1d(new_rows, from_old, assume_unique=True)
            full_records[keep_new] = records[new_index[keep_new]]
            full_pos[keep_new] = fpos[new_index[keep_new]]
            records, fpos = full_records, full_pos
            kind = records[:, _KIND_AT]
            length = np.where(kind == _KIND_TEXT, _be32(records, _KIND_AT + 1), 0).astype(
                np.int32)
        unchanged = kind == _KIND_UNCHANGED
        if unchanged.any():
            if mask_bytes is not None:
                mask_bytes[:, c // 8] |= unchanged.astype(np.uint8) << np.uint8(c % 8)
            else:
                mask64 |= unchanged.astype(np.uint64) << np.uint64(c)
        text = TextColumn(data, fpos + 5, length, kind == _KIND_TEXT, records[:, _VALUE_AT:])
        arrays.append(cast_text(text, plans[c], stats, col.name))

    arrays.append(pa.array(op, pa.int8()))
    arrays.append(pa.array(np.asarray(commit_lsns).astype(np.uint64, copy=False), pa.uint64()))
    arrays.append(pa.array(np.arange(n, dtype=np.uint32), pa.uint32()))
    if mask_bytes is not None:
        arrays.append(pa.Array.from_buffers(schema.field(UNCHANGED_COLUMN).type, n,
                                            [None, pa.py_buffer(mask_bytes)]))
    else:
        arrays.append(pa.array(mask64, pa.uint64()))

    # Old key values: Updates that carried an old tuple (key change or REPLICA IDENTITY FULL).
    updates_with_old = np.flatnonzero((op == OP_UPDATE) & has_old)
    index_of = {c.name: i for i, c in enumerate(columns)}
    for key in key_columns:
        c = index_of[key]
        if not updates_with_old.size:
            arrays.append(pa.nulls(n, schema.field(OLD_KEY_PREFIX + key).type))
            continue
        rows_old = old_index[updates_with_old]
        records, fpos = _old_source(n, updates_with_old, old_kind[c, rows_old],
                                    old_pos[c, rows_old], data)
        kind = records[:, _KIND_AT]
        length = np.where(kind == _KIND_TEXT, _be32(records, _KIND_AT + 1), 0).astype(np.int32)
        text = TextColumn(data, fpos + 5, length, kind == _KIND_TEXT, records[:, _VALUE_AT:])
        arrays.append(cast_text(text, plans[c], stats, OLD_KEY_PREFIX + key))

    stats.rows += n
    stats.batches += 1
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
