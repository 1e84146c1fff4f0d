"""Arrow tables → Stream Load bodies (JSON array or CSV), column at a time.

Renderings (DESIGN.md §5), chosen to load exactly into the types :mod:`.ddl` creates:

* integers, booleans: JSON numbers / ``true``/``false`` (CSV: digits / ``true``/``false``);
* floats: JSON numbers; a column holding NaN/±inf is sent as strings ``nan``/``inf``/``-inf``
  (JSON has no literal for them, and ``null`` would lose the value);
* decimals: exact text (``"12.340"``), never a float;
* date ``YYYY-MM-DD``; timestamp ``YYYY-MM-DD HH:MM:SS.ffffff``; timestamptz the same in UTC;
  time ``HH:MM:SS.ffffff``; interval/duration: integer microseconds;
* json/jsonb columns (``raw_json``): the JSON text is embedded as the JSON value itself,
  because StarRocks stores a JSON *string* scalar when given a quoted string;
  in CSV the text is the field (StarRocks parses it). A JSON body loads the JSON value
  ``null`` as SQL NULL, so a batch holding one is sent as CSV when it can be;
* binary: lowercase hex text; the request maps it back with ``to_binary(col, 'hex')``
  (StarRocks would otherwise store the UTF-8 bytes of whatever text it receives);
* lists (and structs): JSON arrays (objects), in both formats.

CSV uses ``\\x01`` between fields, ``\\x02`` after every record (the transaction interface
needs the trailing delimiter) and ``\\N`` for NULL, with no enclose/escape: StarRocks applies
the ``\\N`` test after unquoting, so quoting cannot protect a literal ``\\N`` anyway. A batch
whose text contains a separator, equals ``\\N``, or would produce a blank line is sent as
JSON instead (:attr:`Body.format` tells which), so hostile text is never mangled.

Assembly is columnar in both formats: each column is rendered as text once, a column with
one value in every row is rendered once for the whole body, and an Arrow kernel joins the
columns and the punctuation between them record by record. No per-row Python; polars only
renders nested (list/struct) columns as JSON text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dbmazz.lazy import lazy_module
from dbmazz.sink.starrocks.ddl import is_list_type

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_module("polars")  # imported at first use: ~30 MB a run may not need

log = logging.getLogger(__name__)

Format = Literal["json", "csv"]

CSV_SEPARATOR = "\x01"
CSV_DELIMITER = "\x02"
CSV_NULL = "\\N"
#: Rows rendered per step of a body (bounds the rendered columns and records alive at once).
_SLICE_ROWS = 16_384

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
#: Other separator bytes, for a batch whose text holds \x01 or \x02: control bytes
#: (never in rendered numbers, dates, hex or JSON text), not tab, newline or return.
_SPARE_SEPARATORS = (*range(0x03, 0x09), *range(0x0E, 0x20))


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
    columns = {name: _combine(table.column(name)) for name in table.column_names}
    # A column holding one value in every row (the audit columns of a batch, the commit
    # LSN of one big transaction) is rendered once, into the text between the others.
    constant = {name for name, arr in columns.items() if name not in raw and _is_constant(arr)}
    if len(constant) == len(columns):
        # One column stays a column: the kernels count records by it (a keyed table's rows
        # never all match, but a body must not depend on that).
        constant.discard(table.column_names[0])
    columns = {name: arr.slice(0, 1) if name in constant else arr
               for name, arr in columns.items()}
    json_null = _holds_json_null(columns, raw)
    if fmt == "csv" or json_null:
        prepared = {name: _prepare(arr, csv=name not in raw) for name, arr in columns.items()}
        text = {f.name for f in table.schema if f.name not in raw and _is_text(_value_type(f.type))}
        body = _csv(prepared, constant, table.num_rows, text)
        if body is not None:
            return body
        if json_null:
            log.warning("a json/jsonb column holds the JSON value null in a batch whose text "
                        "also holds the value '\\N' (which CSV would read as NULL): sent as "
                        "JSON, where StarRocks stores that null as SQL NULL")
    prepared = {name: _prepare(arr, csv=False) for name, arr in columns.items()}
    # Numbers, dates, times and hex are rendered without quotes, backslashes or control
    # characters: only the other columns need the escaping scan.
    plain = {f.name for f in table.schema if _renders_plain(_value_type(f.type))}
    return _json(prepared, constant, table.num_rows, raw, plain)


def _holds_json_null(columns: Mapping[str, pa.Array], raw: Collection[str]) -> bool:
    """Whether a json/jsonb column holds the JSON value ``null``: a JSON body cannot carry
    it (StarRocks loads a ``null`` value as SQL NULL), a CSV field can (the text is parsed
    as JSON), so such a batch goes as CSV when CSV can carry its text."""
    texts = [columns[name] for name in raw]
    return any(pc.any(pc.equal(pc.utf8_trim_whitespace(arr), "null")).as_py()
               for arr in texts
               if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type))


def _renders_plain(t: pa.DataType) -> bool:
    return (
        pa.types.is_decimal(t) or pa.types.is_floating(t) or pa.types.is_date(t)
        or pa.types.is_timestamp(t) or pa.types.is_time(t) or pa.types.is_binary(t)
        or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _is_constant(arr: pa.Array) -> bool:
    """Whether a fixed-width column holds one non-null value in every row (cheap to ask)."""
    t = arr.type
    if len(arr) < 2 or arr.null_count or not (
        pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_decimal(t)
        or pa.types.is_date(t) or pa.types.is_timestamp(t)
    ):
        return False
    bounds = pc.min_max(arr)
    return bool(bounds["min"] == bounds["max"])


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
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    if pa.types.is_string_view(t):
        return arr.cast(pa.large_string())
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
    if is_list_type(t):
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


def _prepare_list(arr: pa.Array) -> pa.Array:
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t)):
        arr = arr.cast(pa.large_list(t.value_type))
        t = arr.type
    # A slice (the rejected-rows bisection loads slices) keeps its parent's offsets and
    # values, and Arrow refuses a null mask over a sliced offsets array: take only this
    # slice's elements, with new offsets from zero.
    offsets = arr.offsets
    first = offsets[0].as_py()
    elements = arr.values.slice(first, offsets[-1].as_py() - first)
    offsets = pc.subtract(offsets, pa.scalar(first, offsets.type))
    # Elements live inside JSON text in both formats, so they follow the JSON rules.
    values = _prepare(elements, csv=False)
    cls = pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray
    return cls.from_arrays(offsets, values, mask=arr.is_null())


def _is_nested(t: pa.DataType) -> bool:
    return is_list_type(t) or pa.types.is_struct(t)


# -- assembling records ----------------------------------------------------------------
#
# Both formats are one Arrow kernel call per slice of rows: every column rendered as text
# (NULL kept), then ``binary_join_element_wise`` writes each record with its punctuation,
# NULLs replaced by the format's NULL: JSON over [literal, column, literal, column, …], CSV
# over the fields with the separator as the kernel's own argument (:func:`_csv_records`).
# The records' bytes become the body in one join: no per-row Python, no intermediate frame.


def _as_text(arr: pa.Array, target: pa.DataType) -> pa.Array:
    if not _is_text(arr.type):
        arr = arr.cast(pa.string())
    return arr if arr.type == target else arr.cast(target)


def _text_type(columns: Collection[pa.Array], literal_bytes: int) -> pa.DataType:
    """32-bit offsets while the records of these columns surely fit them, else 64-bit.

    An upper bound of the rendered size: text as it is (escaping at most doubles it; JSON
    ``\\u00XX`` is rarer than the 2x margin covers), other values at most 4x their
    storage (a 64-bit integer prints in ≤ 20 characters; a timestamp's 8 bytes in 26)."""
    rows = max((len(c) for c in columns), default=0)
    size = rows * literal_bytes + sum(
        (2 if _is_text(c.type) else 4) * c.nbytes for c in columns)
    return pa.string() if size < (1 << 30) else pa.large_string()


#: One record template: literal text and (column, quoted) in order.
_Template = list[str | tuple[pa.Array, bool]]


def _records(template: _Template, start: int, rows: int, null: str) -> pa.Array:
    """Rows ``start … start + rows`` of ``template`` joined into one text per record."""
    part = [item if isinstance(item, str) else (item[0].slice(start, rows), item[1])
            for item in template]
    target = _text_type([item[0] for item in part if not isinstance(item, str)],
                        sum(len(item) for item in part if isinstance(item, str)))
    pieces: list[pa.Scalar | pa.Array] = []
    literal = ""
    for item in part:
        if isinstance(item, str):
            literal += item
            continue
        arr, quoted = item
        text = _as_text(arr, target)
        if quoted and text.null_count:
            # A NULL must stay the bare literal null: quotes around the values only.
            text = _as_text(pc.binary_join_element_wise('"', text, '"', ""), target)
            quoted = False
        if literal or quoted:
            pieces.append(pa.scalar(literal + ('"' if quoted else ""), target))
        pieces.append(text)
        literal = '"' if quoted else ""
    if literal:
        pieces.append(pa.scalar(literal, target))
    return pc.binary_join_element_wise(
        *pieces, pa.scalar("", target), null_handling="replace", null_replacement=null
    )


def _data_of(records: pa.Array) -> memoryview:
    """The bytes of a text array's rows, without a copy."""
    wide = pa.types.is_large_string(records.type) or pa.types.is_large_binary(records.type)
    offsets = np.frombuffer(records.buffers()[1], dtype=np.int64 if wide else np.int32)
    lo, hi = int(offsets[records.offset]), int(offsets[records.offset + len(records)])
    data = records.buffers()[2]
    return memoryview(data)[lo:hi] if data is not None else memoryview(b"")


def _csv_records(fields: Sequence[str | pa.Array], start: int, rows: int,
                 separator: str = CSV_SEPARATOR, delimiter: str = CSV_DELIMITER) -> pa.Array:
    """Rows ``start … start + rows`` of ``fields`` (columns, or the text of a constant one)
    as CSV records, each ended by the delimiter.

    The separator is the kernel's own separator argument rather than a literal between every
    two fields: the kernel then costs half (82 vs 176 ns a record of ten fields). Constant
    fields next to each other are one literal, the delimiter joins the last field."""
    part = [f if isinstance(f, str) else f.slice(start, rows) for f in fields]
    target = _text_type([f for f in part if not isinstance(f, str)],
                        sum(len(f) for f in part if isinstance(f, str)) + len(part) + 1)
    pieces: list[str | pa.Array] = []
    for f in part:
        if isinstance(f, str) and pieces and isinstance(pieces[-1], str):
            pieces[-1] += separator + f
        else:
            pieces.append(f)
    last = pieces[-1]
    pieces[-1] = last + delimiter if isinstance(last, str) else pc.binary_join_element_wise(
        _as_text(last, target), pa.scalar(delimiter, target), pa.scalar("", target),
        null_handling="replace", null_replacement=CSV_NULL)
    return pc.binary_join_element_wise(
        *(pa.scalar(p, target) if isinstance(p, str) else _as_text(p, target) for p in pieces),
        pa.scalar(separator, target), null_handling="replace", null_replacement=CSV_NULL)


def _body(render: Callable[[int, int], pa.Array], rows: int, head: bytes, tail: bytes,
          cut: int) -> bytes:
    """``head`` + every record + ``tail``, minus the last ``cut`` bytes of the records;
    ``render(start, count)`` renders records ``start … start + count``.

    Slice by slice (the rendered records of one slice stay small) into a list of views,
    then one join: the body is allocated once at its final size and written once."""
    parts: list[bytes | memoryview] = [head]
    # Each slice's records must live until the join reads them.
    keep: list[pa.Array] = []
    for start in range(0, rows, _SLICE_ROWS):
        records = render(start, min(_SLICE_ROWS, rows - start))
        keep.append(records)
        parts.append(_data_of(records))
    if cut:
        parts[-1] = parts[-1][:-cut]
    parts.append(tail)
    body = b"".join(parts)
    del parts, keep
    return body


def _bytes_of(arr: pa.Array) -> np.ndarray:
    """The data bytes of a text array's rows (not the whole shared buffer)."""
    return np.frombuffer(_data_of(arr), dtype=np.uint8)


def _nested_json_text(arr: pa.Array) -> pa.Array:
    """A nested column as JSON text per row (NULL stays NULL)."""
    frame = pl.DataFrame([pl.Series("v", arr)])
    encoded = pl.struct(pl.col("v")).struct.json_encode()
    text = encoded.str.slice(len('{"v":')).str.head(-1)
    rendered = frame.select(pl.when(pl.col("v").is_null()).then(None).otherwise(text))
    return rendered.to_series().to_arrow().cast(pa.large_string())


# -- JSON --------------------------------------------------------------------------------

#: Short escapes JSON defines; every other control character becomes ``\u00XX``.
_SHORT_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


def _json_string_content(arr: pa.Array) -> pa.Array:
    """Text escaped for the inside of a JSON string (quotes not added).

    Most text needs nothing: one byte scan decides, and only the characters present are
    replaced (each a whole-column kernel)."""
    raw = _bytes_of(arr)
    special = (raw < 0x20) | (raw == 0x22) | (raw == 0x5C)
    if not special.any():
        return arr
    present = set(np.unique(raw[special]).tolist())
    # Backslashes first: the escapes added below contain backslashes of their own.
    if 0x5C in present:
        arr = pc.replace_substring(arr, "\\", "\\\\")
    if 0x22 in present:
        arr = pc.replace_substring(arr, '"', '\\"')
    for code in sorted(present - {0x22, 0x5C}):
        arr = pc.replace_substring(arr, chr(code), _SHORT_ESCAPES.get(code, f"\\u{code:04x}"))
    return arr


def _json_value(arr: pa.Array, raw: bool, plain: bool) -> tuple[pa.Array, bool]:
    """A prepared column as JSON value text, and whether it must be put in quotes."""
    t = arr.type
    if raw:
        return arr, False
    if _is_nested(t):
        return _nested_json_text(arr), False
    if pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t) or (
        pa.types.is_floating(t)
    ):
        return arr, False  # finite floats only: _prepare made the others text
    return (arr if plain else _json_string_content(arr)), True


def _json(prepared: Mapping[str, pa.Array], constant: Collection[str], rows: int,
          raw: set[str], plain: Collection[str]) -> Body:
    if rows == 0:
        return Body(b"[]", "json", 0, JSON_HEADERS)
    template: _Template = []
    for i, (name, arr) in enumerate(prepared.items()):
        template.append(("{" if i == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":")
        value, quoted = _json_value(arr, name in raw, name in plain)
        if name in constant:
            text = _as_text(value, pa.string())[0].as_py()
            template.append(json.dumps(text, ensure_ascii=False) if quoted else text)
        else:
            template.append((value, quoted))
    template.append("},")
    # Records each end with ","; the last one's becomes the array's "]".
    body = _body(lambda start, count: _records(template, start, count, "null"), rows,
                 b"[", b"]", 1)
    return Body(body, "json", rows, JSON_HEADERS)


# -- CSV ---------------------------------------------------------------------------------


def _csv(prepared: Mapping[str, pa.Array], constant: Collection[str], rows: int,
         text_columns: set[str]) -> Body | None:
    if rows == 0:
        return Body(b"", "csv", 0, CSV_HEADERS)
    texts = {
        name: _nested_json_text(arr) if _is_nested(arr.type) else arr
        for name, arr in prepared.items()
    }
    # Only free text can hold the separators or a lone \N: numbers, dates and hex cannot,
    # and JSON text (json columns, lists) escapes control characters.
    free_text = [texts[name] for name in sorted(text_columns & texts.keys())]
    if any(pc.any(pc.equal(arr, CSV_NULL)).as_py() for arr in free_text):
        return None
    separators = _separators(free_text)
    if separators is None:
        return None
    separator, delimiter = separators
    if len(texts) == 1:
        # A one-column record holding '' is a blank line, which StarRocks skips.
        only = next(iter(texts.values()))
        if pc.any(pc.equal(pc.binary_length(only), 0)).as_py():
            return None
    fields = [_as_text(arr, pa.string())[0].as_py() if name in constant else arr
              for name, arr in texts.items()]
    body = _body(lambda start, count: _csv_records(fields, start, count, separator, delimiter),
                 rows, b"", b"", 0)
    headers = CSV_HEADERS if separators == (CSV_SEPARATOR, CSV_DELIMITER) else {
        **CSV_HEADERS, "column_separator": f"\\x{ord(separator):02x}",
        "row_delimiter": f"\\x{ord(delimiter):02x}"}
    return Body(body, "csv", rows, headers)


def _value_type(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _separators(texts: Sequence[pa.Array]) -> tuple[str, str] | None:
    """Column separator and row delimiter bytes no text value holds: \x01 and \x02, else
    two spare control bytes (None when the text holds every one of them)."""
    raws = [_bytes_of(arr) for arr in texts if _is_text(arr.type)]
    if not any(((raw == 0x01) | (raw == 0x02)).any() for raw in raws):
        return CSV_SEPARATOR, CSV_DELIMITER
    present = np.zeros(256, dtype=np.bool_)
    for raw in raws:
        present |= np.bincount(raw, minlength=256).astype(np.bool_)
    spare = [chr(b) for b in _SPARE_SEPARATORS if not present[b]]
    return (spare[0], spare[1]) if len(spare) >= 2 else None
