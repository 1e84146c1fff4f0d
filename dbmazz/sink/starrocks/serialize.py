"""Arrow tables → Stream Load bodies (JSON array or CSV), column at a time.

Renderings (DESIGN.md §5), chosen to load exactly into the types :mod:`.ddl` creates:

* integers, booleans: JSON numbers / ``true``/``false`` (CSV: digits / ``true``/``false``);
* floats: JSON numbers; a column holding NaN/±inf is sent as strings ``nan``/``inf``/``-inf``
  (polars would write JSON ``null`` for them, losing the value);
* decimals: exact text (``"12.340"``), never a float;
* date ``YYYY-MM-DD``; timestamp ``YYYY-MM-DD HH:MM:SS.ffffff``; timestamptz the same in UTC;
  time ``HH:MM:SS.ffffff``; interval/duration: integer microseconds;
* json/jsonb columns (``raw_json``): the JSON text is embedded as the JSON value itself,
  because StarRocks stores a JSON *string* scalar when given a quoted string;
  in CSV the text is the field (StarRocks parses it);
* binary: lowercase hex text; the request maps it back with ``to_binary(col, 'hex')``
  (StarRocks would otherwise store the UTF-8 bytes of whatever text it receives);
* lists (and structs): JSON arrays (objects), in both formats.

CSV uses ``\\x01`` between fields, ``\\x02`` after every record (the transaction interface
needs the trailing delimiter) and ``\\N`` for NULL, with no enclose/escape: StarRocks applies
the ``\\N`` test after unquoting, so quoting cannot protect a literal ``\\N`` anyway. A batch
whose text contains a separator, equals ``\\N``, or would produce a blank line is sent as
JSON instead (:attr:`Body.format` tells which), so hostile text is never mangled.
"""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

Format = Literal["json", "csv"]

CSV_SEPARATOR = "\x01"
CSV_DELIMITER = "\x02"
CSV_NULL = "\\N"
#: Rows rendered per step of a JSON body (bounds polars' copy of the columns and temporaries).
_JSON_SLICE_ROWS = 16_384
#: Bytes edited per step when NDJSON becomes a JSON array (bounds the temporary mask).
_EDIT_BLOCK = 1 << 20

JSON_HEADERS: Mapping[str, str] = {
    "format": "json",
    "strip_outer_array": "true",
    "ignore_json_size": "true",
}
CSV_HEADERS: Mapping[str, str] = {
    "format": "csv",
    "column_separator": "\\x01",
    "row_delimiter": "\\x02",
}


@dataclass(frozen=True, slots=True)
class Body:
    data: bytes
    format: Format
    rows: int
    #: The format headers of the request (format, separators, strip_outer_array).
    headers: Mapping[str, str] = field(default_factory=dict)


def serialize(table: pa.Table, fmt: Format = "json", *, raw_json: Collection[str] = ()) -> Body:
    """Render ``table`` (columns in load order) as one Stream Load body."""
    raw = set(raw_json) & set(table.column_names)
    if fmt == "csv":
        prepared = {
            name: _prepare(_combine(table.column(name)), csv=name not in raw)
            for name in table.column_names
        }
        text = {f.name for f in table.schema if f.name not in raw and _is_text(_value_type(f.type))}
        body = _csv(prepared, table.num_rows, text)
        if body is not None:
            return body
    prepared = {
        name: _prepare(_combine(table.column(name)), csv=False) for name in table.column_names
    }
    return _json(prepared, table.num_rows, raw)


# -- per-column preparation -------------------------------------------------------------


def _combine(column: pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _prepare(arr: pa.Array, *, csv: bool) -> pa.Array:
    """One column converted to what the writer must print; strings for CSV."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _prepare(arr.dictionary_decode(), csv=csv)
    if pa.types.is_null(t):
        return arr.cast(pa.string()) if csv else arr
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return arr.cast(pa.string()) if csv else arr
    if pa.types.is_floating(t):
        if pa.types.is_float16(t):
            arr = arr.cast(pa.float32())
        if csv or not _all_finite(arr):
            return arr.cast(pa.string())
        return arr
    if pa.types.is_decimal(t):
        return arr.cast(pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return arr
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    ):
        return _hex(arr)
    if pa.types.is_date(t):
        return arr.cast(pa.string())
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            # Stored values are UTC instants; dropping the zone keeps them as UTC wall time.
            arr = arr.cast(pa.timestamp(t.unit))
        return arr.cast(pa.timestamp("us"), safe=False).cast(pa.string())
    if pa.types.is_time(t):
        return arr.cast(pa.time64("us"), safe=False).cast(pa.string())
    if pa.types.is_duration(t):
        micros = arr.cast(pa.duration("us"), safe=False).cast(pa.int64())
        return micros.cast(pa.string()) if csv else micros
    if _is_list(t):
        return _prepare_list(arr)
    if pa.types.is_struct(t):
        children = [_prepare(arr.field(i), csv=False) for i in range(t.num_fields)]
        names = [t.field(i).name for i in range(t.num_fields)]
        return pa.StructArray.from_arrays(children, names=names, mask=arr.is_null())
    return arr.cast(pa.string())


def _all_finite(arr: pa.Array) -> bool:
    finite = pc.is_finite(arr)
    return bool(pc.all(pc.or_kleene(finite, arr.is_null())).as_py() is not False)


def _hex(arr: pa.Array) -> pa.Array:
    if pa.types.is_fixed_size_binary(arr.type):
        arr = arr.cast(pa.binary())
    return pl.Series(values=arr).bin.encode("hex").to_arrow()


def _is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _prepare_list(arr: pa.Array) -> pa.Array:
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        arr = arr.cast(pa.large_list(t.value_type))
        t = arr.type
    # Elements live inside JSON text in both formats, so they follow the JSON rules.
    values = _prepare(arr.values, csv=False)
    cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
    return cls.from_arrays(arr.offsets, values, mask=arr.is_null())


def _is_nested(t: pa.DataType) -> bool:
    return _is_list(t) or pa.types.is_struct(t)


# -- JSON --------------------------------------------------------------------------------


def _json(prepared: Mapping[str, pa.Array], rows: int, raw: set[str]) -> Body:
    if rows == 0:
        return Body(b"[]", "json", 0, JSON_HEADERS)
    out = io.BytesIO()
    out.write(b"[")
    plain = [name for name in prepared if name not in raw]
    record: pl.Expr | None = None
    if raw:
        parts: list[pl.Expr] = []
        if plain:
            parts.append(pl.struct(plain).struct.json_encode().str.head(-1))
        else:
            parts.append(pl.lit("{"))
        for i, name in enumerate(n for n in prepared if n in raw):
            sep = "," if plain or i else ""
            parts.append(pl.lit(f"{sep}{json.dumps(name, ensure_ascii=False)}:"))
            parts.append(pl.col(name).fill_null("null"))
        parts.append(pl.lit("}"))
        record = pl.concat_str(parts).alias("r")
    # Slice by slice into one buffer: polars' copy of the columns and its intermediate
    # strings stay small, and the body is written once (a join would copy it again).
    for start in range(0, rows, _JSON_SLICE_ROWS):
        frame = pl.DataFrame(
            [pl.Series(name, arr.slice(start, _JSON_SLICE_ROWS)) for name, arr in prepared.items()]
        )
        if record is None:
            frame.write_ndjson(out)  # records end with "\n", made "," below
        else:
            # Each record followed by ",".
            frame.select(record).write_csv(
                out, include_header=False, quote_style="never", line_terminator=","
            )
        del frame
    return Body(_close_array(out, ndjson=record is None), "json", rows, JSON_HEADERS)


def _close_array(out: io.BytesIO, *, ndjson: bool) -> bytes:
    """``[r1,r2,…]`` from ``[`` + records each ended by a newline (NDJSON) or by ",",
    edited in place: a raw newline never occurs inside a JSON record, so every one ends a
    record. The edit runs block by block (no body-sized mask), and the buffer becomes the
    body without a copy."""
    view = out.getbuffer()
    try:
        chars = np.frombuffer(view, dtype=np.uint8)
        end = 0x0A if ndjson else 0x2C
        if chars[-1] != end:  # pragma: no cover - every record ends with its terminator
            raise AssertionError("unexpected JSON records")
        if ndjson:
            for lo in range(0, len(chars), _EDIT_BLOCK):
                block = chars[lo : lo + _EDIT_BLOCK]
                block[block == 0x0A] = 0x2C  # "\n" → ","
            del block
        chars[-1] = 0x5D  # the last one → "]"
        del chars
    finally:
        view.release()
    # With no buffer exported, BytesIO hands over its own bytes object (no copy).
    return out.getvalue()


# -- CSV ---------------------------------------------------------------------------------


def _as_json_text(name: str) -> pl.Expr:
    """A nested column as JSON text per row (NULL stays NULL)."""
    encoded = pl.struct(pl.col(name).alias("v")).struct.json_encode()
    text = encoded.str.slice(len('{"v":')).str.head(-1)
    return pl.when(pl.col(name).is_null()).then(None).otherwise(text).alias(name)


def _csv(prepared: Mapping[str, pa.Array], rows: int, text_columns: set[str]) -> Body | None:
    if rows == 0:
        return Body(b"", "csv", 0, CSV_HEADERS)
    frame = pl.DataFrame([pl.Series(name, arr) for name, arr in prepared.items()])
    exprs = [
        _as_json_text(name) if _is_nested(arr.type) else pl.col(name).cast(pl.String)
        for name, arr in prepared.items()
    ]
    text = frame.select(exprs)
    # Only free text can hold the separators or a lone \N: numbers, dates and hex cannot,
    # and JSON text (json columns, lists) escapes control characters.
    checks = [_ambiguous(pl.col(name)) for name in prepared if name in text_columns]
    if len(prepared) == 1:
        # A one-column record holding '' is a blank line, which StarRocks skips.
        checks.append((pl.col(next(iter(prepared))) == "").fill_null(False).any())
    if checks and text.select(pl.any_horizontal(checks)).item():
        return None
    out = io.BytesIO()
    text.write_csv(
        out,
        include_header=False,
        separator=CSV_SEPARATOR,
        line_terminator=CSV_DELIMITER,
        quote_style="never",
        null_value=CSV_NULL,
    )
    return Body(out.getvalue(), "csv", rows, CSV_HEADERS)


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _ambiguous(col: pl.Expr) -> pl.Expr:
    hit = (
        col.str.contains(CSV_SEPARATOR, literal=True)
        | col.str.contains(CSV_DELIMITER, literal=True)
        | (col == CSV_NULL)
    )
    return hit.fill_null(False).any()
