"""Test support for the columnar decoder: a pgoutput encoder and a row-at-a-time reference.

The reference decoder is deliberately plain: ``struct`` over one message at a time, Python
parsing of every value text, no numpy. The vectorized decoder must agree with it exactly.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.source.types import TypePlan, TypeRegistry, resolve

# A field of a tuple: ("t", b"text"), ("n", None) or ("u", None).
Field = tuple[str, bytes | None]


# --- encoder ---------------------------------------------------------------------------------
def t(value: str | bytes) -> Field:
    return ("t", value.encode() if isinstance(value, str) else value)


NULL: Field = ("n", None)
UNCHANGED: Field = ("u", None)


def encode_tuple(fields: Sequence[Field]) -> bytes:
    parts = [struct.pack(">h", len(fields))]
    for kind, value in fields:
        if kind == "t":
            assert value is not None
            parts.append(b"t" + struct.pack(">i", len(value)) + value)
        else:
            parts.append(kind.encode())
    return b"".join(parts)


def encode_insert(oid: int, new: Sequence[Field]) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + encode_tuple(new)


def encode_update(oid: int, new: Sequence[Field], old: Sequence[Field] | None = None,
                  old_kind: str = "K") -> bytes:
    head = b"U" + struct.pack(">I", oid)
    if old is not None:
        head += old_kind.encode() + encode_tuple(old)
    return head + b"N" + encode_tuple(new)


def encode_delete(oid: int, old: Sequence[Field], old_kind: str = "K") -> bytes:
    return b"D" + struct.pack(">I", oid) + old_kind.encode() + encode_tuple(old)


def build_buffer(messages: Sequence[bytes], gaps: Sequence[bytes] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate messages (optionally with junk before each) → (data, starts)."""
    parts: list[bytes] = []
    starts: list[int] = []
    pos = 0
    for i, message in enumerate(messages):
        if gaps is not None:
            parts.append(gaps[i])
            pos += len(gaps[i])
        starts.append(pos)
        parts.append(message)
        pos += len(message)
    data = np.frombuffer(b"".join(parts), dtype=np.uint8)
    return data, np.array(starts, dtype=np.int64)


def relation(columns: Sequence[tuple[str, int, int]], oid: int = 16384,
             key: Sequence[str] = ("id",), identity: str = "d") -> Relation:
    return Relation(
        oid=oid, namespace="public", name="t", replica_identity=identity,
        columns=tuple(RelationColumn(name, type_oid, typmod, identity == "f" or name in key)
                      for name, type_oid, typmod in columns),
    )


# --- reference decoder -----------------------------------------------------------------------
def parse_tuple(msg: bytes, pos: int) -> tuple[list[Field], int]:
    (ncols,) = struct.unpack_from(">h", msg, pos)
    pos += 2
    fields: list[Field] = []
    for _ in range(ncols):
        kind = chr(msg[pos])
        pos += 1
        if kind == "t":
            (length,) = struct.unpack_from(">i", msg, pos)
            pos += 4
            fields.append(("t", msg[pos : pos + length]))
            pos += length
        else:
            fields.append((kind, None))
    return fields, pos


@dataclass
class RefRow:
    op: int
    values: list[Any]
    unchanged: int
    old_keys: list[Any]


def parse_change(msg: bytes) -> tuple[str, list[Field] | None, str | None, list[Field] | None]:
    """(type, new tuple, old marker, old tuple) of one I/U/D message."""
    kind = chr(msg[0])
    pos = 5
    old = new = None
    old_marker = None
    if kind in "UD" and chr(msg[pos]) in "KO":
        old_marker = chr(msg[pos])
        old, pos = parse_tuple(msg, pos + 1)
    if kind in "IU":
        assert chr(msg[pos]) == "N"
        new, pos = parse_tuple(msg, pos + 1)
    return kind, new, old_marker, old


def reference_rows(rel: Relation, key_columns: Sequence[str], data: bytes,
                   starts: Sequence[int], registry: TypeRegistry | None = None,
                   lenient: bool = False) -> list[RefRow]:
    """Decode row by row. ``lenient``: a value text that does not parse reads as null."""
    value_of = _lenient_value if lenient else ref_value
    plans = [resolve(c.type_oid, c.type_modifier, registry) for c in rel.columns]
    names = [c.name for c in rel.columns]
    rows: list[RefRow] = []
    for start in starts:
        kind, new, marker, old = parse_change(bytes(data[start:]))
        source = new if kind in "IU" else old
        assert source is not None
        fields = list(source)
        if kind == "U" and marker == "O" and old is not None:
            # An old NULL never fills: an unchanged TOASTed value is not NULL (a partition
            # narrower than its FULL root sends NULL for every non-key column).
            fields = [o if f[0] == "u" and o[0] in "tb" else f for f, o in zip(source, old,
                                                                              strict=True)]
        unchanged = sum(1 << i for i, f in enumerate(fields) if f[0] == "u")
        values = [value_of(f, plan) for f, plan in zip(fields, plans, strict=True)]
        old_keys = []
        for key in key_columns:
            i = names.index(key)
            old_keys.append(value_of(old[i], plans[i]) if kind == "U" and old else None)
        rows.append(RefRow({"I": 0, "U": 1, "D": 2}[kind], values, unchanged, old_keys))
    return rows


def _lenient_value(f: Field, plan: TypePlan) -> Any:
    try:
        return ref_value(f, plan)
    except (AssertionError, ValueError, IndexError, KeyError, ArithmeticError):
        return None


def ref_value(f: Field, plan: TypePlan) -> Any:
    if f[0] != "t":
        return None
    assert f[1] is not None
    return ref_parse(f[1].decode(), plan)


DAY_US = 86_400_000_000
US_MAX = (2932896 + 1) * DAY_US - 1  # 9999-12-31 23:59:59.999999
US_MIN = -719528 * DAY_US  # 0000-01-01


def ref_days(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01, proleptic Gregorian, any astronomical year (400-year cycles)."""
    shift = 0
    while year < 1:
        year += 400
        shift -= 146097
    while year > 9999:
        year -= 400
        shift += 146097
    return dt.date(year, month, day).toordinal() - dt.date(1970, 1, 1).toordinal() + shift


_DATE_RE = re.compile(r"^(\d{4,7})-(\d\d)-(\d\d)( BC)?$")
_TS_RE = re.compile(
    r"^(\d{4,6})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
    r"(?:([+-])(\d\d)(?::(\d\d))?(?::(\d\d))?)?( BC)?$")


def ref_parse(text: str, plan: TypePlan) -> Any:
    """A PostgreSQL text value → the Python value the decoder's Arrow array must hold.

    Dates and timestamps are compared as their storage integers (days / µs since epoch).
    """
    kind = plan.kind
    if kind == "bool":
        return {"t": True, "f": False}[text]
    if kind == "int":
        return int(text)
    if kind == "float":
        value = float(text)
        return float(np.float32(value)) if plan.arrow_type == pa.float32() else value
    if kind == "decimal":
        if text in ("NaN", "Infinity", "-Infinity"):
            return None
        return Decimal(text)
    if kind == "string":
        return text
    if kind == "binary":
        assert text.startswith("\\x")
        return bytes.fromhex(text[2:])
    if kind == "date":
        if text in ("infinity", "-infinity"):
            return 2932896 if text == "infinity" else -719528
        m = _DATE_RE.match(text)
        assert m, text
        year = int(m[1])
        return ref_days(1 - year if m[4] else year, int(m[2]), int(m[3]))
    if kind in ("timestamp", "timestamptz"):
        if text in ("infinity", "-infinity"):
            return US_MAX if text == "infinity" else US_MIN
        m = _TS_RE.match(text)
        assert m, text
        year = int(m[1])
        days = ref_days(1 - year if m[12] else year, int(m[2]), int(m[3]))
        micro = int((m[7] or "").ljust(6, "0"))
        offset = 0
        if m[8]:
            offset = int(m[9]) * 3600 + int(m[10] or 0) * 60 + int(m[11] or 0)
            offset = -offset if m[8] == "-" else offset
        us = (days * 86400 + int(m[4]) * 3600 + int(m[5]) * 60 + int(m[6]) - offset) \
            * 1_000_000 + micro
        if us > 2**63 - 1:
            return US_MAX
        if us < -(2**63):
            return US_MIN
        return us
    if kind == "list":
        assert plan.element is not None
        items, _ = ref_parse_array(text, chr(plan.delimiter))
        return [None if item is None else ref_parse(item, plan.element) for item in items]
    raise AssertionError(kind)


def ref_parse_array(text: str, delim: str = ",") -> tuple[list[str | None], int]:
    """A PostgreSQL array literal → (flat element texts, number of dimensions)."""
    i = text.index("=") + 1 if text.startswith("[") else 0
    items: list[str | None] = []
    depth = max_depth = 0
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
            max_depth = max(max_depth, depth)
            i += 1
        elif ch == "}":
            depth -= 1
            i += 1
        elif ch == delim:
            i += 1
        elif ch == '"':
            i += 1
            chars = []
            while text[i] != '"':
                if text[i] == "\\":
                    i += 1
                chars.append(text[i])
                i += 1
            i += 1
            items.append("".join(chars))
        else:
            j = i
            while text[j] not in (delim, "}"):
                j += 1
            token = text[i:j]
            items.append(None if token == "NULL" else token)
            i = j
    return items, max_depth


# --- comparing -------------------------------------------------------------------------------
def storage(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    """Values as Python objects, temporal types as their storage integers."""
    return _as_storage(array).to_pylist()


def _as_storage(array: Any) -> Any:
    typ = array.type
    if pa.types.is_date32(typ):
        return array.cast(pa.int32())
    if pa.types.is_timestamp(typ):
        return array.cast(pa.int64())
    if pa.types.is_list(typ):
        inner = _as_storage(array.flatten() if isinstance(array, pa.ChunkedArray) else
                            array.values)
        if inner.type == typ.value_type:
            return array
        return array.cast(pa.list_(inner.type))
    return array


def same(a: Any, b: Any) -> bool:
    """Equality with NaN == NaN and float32 tolerance-free comparison."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b) if a is not None and b is not None else a is b


def assert_matches_reference(batch: pa.RecordBatch, rel: Relation, key_columns: Sequence[str],
                             data: np.ndarray, starts: np.ndarray, lsns: np.ndarray,
                             registry: TypeRegistry | None = None, lenient: bool = False,
                             ) -> None:
    rows = reference_rows(rel, key_columns, data.tobytes(), starts.tolist(), registry,
                          lenient)
    n = len(rows)
    assert batch.num_rows == n
    for i, col in enumerate(rel.columns):
        got = storage(batch.column(i))
        want = [r.values[i] for r in rows]
        for r in range(n):
            assert same(got[r], want[r]), (col.name, r, got[r], want[r])
    assert batch.column("__dbmazz_op").to_pylist() == [r.op for r in rows]
    assert batch.column("__dbmazz_lsn").to_pylist() == lsns.tolist()
    assert batch.column("__dbmazz_seq").to_pylist() == list(range(n))
    from dbmazz.source.columnar import unchanged_mask

    for i in range(len(rel.columns)):
        mask = unchanged_mask(batch, i).tolist()
        assert mask == [bool(r.unchanged >> i & 1) for r in rows], (i, mask)
    for k, key in enumerate(key_columns):
        got = storage(batch.column(f"__dbmazz_old_{key}"))
        want = [r.old_keys[k] for r in rows]
        assert all(same(x, y) for x, y in zip(got, want, strict=True)), (key, got, want)
