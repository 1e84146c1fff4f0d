"""The canonical form of a row, and its 64-bit hash, computed vectorized over Arrow.

Both ends deliver a table's rows as Arrow in the *in-flight* types of the table (the types
CDC and the snapshot load with, docs/types.md): PostgreSQL through the snapshot reader (the
same casts as CDC), DuckDB and StarRocks through :mod:`dbmazz.verify.target`, which coerces
what the target stored back to those types. One function then renders every column the same
way for every backend, so a difference in the hash is a difference in the data, never in a
database's dialect:

* timestamps: microseconds since the epoch, UTC (a ``timestamptz`` and the UTC ``DATETIME``
  StarRocks holds hash alike);
* ``numeric(p,s)``: its decimal text at scale ``s``; unconstrained ``numeric`` (text in
  flight, ``DECIMAL(38,9)`` in StarRocks): the text without trailing fractional zeros;
* JSON: as stored when the target keeps the text (DuckDB); parsed and re-rendered with
  sorted keys when the target re-renders it (StarRocks' JSON type);
* floats, bytea, arrays, dates: their Arrow values; NULL and the empty string hash apart.

Hashing is polars' row hash with fixed seeds: both ends are hashed in the same process, so
only the equality of hashes matters, not their stability across versions.
"""

from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.pipeline.batch import TableSchema

#: Fixed seeds: the row hash, and (different) the hash that puts a key into its range.
_ROW_SEED = 0x64626D617A7A
_KEY_SEED = 0x72616E676573
_JSON_TYPES = frozenset({"json", "jsonb"})


def is_json(schema: TableSchema, column: str) -> bool:
    return schema.column(column).pg_type_name in _JSON_TYPES or schema.column(
        column).pg_type_oid in (114, 3802)


def _strip_zeros(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """'1.500' → '1.5', '2.000' → '2' (vectorized regex; exponent forms untouched)."""
    out = pc.replace_substring_regex(array, r"^(-?\d+\.\d*?)0+$", r"\1")
    return pc.replace_substring_regex(out, r"\.$", "")


def normalise_json(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each distinct JSON text parsed and printed with sorted keys and no spaces, numbers by
    their value (``1.0``, ``1`` and ``1e0`` alike: a target may print either).

    The JSON value ``null`` (a whole value) is SQL NULL: StarRocks has no load that keeps
    it (docs/types.md), so dbmazz loads it as SQL NULL.

    JSON has no vectorized normaliser in Arrow; the work is per *distinct* value, and only
    for targets that re-render JSON (StarRocks)."""
    combined = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    encoded = pc.dictionary_encode(combined)
    rendered: list[str | None] = []
    for text in encoded.dictionary.to_pylist():
        try:
            parsed = json.loads(text, parse_float=Decimal, parse_int=Decimal)
        except (TypeError, ValueError):
            rendered.append(text)  # not JSON: compare the text itself
            continue
        rendered.append(None if parsed is None else _canonical(parsed))
    return pc.take(pa.array(rendered, pa.string()), encoded.indices)


def _canonical(value: object) -> str:
    """JSON text of a parsed value: keys sorted, no spaces, numbers normalised."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{_canonical(v)}"
                              for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, Decimal):
        # -0 is 0 by value (StarRocks' JSON prints it as 0).
        return "0" if value.is_zero() else format(value.normalize(), "f")
    return json.dumps(value, ensure_ascii=False)


def canonical_frame(rows: pa.Table, schema: TableSchema, *, json_text: bool) -> pl.DataFrame:
    """``rows`` (the table's columns in in-flight types) in canonical form.

    ``json_text``: JSON columns are compared as their text (the target stores PostgreSQL's
    text unchanged); else they are normalised."""
    columns: list[pa.Array | pa.ChunkedArray] = []
    for spec in schema.columns:
        column = rows.column(spec.name)
        kind = column.type
        if pa.types.is_timestamp(kind):
            column = column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
        elif pa.types.is_decimal(kind):
            column = column.cast(pa.string())
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            if spec.pg_type_oid == 1700 or spec.pg_type_name == "numeric":
                # Unconstrained / wide numeric (text in flight), also through a domain
                # (whose oid is its own, its name the base type's).
                column = _strip_zeros(column)
            elif not json_text and is_json(schema, spec.name):
                column = normalise_json(column)
        columns.append(column)
    table = pa.table(columns, names=list(schema.column_names))
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def row_hashes(frame: pl.DataFrame) -> np.ndarray:
    """One uint64 per row over every column (order-independent sums are taken later)."""
    if frame.height == 0:
        return np.zeros(0, dtype=np.uint64)
    return frame.hash_rows(_ROW_SEED).to_numpy()


def key_hashes(frame: pl.DataFrame, keys: tuple[str, ...]) -> np.ndarray:
    if frame.height == 0:
        return np.zeros(0, dtype=np.uint64)
    return frame.select(list(keys)).hash_rows(_KEY_SEED).to_numpy()


def column_hashes(frame: pl.DataFrame) -> pl.DataFrame:
    """Per column a uint64 hash (naming the columns that differ between two rows)."""
    return frame.select([pl.col(c).hash(_ROW_SEED).alias(c) for c in frame.columns])
