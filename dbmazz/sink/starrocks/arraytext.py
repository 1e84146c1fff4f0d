"""StarRocks ARRAY text (its MySQL text protocol) and hex key text back to Arrow values.

Shared by the two readers of target rows: `verify` (whole tables) and the sink's read-back
of current rows (key changes with unchanged TOAST values, :mod:`.current`). Array texts are
parsed per *distinct* value; their items then go through Arrow's casts from text, so every
item keeps its exact digits (``1234567890.1234567890``, ``nan``, ``-0``).
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc


def parse_lists(column: pa.ChunkedArray | pa.Array, target: pa.DataType) -> pa.Array:
    """``[1,2,null]`` (StarRocks ARRAY text) → list values, per distinct text."""
    combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    encoded = pc.dictionary_encode(combined)
    element = target.value_type
    texts = encoded.dictionary.to_pylist()
    parsed = [None if t is None else array_items(t) for t in texts]
    if pa.types.is_binary(element) or pa.types.is_large_binary(element):
        # bytea[] items are their hex text (ARRAY<VARCHAR>, docs/types.md).
        values = pa.array([None if items is None else
                           [None if i is None else bytes.fromhex(i) for i in items]
                           for items in parsed], pa.list_(pa.binary()))
        return pc.take(values.cast(target), encoded.indices)
    values = pa.array(parsed, pa.list_(pa.string()))
    if pa.types.is_timestamp(element) and element.tz:
        # DATETIME items hold UTC: read them as naive, then as UTC.
        values = values.cast(pa.list_(pa.timestamp(element.unit)))
    return pc.take(values.cast(target), encoded.indices)


#: strict=False: StarRocks prints an item's control characters as they are (it escapes
#: only ``"`` and ``\\``: MysqlRowBuffer::push_string), which strict JSON refuses.
_JSON = json.JSONDecoder(strict=False)


def array_items(text: str) -> list[str | None]:
    """The items of StarRocks ARRAY text as their text: quoted strings unescaped (JSON
    escapes), bare tokens as they are (``1234567890.1234567890`` keeps its digits; ``nan``,
    ``inf`` and hex are not JSON), ``null`` as None."""
    inner = text.strip()
    if not (inner.startswith("[") and inner.endswith("]")):
        raise ValueError(f"not ARRAY text: {text[:80]!r}")
    inner = inner[1:-1]
    items: list[str | None] = []
    i, end = 0, len(inner)
    while i < end:
        while i < end and inner[i] in " \t\n":
            i += 1
        if i >= end:
            break
        if inner[i] == '"':
            item, i = _JSON.raw_decode(inner, i)
            items.append(str(item))
            i = inner.find(",", i)
        else:
            comma = inner.find(",", i)
            token = inner[i:comma if comma >= 0 else end].strip()
            items.append(None if token == "null" else token)
            i = comma
        if i < 0:
            break
        i += 1
    return items


def unhex(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Lowercase hex text (a StarRocks key column holding bytea) → bytes, vectorized."""
    import polars as pl

    combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pl.Series(values=combined).str.decode("hex").to_arrow().cast(pa.binary())
