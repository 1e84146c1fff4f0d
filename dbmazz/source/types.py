"""PostgreSQL types → Arrow: the type mapping and the vectorized text → Arrow casts.

pgoutput sends every value in its type's *text* output format. This module turns a whole
column of such texts — held as positions into one byte buffer (:class:`TextColumn`), never as
Python objects — into one typed Arrow array with a fixed number of numpy/pyarrow operations.

The replication session must use ``DateStyle=ISO``, ``TimeZone=UTC``,
``extra_float_digits=3``, ``IntervalStyle=postgres`` and ``bytea_output=hex`` (the default),
and the database encoding must be UTF-8; the texts are then exactly what the parsers below
expect.

Mapping (DESIGN.md §5; :func:`arrow_type` is the single source of truth):

=========================================  ================================================
PostgreSQL                                 Arrow
=========================================  ================================================
bool                                       bool
int2 / int4 / int8                         int16 / int32 / int64
oid                                        int64 (oids reach 2³²−1; StarRocks has no uint32)
float4 / float8                            float32 / float64 (NaN, ±Infinity kept)
numeric(p,s), 1 ≤ p ≤ 38, 0 ≤ s ≤ p        decimal128(p,s), exact
numeric unconstrained, p > 38, s<0 or s>p  string (the exact text)
bytea                                      binary
date                                       date32
timestamp                                  timestamp[us]
timestamptz                                timestamp[us, UTC]
time, timetz, interval                     string (see below)
json, jsonb                                string (JSON text)
text, varchar, bpchar, name, uuid, inet,   string
cidr, macaddr, money, xml, ranges,
geometric, tsvector, enum, unknown, …
domain                                     the mapping of its base type (needs a registry)
array of any of the above (1-D)            list<element mapping>
=========================================  ================================================

``interval`` is a string, not ``duration[us]``: an interval with months or days has no fixed
length in microseconds (a month is 28–31 days, a day 23–25 hours across DST), so any
conversion would be a silently wrong value for some rows. The postgres-style text is exact.

Defined fallbacks — never a crash, never a silent wrong value; each occurrence is counted in
:class:`DecodeStats` under ``(column, reason)`` and logged once per batch:

=========================== ============================================ ========================
value                       result                                       reason
=========================== ============================================ ========================
numeric ``NaN``             null                                         ``numeric_nan``
numeric ``±Infinity``       null                                         ``numeric_infinity``
date ``infinity``           9999-12-31 (StarRocks DATE max)              ``date_infinity``
date ``-infinity``          0000-01-01 (StarRocks DATE min)              ``date_infinity``
timestamp[tz] ``infinity``  9999-12-31 23:59:59.999999 (StarRocks max)   ``timestamp_infinity``
timestamp[tz] ``-infinity`` 0000-01-01 00:00:00 (StarRocks DATETIME min) ``timestamp_infinity``
timestamp after 294247 AD   9999-12-31 23:59:59.999999 (int64 overflow)  ``timestamp_out_of_range``
bytea not in hex format     null                                         ``bytea_not_hex``
multi-dimensional array     flattened in row-major order into one list   ``array_flattened``
array ``[0:1]={1,2}``       its elements (a list starts at 1, no bound)  ``array_lower_bound``
invalid UTF-8 in a string   null                                         ``invalid_utf8``
any other unparsable text   null                                         ``unparsable``
=========================== ============================================ ========================

BC dates and timestamps and years past 9999 are decoded exactly (proleptic Gregorian,
astronomical year numbering: 44 BC is year −43); limiting them to a target's range is the
sink's business.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

log = logging.getLogger(__name__)

# --- built-in type OIDs (pg_type.dat; stable across PostgreSQL versions) --------------------
BOOL, BYTEA, CHAR, NAME, INT8, INT2, INT4, TEXT, OID = 16, 17, 18, 19, 20, 21, 23, 25, 26
JSON, XML, POINT, BOX, FLOAT4, FLOAT8, UNKNOWN, MONEY = 114, 142, 600, 603, 700, 701, 705, 790
BPCHAR, VARCHAR, DATE, TIME, TIMESTAMP, TIMESTAMPTZ = 1042, 1043, 1082, 1083, 1114, 1184
INTERVAL, TIMETZ, NUMERIC, UUID, JSONB = 1186, 1266, 1700, 2950, 3802

#: pg_type.typname of the built-in scalar types a Relation message names only by OID
#: (pgoutput sends Type messages for non-built-in types alone). Sinks map on these names
#: (json/jsonb → JSON, varchar(n) → VARCHAR(4n), …).
BUILTIN_TYPE_NAMES: dict[int, str] = {
    BOOL: "bool", BYTEA: "bytea", CHAR: "char", NAME: "name", INT8: "int8", INT2: "int2",
    INT4: "int4", TEXT: "text", OID: "oid", JSON: "json", XML: "xml", POINT: "point",
    BOX: "box", FLOAT4: "float4", FLOAT8: "float8", MONEY: "money", BPCHAR: "bpchar",
    VARCHAR: "varchar", DATE: "date", TIME: "time", TIMESTAMP: "timestamp",
    TIMESTAMPTZ: "timestamptz", INTERVAL: "interval", TIMETZ: "timetz", NUMERIC: "numeric",
    UUID: "uuid", JSONB: "jsonb", 650: "cidr", 869: "inet", 829: "macaddr", 774: "macaddr8",
    1560: "bit", 1562: "varbit", 3614: "tsvector", 3615: "tsquery", 4072: "jsonpath",
}

#: Built-in array type → element type (pg_type rows of category 'A'). int2vector (22) and
#: oidvector (30) are left out on purpose: their text form is space-separated, not ``{…}``.
ARRAY_ELEMENT: dict[int, int] = {
    143: 142, 199: 114, 210: 71, 270: 75, 271: 5069, 272: 81, 273: 83, 629: 628, 651: 650,
    719: 718, 775: 774, 791: 790, 1000: 16, 1001: 17, 1002: 18, 1003: 19, 1005: 21,
    1006: 22, 1007: 23, 1008: 24, 1009: 25, 1010: 27, 1011: 28, 1012: 29, 1013: 30,
    1014: 1042, 1015: 1043, 1016: 20, 1017: 600, 1018: 601, 1019: 602, 1020: 603,
    1021: 700, 1022: 701, 1027: 604, 1028: 26, 1034: 1033, 1040: 829, 1041: 869,
    1115: 1114, 1182: 1082, 1183: 1083, 1185: 1184, 1187: 1186, 1231: 1700, 1263: 2275,
    1270: 1266, 1561: 1560, 1563: 1562, 2201: 1790, 2207: 2202, 2208: 2203, 2209: 2204,
    2210: 2205, 2211: 2206, 2949: 2970, 2951: 2950, 3221: 3220, 3643: 3614, 3644: 3642,
    3645: 3615, 3735: 3734, 3770: 3769, 3807: 3802, 3905: 3904, 3907: 3906, 3909: 3908,
    3911: 3910, 3913: 3912, 3927: 3926, 4073: 4072, 4090: 4089, 4097: 4096, 4192: 4191,
    5039: 5038, 6150: 4451, 6151: 4532, 6152: 4533, 6153: 4534, 6155: 4535, 6157: 4536,
}

#: Element types whose array literal separates elements with ``;`` (pg_type.typdelim).
_SEMICOLON_DELIMITED = frozenset({BOX})

_MAX_DECIMAL128_PRECISION = 38
_MAX_NESTING = 8  # domains over domains / arrays of domains; deeper is a catalog loop

# StarRocks DATE / DATETIME range, the clamp targets of ±infinity.
_DAYS_0000_01_01 = -719528
_DAYS_9999_12_31 = 2932896
_US_PER_DAY = 86_400_000_000
_US_MIN = _DAYS_0000_01_01 * _US_PER_DAY
_US_MAX = (_DAYS_9999_12_31 + 1) * _US_PER_DAY - 1
_I64_MAX, _I64_MIN = 2**63 - 1, -(2**63)
_MAX_DAYS = _I64_MAX // _US_PER_DAY  # the last day whose midnight fits int64 µs


# --- statistics ------------------------------------------------------------------------------
@dataclass
class DecodeStats:
    """Counts of fallback casts, per column and reason (see the module docstring table)."""

    fallbacks: dict[str, dict[str, int]] = field(default_factory=dict)
    rows: int = 0
    batches: int = 0

    def add(self, column: str, reason: str, count: int) -> None:
        if count <= 0:
            return
        per_column = self.fallbacks.setdefault(column, {})
        per_column[reason] = per_column.get(reason, 0) + int(count)

    def log(self, table: str) -> None:
        """One warning per (column, reason): a stream full of NaNs must not flood the log."""
        for column, reasons in self.fallbacks.items():
            for reason, count in reasons.items():
                log.warning("%s.%s: %d value(s) decoded by fallback %s (see docs/types.md)",
                            table, column, count, reason)

    @property
    def total(self) -> int:
        return sum(sum(r.values()) for r in self.fallbacks.values())

    def count(self, column: str, reason: str | None = None) -> int:
        per_column = self.fallbacks.get(column, {})
        return sum(per_column.values()) if reason is None else per_column.get(reason, 0)

    def merge(self, other: DecodeStats) -> None:
        self.rows += other.rows
        self.batches += other.batches
        for column, reasons in other.fallbacks.items():
            per_column = self.fallbacks.setdefault(column, {})
            for reason, n in reasons.items():
                per_column[reason] = per_column.get(reason, 0) + n


# --- type registry (non-built-in types) -----------------------------------------------------
@dataclass(frozen=True, slots=True)
class TypeInfo:
    """What dbmazz knows of one non-built-in type (from a ``Y`` message or pg_type)."""

    oid: int
    namespace: str = ""
    name: str = ""
    #: pg_type.typtype: ``b`` base, ``e`` enum, ``d`` domain, ``c`` composite, ``r`` range,
    #: ``m`` multirange, ``p`` pseudo; empty when only a Type message was seen.
    typtype: str = ""
    #: Domains: the base type and its modifier (pg_type.typbasetype / typtypmod). A column of
    #: a domain type carries typmod −1 in the Relation message; the domain's own counts.
    base_oid: int = 0
    base_typmod: int = -1
    #: Array types (category ``A``): the element type.
    element_oid: int = 0
    delimiter: str = ","


class TypeRegistry:
    """Knowledge of type OIDs that are not built in: enums, domains, their arrays, …

    Without an entry an unknown OID decodes as a string (its exact text), which is always
    correct; an entry only makes the Arrow type sharper (a domain over ``numeric(10,2)`` →
    decimal128, an array of an enum → list<string>).
    """

    def __init__(self, types: Iterable[TypeInfo] = ()) -> None:
        self._types: dict[int, TypeInfo] = {}
        for info in types:
            self.add(info)

    def add(self, info: TypeInfo) -> None:
        self._types[info.oid] = info

    def add_type_message(self, oid: int, namespace: str, name: str) -> None:
        """Record a ``Y`` message; keeps the richer catalog entry if one is known already."""
        if oid not in self._types:
            self._types[oid] = TypeInfo(oid, namespace, name)

    def get(self, oid: int) -> TypeInfo | None:
        return self._types.get(oid)

    def __contains__(self, oid: object) -> bool:
        return oid in self._types

    def __len__(self) -> int:
        return len(self._types)

    def __iter__(self) -> Iterator[TypeInfo]:
        return iter(self._types.values())

    def load_catalog(self, conn: Any, oids: Iterable[int]) -> None:
        """Describe ``oids`` (and the types they are built on) from ``pg_type``.

        ``conn`` is a psycopg connection to the source database (not a replication one).
        """
        pending = {o for o in oids if o >= 10000 and o not in ARRAY_ELEMENT}
        seen: set[int] = set()
        while pending:
            batch = sorted(pending - seen)
            seen.update(batch)
            if not batch:
                break
            rows = conn.execute(
                "SELECT t.oid, n.nspname, t.typname, t.typtype, t.typbasetype, t.typtypmod,"
                " CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE 0 END, t.typdelim"
                " FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace"
                " WHERE t.oid = ANY(%s)",
                (batch,),
            ).fetchall()
            pending = set()
            for oid, nsp, name, typtype, base, base_typmod, elem, delim in rows:
                info = TypeInfo(int(oid), str(nsp), str(name), str(typtype), int(base),
                                int(base_typmod), int(elem), str(delim))
                self.add(info)
                for dep in (info.base_oid, info.element_oid):
                    if dep >= 10000 and dep not in seen:
                        pending.add(dep)


# --- type resolution -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TypePlan:
    """How one column is decoded: the Arrow type and the parser that produces it."""

    #: ``bool``, ``int``, ``float``, ``decimal``, ``string``, ``binary``, ``date``,
    #: ``timestamp``, ``timestamptz`` or ``list``.
    kind: str
    arrow_type: pa.DataType
    element: TypePlan | None = None
    #: Array element delimiter (byte value); only for ``list``.
    delimiter: int = ord(",")


_STRING_PLAN = TypePlan("string", pa.string())
_SCALARS: dict[int, TypePlan] = {
    BOOL: TypePlan("bool", pa.bool_()),
    INT2: TypePlan("int", pa.int16()),
    INT4: TypePlan("int", pa.int32()),
    INT8: TypePlan("int", pa.int64()),
    OID: TypePlan("int", pa.int64()),
    FLOAT4: TypePlan("float", pa.float32()),
    FLOAT8: TypePlan("float", pa.float64()),
    BYTEA: TypePlan("binary", pa.binary()),
    DATE: TypePlan("date", pa.date32()),
    TIMESTAMP: TypePlan("timestamp", pa.timestamp("us")),
    TIMESTAMPTZ: TypePlan("timestamptz", pa.timestamp("us", tz="UTC")),
}


def numeric_precision_scale(typmod: int) -> tuple[int, int] | None:
    """``(precision, scale)`` of a ``numeric`` typmod, None when unconstrained.

    PostgreSQL ≥ 13 stores the scale as an 11-bit two's complement, so it can be negative
    (``numeric(2,-3)``) or exceed the precision (``numeric(3,5)``).
    """
    if typmod < 4:
        return None
    value = typmod - 4
    precision = (value >> 16) & 0xFFFF
    scale = ((value & 0x7FF) ^ 0x400) - 0x400
    return precision, scale


def resolve(type_oid: int, typmod: int = -1, registry: TypeRegistry | None = None,
            _depth: int = 0) -> TypePlan:
    """The decoding plan of a column of type ``type_oid`` with modifier ``typmod``."""
    if plan := _SCALARS.get(type_oid):
        return plan
    if type_oid == NUMERIC:
        ps = numeric_precision_scale(typmod)
        if ps is not None:
            precision, scale = ps
            if 1 <= precision <= _MAX_DECIMAL128_PRECISION and 0 <= scale <= precision:
                return TypePlan("decimal", pa.decimal128(precision, scale))
        return _STRING_PLAN
    if _depth >= _MAX_NESTING:
        return _STRING_PLAN
    element_oid = ARRAY_ELEMENT.get(type_oid, 0)
    delimiter = ";" if element_oid in _SEMICOLON_DELIMITED else ","
    info = registry.get(type_oid) if registry is not None and type_oid >= 10000 else None
    if info is not None:
        if info.typtype == "d" and info.base_oid:
            return resolve(info.base_oid, typmod if typmod != -1 else info.base_typmod,
                           registry, _depth + 1)
        if info.element_oid:
            element_oid = info.element_oid
            element_info = registry.get(element_oid) if registry is not None else None
            if element_info is not None:
                delimiter = element_info.delimiter
            elif element_oid in _SEMICOLON_DELIMITED:
                delimiter = ";"
    if element_oid:
        # An array column's typmod is its element's (numeric(10,2)[] → typmod of (10,2)).
        element = resolve(element_oid, typmod, registry, _depth + 1)
        return TypePlan("list", pa.list_(element.arrow_type), element,
                        ord(delimiter[:1] or ","))
    return _STRING_PLAN


def arrow_type(type_oid: int, typmod: int = -1,
               registry: TypeRegistry | None = None) -> pa.DataType:
    """The in-flight Arrow type of a PostgreSQL column (DESIGN.md §5)."""
    return resolve(type_oid, typmod, registry).arrow_type


# --- text columns ----------------------------------------------------------------------------
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int32] | npt.NDArray[np.int64]

#: Bytes of value text kept beside each value's position (enough for a string_view's inline
#: part, ≤ 12 bytes, and for a bool).
PREFIX_BYTES = 12
_MASK32 = np.array([(1 << (8 * k)) - 1 for k in range(5)], dtype=np.uint32)
_MASK64 = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)


def gather_windows(buf: U8, positions: IntArray, width: int) -> U8:
    """``buf[p : p + width]`` for every p, as an (n, width) array — one numpy gather.

    Reads through an overlapping strided view of fixed-size records, which costs about as
    much as gathering single bytes (each row is one cache miss either way). Positions whose
    window runs past the end of ``buf`` get zero padding there instead of an IndexError
    (also positions beyond the end: null fields' value starts may point there).
    """
    n = len(positions)
    size = len(buf)
    out: U8
    limit = size - width
    if limit < 0 or n == 0:
        padded = np.zeros(size + width, dtype=np.uint8)
        padded[:size] = buf
        view = np.ndarray((size + 1,), f"V{width}", padded, 0, (1,))
        clipped = np.minimum(np.asarray(positions, dtype=np.int64), size)
        return view[clipped].view(np.uint8).reshape(n, width)
    view = np.ndarray((limit + 1,), f"V{width}", buf, 0, (1,))
    over = positions > limit
    if not over.any():
        return view[positions].view(np.uint8).reshape(n, width)
    out = view[np.minimum(positions, limit)].view(np.uint8).reshape(n, width).copy()
    rows = np.flatnonzero(over)
    tail = np.zeros(2 * width, dtype=np.uint8)
    tail[:width] = buf[limit:]
    tail_view = np.ndarray((width + 1,), f"V{width}", tail, 0, (1,))
    within = np.minimum(positions[rows] - limit, width)
    out[rows] = tail_view[within].view(np.uint8).reshape(len(rows), width)
    return out


@dataclass(slots=True)
class TextColumn:
    """A column of text values as positions into one byte buffer; no bytes are copied.

    ``lengths`` is 0 wherever ``valid`` is False. ``prefix``, when given, holds at least the
    first :data:`PREFIX_BYTES` bytes at each start (raw: bytes past a value's end are junk).
    """

    buf: U8
    starts: IntArray
    lengths: npt.NDArray[np.int32]
    valid: BoolArray
    prefix: U8 | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def window(self, width: int) -> U8:
        if self.prefix is not None and self.prefix.shape[1] >= width:
            return self.prefix[:, :width]
        return gather_windows(self.buf, self.starts, width)

    def without(self, rows: BoolArray) -> TextColumn:
        """The same column with ``rows`` turned into nulls."""
        valid = self.valid & ~rows
        return TextColumn(self.buf, self.starts, np.where(valid, self.lengths, 0).astype(
            np.int32), valid, self.prefix)


def _validity(valid: BoolArray) -> pa.Buffer | None:
    if valid.all():
        return None
    return pa.py_buffer(np.packbits(valid, bitorder="little"))


def string_view(col: TextColumn) -> pa.Array:
    """The column as an Arrow ``string_view`` pointing into ``col.buf`` (16 bytes per row).

    Values ≤ 12 bytes are stored inline in the view (zero padded, as the format requires);
    longer ones as (4-byte prefix, buffer 0, offset). Built as two uint64 words per row.
    """
    n = len(col)
    if len(col.buf) >= 2**31:
        raise ValueError("a decode buffer must be smaller than 2 GiB (string_view offsets)")
    lengths = col.lengths
    window = col.window(PREFIX_BYTES)
    # Value bytes 0–3 and 4–11 as integers; the walk lays its records out so that both
    # views are aligned (other windows get numpy's unaligned path).
    head = window[:, 0:4].view("<u4").reshape(n)
    tail = window[:, 4:12].view("<u8").reshape(n)
    views = np.empty((n, 2), dtype=np.uint64)
    halves = views.view(np.uint32)
    halves[:, 0] = lengths
    halves[:, 1] = head & _MASK32.take(np.minimum(lengths, 4))
    views[:, 1] = np.where(
        lengths > PREFIX_BYTES,
        col.starts.astype(np.uint64) << np.uint64(32),  # buffer 0, offset = start
        tail & _MASK64.take(np.clip(lengths - 4, 0, 8)),
    )
    return pa.Array.from_buffers(
        pa.string_view(), n, [_validity(col.valid), pa.py_buffer(views), pa.py_buffer(col.buf)]
    )


def _slots(col: TextColumn, valid: bool) -> pa.Array | None:
    """``col.buf`` described as a ``string`` array of 2n slots: value i, then the gap to
    value i+1 (null when ``valid``, else no validity). None unless the values lie in buffer
    order — the usual case, messages in stream order — as offsets must not decrease."""
    n = len(col)
    if n == 0 or len(col.buf) >= 2**31:
        return None
    bounds = np.empty(2 * n + 1, dtype=np.int32)
    # A null's start may point past the buffer end (it has length 0 there): clip it.
    starts = np.minimum(col.starts, len(col.buf))
    bounds[0 : 2 * n : 2] = starts
    bounds[1 : 2 * n : 2] = starts + col.lengths
    bounds[2 * n] = bounds[2 * n - 1]
    if not (np.diff(bounds) >= 0).all():
        return None
    validity = None
    if valid:
        pairs = np.zeros((n, 2), dtype=np.bool_)
        pairs[:, 0] = col.valid
        validity = pa.py_buffer(np.packbits(pairs.reshape(-1), bitorder="little"))
    return pa.Array.from_buffers(pa.string(), 2 * n, [validity, pa.py_buffer(bounds),
                                                       pa.py_buffer(col.buf)])


def string_array(col: TextColumn) -> pa.Array:
    """The column as an Arrow ``string`` array (values copied out of ``col.buf``).

    One Arrow ``take`` of the even :func:`_slots` copies the values out: ~40% faster than
    building a string_view and casting it, which remains the way for unordered values.
    """
    slots = _slots(col, valid=False)
    if slots is None:
        return string_view(col).cast(pa.string())
    n = len(col)
    values = slots.take(pa.array(np.arange(0, 2 * n, 2, dtype=np.int32)))
    return pa.Array.from_buffers(pa.string(), n, [_validity(col.valid), *values.buffers()[1:]])


_ITEM_DTYPES: dict[int, np.dtype[Any]] = {
    1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32),
    8: np.dtype(np.uint64), 16: np.dtype("V16"),
}


def parse_text(col: TextColumn, target: pa.DataType) -> pa.Array:
    """Arrow's own parser (``cast`` from string) over the column, for fixed-width types.

    Casts the :func:`_slots` array in place — the gaps are nulls, which Arrow skips — and
    keeps every other result: no string is copied. Raises ``ArrowInvalid`` like ``cast``.
    """
    slots = _slots(col, valid=True)
    if slots is None:
        return string_array(col).cast(target)
    parsed = slots.cast(target)
    # Every other item; as whole items of the target's width (a (n, 2, width) byte copy
    # measured 5–20x slower).
    item = _ITEM_DTYPES[target.bit_width // 8]
    values = np.frombuffer(parsed.buffers()[1], dtype=item)[0 : 2 * len(col) : 2].copy()
    return pa.Array.from_buffers(target, len(col), [_validity(col.valid),
                                                    pa.py_buffer(values)])


# --- casts -----------------------------------------------------------------------------------
def cast_text(col: TextColumn, plan: TypePlan, stats: DecodeStats | None = None,
              column: str = "?") -> pa.Array:
    """Cast a column of PostgreSQL text values to ``plan.arrow_type``, vectorized."""
    caster = _CASTERS[plan.kind]
    return caster(col, plan, stats if stats is not None else DecodeStats(), column)


def _find_bad_rows(array: pa.Array, check: Callable[[pa.Array], object]) -> I64:
    """Indices of the rows on which ``check`` raises ``ArrowInvalid``, by bisection.

    The last resort when a cast fails for a reason the specific fallbacks do not know:
    ``k`` bad rows cost ``O(k log n)`` checks on shrinking slices (no per-row loop unless
    nearly every row is bad, which only a corrupt stream produces).
    """
    bad: list[int] = []
    stack = [(0, len(array))]
    while stack:
        lo, hi = stack.pop()
        try:
            check(array.slice(lo, hi - lo))
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        if hi - lo == 1:
            bad.append(lo)
        else:
            mid = (lo + hi) // 2
            stack.extend(((mid, hi), (lo, mid)))
    return np.array(sorted(bad), dtype=np.int64)


def _robust(col: TextColumn, convert: Callable[[TextColumn], pa.Array],
            stats: DecodeStats, column: str, reason: str = "unparsable") -> pa.Array:
    """``convert(col)``; rows it cannot convert become nulls, counted under ``reason``."""
    try:
        return convert(col)
    except pa.ArrowInvalid:
        pass
    views = string_view(col)
    bad_index = _find_bad_rows(views, lambda part: convert(_column_of(part)))
    bad = np.zeros(len(col), dtype=np.bool_)
    bad[bad_index] = True
    stats.add(column, reason, len(bad_index))
    return convert(col.without(bad))


def _column_of(views: pa.Array) -> TextColumn:
    """A TextColumn over a (sliced) string_view array's values, for bisection checks."""
    binary = views.cast(pa.large_binary())
    offsets = np.frombuffer(binary.buffers()[1], dtype=np.int64)[
        binary.offset : binary.offset + len(binary) + 1]
    data_buf = binary.buffers()[2]
    buf = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
           else np.zeros(0, dtype=np.uint8))
    valid = np.asarray(binary.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)
    lengths = np.where(valid, np.diff(offsets), 0).astype(np.int32)
    return TextColumn(buf, offsets[:-1].copy(), lengths, valid)


def _cast_string(col: TextColumn, plan: TypePlan, stats: DecodeStats, column: str) -> pa.Array:
    def convert(c: TextColumn) -> pa.Array:
        out = string_array(c)
        # Values are copied unchecked; a non-UTF-8 database could hand us invalid bytes,
        # which would crash a later consumer (polars, the JSON writer). Check once here.
        out.validate(full=True)
        return out

    return _robust(col, convert, stats, column, "invalid_utf8")


def _cast_via_arrow(col: TextColumn, plan: TypePlan, stats: DecodeStats,
                    column: str) -> pa.Array:
    target = plan.arrow_type
    return _robust(col, lambda c: parse_text(c, target), stats, column)


#: Up to this precision a decimal travels exactly through float64: the unscaled value v has
#: |v| < 10¹⁵ < 2⁵⁰, the correctly rounded parse and the product by 10ˢ each add at most
#: half an ulp, so the relative error stays below 2⁻⁵², an absolute error below 0.25, and
#: rint() recovers v exactly. (PostgreSQL prints exactly s fraction digits for numeric(p,s).)
_FLOAT_EXACT_PRECISION = 15


def _cast_decimal(col: TextColumn, plan: TypePlan, stats: DecodeStats, column: str) -> pa.Array:
    target = plan.arrow_type
    n = len(col)
    if target.precision <= _FLOAT_EXACT_PRECISION:
        try:
            # Arrow's decimal parser costs ~3x its float parser; see _FLOAT_EXACT_PRECISION.
            floats = parse_text(col, pa.float64())
        except pa.ArrowInvalid:
            floats = None
        if floats is not None:
            x = np.frombuffer(floats.buffers()[1], dtype=np.float64)[
                floats.offset : floats.offset + n]
            finite = np.isfinite(x)
            valid = col.valid & finite
            if not valid.all():
                # numeric's special values parse as float NaN / ±inf: the defined fallback.
                stats.add(column, "numeric_nan", int((col.valid & np.isnan(x)).sum()))
                stats.add(column, "numeric_infinity", int((col.valid & np.isinf(x)).sum()))
            unscaled = np.rint(np.where(valid, x, 0.0) * 10.0**target.scale).astype(np.int64)
            storage = np.empty((n, 2), dtype=np.int64)
            storage[:, 0] = unscaled
            storage[:, 1] = unscaled >> 63  # sign extension to the 128-bit two's complement
            return pa.Array.from_buffers(target, n, [_validity(valid), pa.py_buffer(storage)])
    try:
        return parse_text(col, target)
    except pa.ArrowInvalid:
        pass
    # numeric's special values are the only texts PostgreSQL prints that are not decimals.
    head = col.window(2)
    nan = col.valid & (col.lengths == 3) & (head[:, 0] == ord("N"))
    inf = col.valid & ((head[:, 0] == ord("I")) | ((head[:, 0] == ord("-")) & (
        head[:, 1] == ord("I"))))
    stats.add(column, "numeric_nan", int(nan.sum()))
    stats.add(column, "numeric_infinity", int(inf.sum()))
    return _robust(col.without(nan | inf), lambda c: parse_text(c, target), stats, column)


def _cast_bool(col: TextColumn, plan: TypePlan, stats: DecodeStats, column: str) -> pa.Array:
    first = col.window(1)[:, 0]
    one = col.lengths == 1
    true = col.valid & one & (first == ord("t"))
    false = col.valid & one & (first == ord("f"))
    valid = true | false
    stats.add(column, "unparsable", int((col.valid & ~valid).sum()))
    values = pa.py_buffer(np.packbits(true, bitorder="little"))
    return pa.Array.from_buffers(pa.bool_(), len(col), [_validity(valid), values])


_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


def _cast_bytea(col: TextColumn, plan: TypePlan, stats: DecodeStats, column: str) -> pa.Array:
    """``\\x0a1b…`` → binary: one gather of all hex digit pairs, one table lookup."""
    n = len(col)
    head = col.window(2)
    lengths = col.lengths.astype(np.int64)
    hexed = col.valid & (lengths >= 2) & (lengths % 2 == 0) & (head[:, 0] == ord("\\")) & (
        head[:, 1] == ord("x"))
    stats.add(column, "bytea_not_hex", int((col.valid & ~hexed).sum()))
    sizes = np.where(hexed, (lengths - 2) // 2, 0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    # Ragged arange: the position of each output byte's first hex digit.
    src = np.repeat(col.starts.astype(np.int64) + 2 - 2 * offsets[:-1], sizes)
    src += 2 * np.arange(total, dtype=np.int64)
    high = _HEX[col.buf[src]]
    low = _HEX[col.buf[src + 1]]
    values = (high << 4) | (low & 0x0F)
    bad_byte = (high | low) == 255
    valid = hexed
    if bad_byte.any():
        bad_rows = np.zeros(n, dtype=np.bool_)
        bad_rows[np.searchsorted(offsets, np.flatnonzero(bad_byte), side="right") - 1] = True
        stats.add(column, "unparsable", int(bad_rows.sum()))
        valid = valid & ~bad_rows
    return pa.Array.from_buffers(pa.binary(), n, [
        _validity(valid), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(values)])


# --- dates and timestamps --------------------------------------------------------------------
def _days_from_civil(year: I64, month: I64, day: I64) -> I64:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = np.where(month > 2, month - 3, month + 9)
    doy = (153 * mp + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    result: I64 = era * 146097 + doe - 719468
    return result


def _digits(window: U8, columns: list[int]) -> tuple[I64, BoolArray]:
    """The decimal number spelled by ``window[:, columns]`` and whether all were digits."""
    d = window[:, columns] - np.uint8(48)  # uint8 wraps non-digits to ≥ 10
    ok: BoolArray = np.all(d < 10, axis=1)
    value = np.zeros(len(window), dtype=np.int64)
    for k in range(len(columns)):
        value = value * 10 + d[:, k]
    return value, ok


_DATETIME_WINDOW = 48
_INFINITY = np.frombuffer(b"-infinity", dtype=np.uint8)
_BC = np.frombuffer(b" BC", dtype=np.uint8)


def _parse_datetimes(col: TextColumn, kind: str, stats: DecodeStats,
                     column: str) -> tuple[I64, BoolArray]:
    """Parse ISO date / timestamp / timestamptz texts, every form PostgreSQL prints.

    ``YYYY-MM-DD[ HH:MM:SS[.ffffff]][±HH[:MM[:SS]]][ BC]`` with 4–7 year digits, and
    ``infinity`` / ``-infinity``. Returns days (date) or µs since the epoch, UTC, and the
    validity. Fixed-position arithmetic over a gathered byte window; rows whose year has more
    than four digits are re-gathered shifted so every field sits at the same column.
    """
    n = len(col)
    length = col.lengths.astype(np.int64)
    g = col.window(_DATETIME_WINDOW)
    valid = col.valid & (length <= _DATETIME_WINDOW)
    pos_inf = valid & (length == 8) & (g[:, :8] == _INFINITY[1:]).all(axis=1)
    neg_inf = valid & (length == 9) & (g[:, :9] == _INFINITY).all(axis=1)
    end_cols = np.clip(length - 3, 0, _DATETIME_WINDOW - 3)[:, None] + np.arange(3)
    bc = valid & (length >= 3) & (np.take_along_axis(g, end_cols, axis=1) == _BC).all(axis=1)
    body = length - 3 * bc
    # Year digits: the first '-' after at least four digits.
    dash = g[:, 4:8] == ord("-")
    shift = np.argmax(dash, axis=1).astype(np.int64)
    ok = valid & dash.any(axis=1) & ~pos_inf & ~neg_inf
    year, year_ok = _digits(g, [0, 1, 2, 3])
    h = g
    if (shifted := np.flatnonzero(ok & (shift > 0))).size:
        h = g.copy()
        h[shifted] = gather_windows(col.buf, col.starts[shifted] + shift[shifted],
                                    _DATETIME_WINDOW)
        low, low_ok = _digits(h[shifted], [0, 1, 2, 3])
        high = np.zeros(len(shifted), dtype=np.int64)
        high_ok = np.ones(len(shifted), dtype=np.bool_)
        gs = g[shifted]
        for k in range(3):  # up to three extra leading year digits (7-digit date years)
            use = shift[shifted] > k
            digit = gs[:, k].astype(np.int64) - 48
            high = np.where(use, high * 10 + digit, high)
            high_ok &= ~use | ((digit >= 0) & (digit <= 9))
        year[shifted] = high * 10**4 + low
        year_ok[shifted] = low_ok & high_ok
    rel_end = body - shift  # the text's end in the aligned window
    month, m_ok = _digits(h, [5, 6])
    day, d_ok = _digits(h, [8, 9])
    ok &= year_ok & m_ok & d_ok & (h[:, 7] == ord("-"))
    ok &= (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31)
    astro_year = np.where(bc, 1 - year, year)
    days = _days_from_civil(astro_year, month, day)
    if kind == "date":
        ok &= rel_end == 10
        out = days
        stats.add(column, "date_infinity", int((pos_inf | neg_inf).sum()))
        out = np.where(pos_inf, _DAYS_9999_12_31, np.where(neg_inf, _DAYS_0000_01_01, out))
        return out, ok | pos_inf | neg_inf
    hour, hh_ok = _digits(h, [11, 12])
    minute, mi_ok = _digits(h, [14, 15])
    second, ss_ok = _digits(h, [17, 18])
    ok &= hh_ok & mi_ok & ss_ok & (h[:, 10] == ord(" ")) & (h[:, 13] == ord(":")) & (
        h[:, 16] == ord(":")) & (hour <= 23) & (minute <= 59) & (second <= 60)
    # Fraction: '.' then 1–6 digits (PostgreSQL drops trailing zeros).
    frac_digit = (h[:, 20:26] - np.uint8(48)) < 10
    # The window runs past the value: a '.' beyond its end belongs to the next bytes.
    has_dot = (h[:, 19] == ord(".")) & (rel_end > 19)
    frac_len = np.where(has_dot, np.cumprod(frac_digit, axis=1).sum(axis=1), 0)
    frac_len = np.minimum(frac_len, np.maximum(rel_end - 20, 0))
    ok &= ~has_dot | (frac_len > 0)
    micro = np.zeros(n, dtype=np.int64)
    for k in range(6):
        digit = h[:, 20 + k].astype(np.int64) - 48
        micro += np.where(k < frac_len, digit * 10 ** (5 - k), 0)
    tz_at = 19 + np.where(frac_len > 0, frac_len + 1, 0)
    offset_s = np.zeros(n, dtype=np.int64)
    if kind == "timestamptz":
        tz_len = rel_end - tz_at
        tz = np.take_along_axis(h, np.minimum(tz_at[:, None] + np.arange(9),
                                              _DATETIME_WINDOW - 1), axis=1)
        sign = np.where(tz[:, 0] == ord("-"), -1, 1)
        ok &= (tz[:, 0] == ord("+")) | (tz[:, 0] == ord("-"))
        ok &= (tz_len == 3) | (tz_len == 6) | (tz_len == 9)
        tz_h, tzh_ok = _digits(tz, [1, 2])
        tz_m, tzm_ok = _digits(tz, [4, 5])
        tz_s, tzs_ok = _digits(tz, [7, 8])
        has_m = tz_len >= 6
        has_s = tz_len >= 9
        ok &= tzh_ok & (~has_m | (tzm_ok & (tz[:, 3] == ord(":"))))
        ok &= ~has_s | (tzs_ok & (tz[:, 6] == ord(":")))
        offset_s = sign * (tz_h * 3600 + np.where(has_m, tz_m * 60, 0) + np.where(has_s, tz_s, 0))
    else:
        ok &= rel_end == tz_at
    # µs = days·86400e6 + rest must fit int64. |days| ≤ _MAX_DAYS keeps the first term in
    # range; the sum can then still overflow only on the boundary day, checked exactly.
    in_range = np.abs(days) <= _MAX_DAYS
    rest = ((hour * 60 + minute) * 60 + second - offset_s) * 1_000_000 + micro
    base = np.where(in_range, days, 0) * _US_PER_DAY
    in_range &= (base <= _I64_MAX - np.maximum(rest, 0)) & (
        base >= _I64_MIN - np.minimum(rest, 0))
    out = np.where(in_range, base + rest, 0)
    too_late = ok & ~in_range & (days > 0)
    too_early = ok & ~in_range & (days < 0)
    # PostgreSQL's own range starts at 4714 BC, well inside int64 µs; only the far future can
    # overflow. Clamp like +infinity rather than wrap around.
    stats.add(column, "timestamp_out_of_range", int((too_late | too_early).sum()))
    stats.add(column, "timestamp_infinity", int((pos_inf | neg_inf).sum()))
    out = np.where(pos_inf | too_late, _US_MAX, out)
    out = np.where(neg_inf | too_early, _US_MIN, out)
    return out, ok | pos_inf | neg_inf


def _cast_datetime(col: TextColumn, plan: TypePlan, stats: DecodeStats,
                   column: str) -> pa.Array:
    target = plan.arrow_type
    try:
        # Fast path: Arrow's ISO-8601 parser. It rejects BC, ±infinity, 5+ digit years and
        # second-resolution zone offsets; those batches take the numpy parser, which
        # handles every form PostgreSQL prints.
        return parse_text(col, target)
    except pa.ArrowInvalid:
        pass
    values, ok = _parse_datetimes(col, plan.kind, stats, column)
    stats.add(column, "unparsable", int((col.valid & ~ok).sum()))
    storage = values.astype(np.int32 if plan.kind == "date" else np.int64)
    return pa.Array.from_buffers(target, len(col), [_validity(ok), pa.py_buffer(storage)])


# --- arrays ----------------------------------------------------------------------------------
_PAD = 64  # zero bytes after a compacted element buffer, so windows never run off its end


def _cast_list(col: TextColumn, plan: TypePlan, stats: DecodeStats, column: str) -> pa.Array:
    """Array literals → list<element>, parsed with whole-column byte operations.

    All array texts of the column are gathered into one byte vector; escapes (``\\x``) and
    quoting are resolved with prefix sums, structural ``{`` ``}`` and delimiters found, and
    element spans between them unescaped by one boolean compress. The elements then form a
    new :class:`TextColumn` cast with the element's plan. No per-row or per-element Python.
    """
    assert plan.element is not None
    n = len(col)
    valid = col.valid
    lengths = np.where(valid, col.lengths, 0).astype(np.int64)
    row_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_start[1:])
    total = int(row_start[-1])
    if total == 0:  # every valid literal is at least "{}", so: no valid rows
        return pa.nulls(n, plan.arrow_type)
    index = np.arange(total, dtype=np.int64)
    b = col.buf[np.repeat(col.starts.astype(np.int64) - row_start[:-1], lengths) + index]
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    first_byte = row_start[:-1]
    last_byte = row_start[1:] - 1

    backslash = b == ord("\\")
    # escaped[j]: an odd run of backslashes ends right before j.
    last_plain = np.maximum.accumulate(np.where(backslash, -1, index))
    run_before = np.zeros(total, dtype=np.int64)
    run_before[1:] = index[:-1] - last_plain[:-1]
    escaped = (run_before & 1).astype(np.bool_)
    quote = (b == ord('"')) & ~escaped
    # Quote parity counted per row, so a malformed row cannot flip the rows after it.
    quotes_seen = np.cumsum(quote, dtype=np.int64)
    quotes_before_row = (quotes_seen - quote)[np.minimum(first_byte, total - 1)]
    inside = ((quotes_seen - quote - np.repeat(quotes_before_row, lengths)) & 1).astype(
        np.bool_)
    plain = ~inside & ~escaped
    open_ = (b == ord("{")) & plain
    close = (b == ord("}")) & plain
    structural = np.flatnonzero(open_ | close | ((b == plan.delimiter) & plain))

    # Row checks: starts with '{' or a '[lo:hi]=' decoration, braces and quotes balanced.
    depth = np.cumsum(open_.astype(np.int64) - close)
    depth_before_row = (depth - open_ + close)[np.minimum(first_byte, total - 1)]
    head = b[np.minimum(first_byte, total - 1)]
    row_quotes = np.bincount(row[quote], minlength=n)
    row_ok = valid & ((head == ord("{")) | (head == ord("["))) & (row_quotes % 2 == 0)
    row_ok &= depth[np.maximum(last_byte, 0)] == depth_before_row
    max_depth = np.zeros(n, dtype=np.int64)
    np.maximum.at(max_depth, row[structural],
                  depth[structural] - depth_before_row[row[structural]])
    stats.add(column, "unparsable", int((valid & ~row_ok).sum()))
    stats.add(column, "array_flattened", int((row_ok & (max_depth > 1)).sum()))
    # PostgreSQL prints '[lo:hi]=' only for a lower bound other than 1: a list starts at 1.
    stats.add(column, "array_lower_bound", int((row_ok & (head == ord("["))).sum()))

    # Element spans: non-empty gaps between consecutive structural bytes of one row that
    # follow '{' or a delimiter and end at '}' or a delimiter.
    a = structural[:-1] + 1
    e = structural[1:]
    span = (e > a) & (row[structural[:-1]] == row[e]) & ~close[structural[:-1]] & ~open_[e]
    a, e = a[span], e[span]
    elem_row = row[a]
    span_ok = row_ok[elem_row]
    a, e, elem_row = a[span_ok], e[span_ok], elem_row[span_ok]

    quoted = b[a] == ord('"')
    is_null = ~quoted & (e - a == 4)
    for k, ch in enumerate(b"NULL"):
        is_null &= b[np.minimum(a + k, total - 1)] == ch
    marks = np.zeros(total + 1, dtype=np.int8)
    marks[a] = 1
    marks[e] = -1
    in_span = np.cumsum(marks[:-1], dtype=np.int8).astype(np.bool_)
    # Keep element bytes minus the quotes around them and the backslashes that escape.
    keep = in_span & ~quote & ~(backslash & ~escaped)
    kept_before = np.zeros(total + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    kept = int(kept_before[-1])
    content = np.zeros(kept + _PAD, dtype=np.uint8)
    content[:kept] = b[keep]
    elem_start = kept_before[a]
    elem_len = np.where(is_null, 0, kept_before[e] - elem_start).astype(np.int32)
    elements = TextColumn(content, elem_start, elem_len, ~is_null)
    values = cast_text(elements, plan.element, stats, f"{column}[]")

    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(elem_row, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values,
                                    type=plan.arrow_type,
                                    mask=None if row_ok.all() else pa.array(~row_ok))


_CASTERS: dict[str, Callable[[TextColumn, TypePlan, DecodeStats, str], pa.Array]] = {
    "string": _cast_string,
    "bool": _cast_bool,
    "int": _cast_via_arrow,
    "float": _cast_via_arrow,
    "decimal": _cast_decimal,
    "binary": _cast_bytea,
    "date": _cast_datetime,
    "timestamp": _cast_datetime,
    "timestamptz": _cast_datetime,
    "list": _cast_list,
}
