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
  in CSV the text is the field, which StarRocks parses only when it starts with ``{``,
  ``[`` or ``"`` (other text becomes a JSON string), so a batch holding another value
  (``42``, ``true``, ``null``) goes as JSON. The JSON value ``null`` lands as SQL NULL
  either way (a JSON body loads it so; CSV would store the string ``"null"``);
* binary: lowercase hex text; the request maps it back with ``to_binary(col, 'hex')``
  (StarRocks would otherwise store the UTF-8 bytes of whatever text it receives);
* lists: JSON arrays in a JSON body; in CSV the text StarRocks' CSV reader takes for an
  ARRAY (:func:`_csv_list`), which is not JSON: it has no backslash escapes;
* structs: JSON objects (a batch holding one goes as JSON).

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
from dbmazz.sink.starrocks.ddl import VARCHAR_MAX, is_list_type

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
    refused = {name: found for name, arr in columns.items()
               if (found := _items_beyond_starrocks(arr)) is not None}
    if fmt == "csv":
        # A json value that is not an object, array or string (42, true, null) is stored
        # as a JSON *string* of its text when it comes in a CSV field: such a batch goes
        # as JSON, where it is the JSON value it is.
        csv = None if _holds_json_scalar(columns, raw) else _prepare_csv(columns, raw)
        if csv is not None:
            for name, (rows, why) in refused.items():
                csv[name] = pc.if_else(rows, pa.scalar(why, csv[name].type), csv[name])
        # Text and list items may hold any byte: the separators are chosen around them.
        text = {f.name for f in table.schema if f.name not in raw and (
            _is_text(_value_type(f.type)) or is_list_type(_value_type(f.type)))}
        body = None if csv is None else _csv(csv, constant, table.num_rows, text)
        if body is not None:
            return body
    _warn_json_null(columns, raw)
    prepared = {name: _prepare(arr, csv=False) for name, arr in columns.items()}
    # Numbers, dates, times and hex are rendered without quotes, backslashes or control
    # characters: only the other columns need the escaping scan.
    plain = {f.name for f in table.schema if _renders_plain(_value_type(f.type))}
    return _json(prepared, constant, table.num_rows, raw, plain, refused)


#: StarRocks DATE / DATETIME range: 0000-01-01 … 9999-12-31 23:59:59.999999.
_DAYS_MIN, _DAYS_MAX = -719_528, 2_932_896
_US_PER_DAY = 86_400_000_000
_US_MIN, _US_MAX = _DAYS_MIN * _US_PER_DAY, (_DAYS_MAX + 1) * _US_PER_DAY - 1
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}


def _items_beyond_starrocks(arr: pa.Array) -> tuple[pa.Array, str] | None:
    """Rows of a list column holding an item its StarRocks ARRAY cannot hold — a date or
    datetime outside years 0000-9999 (BC, or after 9999: exact in Arrow), a text item
    longer than the VARCHAR(1048576) items dbmazz creates — and the text sent instead.

    StarRocks turns such an item into NULL without a word (a JSON body reads ARRAY items
    with ``invalid_as_null``, and strict mode compares only whole columns' NULLs), where the
    same value outside an array fails the load. The row's whole array is therefore sent as
    this text, which no ARRAY reads: strict mode rejects the row, naming the column, as it
    rejects a top-level value out of range (then REJECTED_ROWS applies)."""
    t = _value_type(arr.type)
    if not is_list_type(t) or pa.types.is_dictionary(arr.type):
        return None
    offsets, elements, cls = _list_parts(arr)
    e = elements.type
    if pa.types.is_date(e):
        days = elements.cast(pa.date32()).cast(pa.int32())
        beyond = pc.or_(pc.less(days, _DAYS_MIN), pc.greater(days, _DAYS_MAX))
        what = "a date outside StarRocks' DATE range (0000-01-01 to 9999-12-31)"
    elif pa.types.is_timestamp(e):
        raw = elements.cast(pa.int64())
        if e.unit == "ns":
            raw = pc.divide(pc.subtract(raw, pc.if_else(pc.less(raw, 0), 999, 0)), 1000)
        else:
            raw = pc.multiply_checked(raw, _US_PER_UNIT[e.unit])
        beyond = pc.or_(pc.less(raw, _US_MIN), pc.greater(raw, _US_MAX))
        what = "a datetime outside StarRocks' DATETIME range (years 0000 to 9999)"
    elif _is_text(e):
        beyond = pc.greater(pc.binary_length(elements), VARCHAR_MAX)
        what = f"an item longer than {VARCHAR_MAX} bytes, the length of its VARCHAR items"
    else:
        return None
    beyond = pc.fill_null(beyond, False)
    if not pc.any(beyond).as_py():
        return None
    parents = pc.list_parent_indices(cls.from_arrays(offsets, elements))
    rows = np.zeros(len(arr), dtype=np.bool_)
    rows[pc.filter(parents, beyond).to_numpy(zero_copy_only=False)] = True
    return pa.array(rows), f"array holding {what}: not loaded (StarRocks would store NULL)"


_JSON_CONTAINERS = pa.array(["{", "[", '"'])
#: json columns already warned about (once per process: a flush each would flood the log).
_WARNED_JSON_NULL: set[str] = set()


def _holds_json_scalar(columns: Mapping[str, pa.Array], raw: Collection[str]) -> bool:
    """Whether a json/jsonb column holds a value that is not an object, array or string.

    StarRocks reads a CSV field for a JSON column with ``JsonValue::parse``, which parses
    only text starting with ``{``, ``[`` or ``"`` and stores any other text as a JSON
    string (util/json.cpp, ``parse_json_or_string``): ``42`` would become ``"42"``."""
    for name in raw:
        arr = columns[name]
        if not _is_text(arr.type):
            continue
        lead = pc.fill_null(pc.utf8_slice_codeunits(pc.utf8_ltrim_whitespace(arr), 0, 1), "{")
        if pc.any(pc.invert(pc.is_in(lead, _JSON_CONTAINERS))).as_py():
            return True
    return False


def _warn_json_null(columns: Mapping[str, pa.Array], raw: Collection[str]) -> None:
    """The JSON value ``null`` in a json/jsonb column lands as SQL NULL: a JSON body loads
    it so, and a CSV field would store the JSON string ``"null"`` — no load keeps it."""
    for name in sorted(set(raw) - _WARNED_JSON_NULL):
        arr = columns[name]
        if _is_text(arr.type) and pc.any(pc.equal(pc.utf8_trim_whitespace(arr),
                                                  "null")).as_py():
            _WARNED_JSON_NULL.add(name)
            log.warning("json/jsonb column %s holds the JSON value null: StarRocks stores it "
                        "as SQL NULL (no Stream Load keeps a JSON null; docs/types.md)", name)


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


def _prepare_csv(columns: Mapping[str, pa.Array], raw: Collection[str]
                 ) -> dict[str, pa.Array] | None:
    """Every column as CSV field text (json columns as their JSON text, lists by
    :func:`_csv_list`); None when a column has no CSV rendering (the batch goes as JSON)."""
    prepared: dict[str, pa.Array] = {}
    for name, arr in columns.items():
        if name in raw:
            prepared[name] = _prepare(arr, csv=False)
            continue
        t = _value_type(arr.type)
        if pa.types.is_struct(t):
            return None
        if is_list_type(t):
            rendered = _csv_list(arr.dictionary_decode() if pa.types.is_dictionary(arr.type)
                                 else arr)
            if rendered is None:
                return None
            prepared[name] = rendered
            continue
        prepared[name] = _prepare(arr, csv=True)
    return prepared


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


def _list_parts(arr: pa.Array) -> tuple[pa.Array, pa.Array, type[pa.Array]]:
    """A list column's offsets (from zero) and the elements they index, and its class."""
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
    return offsets, elements, pa.LargeListArray if pa.types.is_large_list(t) else pa.ListArray


def _prepare_list(arr: pa.Array) -> pa.Array:
    offsets, elements, cls = _list_parts(arr)
    # Elements live inside JSON text, so they follow the JSON rules.
    values = _prepare(elements, csv=False)
    return cls.from_arrays(offsets, values, mask=arr.is_null())


def _csv_list(arr: pa.Array) -> pa.Array | None:
    """A list column as the text StarRocks' CSV reader takes for an ARRAY, per row.

    That reader (be/src/formats/csv: DefaultArrayReader, the item converters'
    ``read_quoted_string``) is not a JSON parser: it splits ``[…]`` at commas outside
    double quotes (every ``"`` toggles), reads a bare ``null`` as NULL, takes text, dates
    and datetimes only inside double quotes, which it removes, reading ``""`` as one ``"``,
    and no backslash escape at all — JSON's ``\"``, ``\\``, ``\n`` or ``\u0001`` would be
    stored as typed. Numbers, decimals and booleans are read bare (quoted, they fail).
    So: text items quoted with ``"`` doubled, raw bytes otherwise (the separators are chosen
    around them); the others bare. None for item types without such a rendering (nested
    lists, structs): the batch goes as JSON."""
    offsets, elements, cls = _list_parts(arr)
    t = _value_type(elements.type)
    if pa.types.is_dictionary(elements.type):
        elements = elements.dictionary_decode()
    if pa.types.is_float16(t):
        elements = elements.cast(pa.float32())
    if pa.types.is_null(t):
        items = pa.nulls(len(elements), pa.large_string())
    elif (pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
          or pa.types.is_decimal(t)):
        items = elements.cast(pa.large_string())  # nan, inf, -inf as StarRocks reads them
    elif pa.types.is_duration(t):
        items = _prepare(elements, csv=True).cast(pa.large_string())
    elif (_is_text(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)
          or pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t)
          or pa.types.is_date(t) or pa.types.is_timestamp(t) or pa.types.is_time(t)):
        text = _prepare(elements, csv=True).cast(pa.large_string())
        quote = pa.scalar('"', pa.large_string())
        items = pc.binary_join_element_wise(
            quote, pc.replace_substring(text, '"', '""'), quote, pa.scalar("", pa.large_string()))
    else:
        return None
    items = pc.fill_null(items, pa.scalar("null", pa.large_string()))
    joined = pc.binary_join(cls.from_arrays(offsets, items, mask=arr.is_null()),
                            pa.scalar(",", pa.large_string()))
    return pc.binary_join_element_wise(pa.scalar("[", pa.large_string()), joined,
                                       pa.scalar("]", pa.large_string()),
                                       pa.scalar("", pa.large_string()))


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
          raw: set[str], plain: Collection[str],
          refused: Mapping[str, tuple[pa.Array, str]]) -> Body:
    if rows == 0:
        return Body(b"[]", "json", 0, JSON_HEADERS)
    template: _Template = []
    for i, (name, arr) in enumerate(prepared.items()):
        template.append(("{" if i == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":")
        value, quoted = _json_value(arr, name in raw, name in plain)
        if name in refused:
            rows_, why = refused[name]
            value = pc.if_else(rows_, pa.scalar(json.dumps(why), value.type), value)
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
    texts = dict(prepared)
    # Only free text (and list items) can hold the separators or a lone \N: numbers,
    # dates and hex cannot, and JSON text (json columns) escapes control characters.
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
