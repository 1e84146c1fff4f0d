"""Property tests: the vectorized decoder equals the row-at-a-time reference decoder.

Hypothesis generates relations (any mix of supported types, up to 80 columns), change
streams (inserts, updates with/without K or O old tuples, deletes; nulls, unchanged TOAST
markers, empty strings, multibyte UTF-8, special values) and encodes them as pgoutput bytes
with junk between messages; both decoders read the same bytes.
"""

from __future__ import annotations

import datetime as dt
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbmazz.source import columnar
from dbmazz.source import types as T
from dbmazz.source.columnar import decode_changes
from dbmazz.source.pgoutput import Relation, RelationColumn
from tests.columnar_helpers import (
    NULL,
    UNCHANGED,
    Field,
    assert_matches_reference,
    build_buffer,
    encode_delete,
    encode_insert,
    encode_update,
    t,
)

OID = 24601


def numeric_typmod(precision: int, scale: int) -> int:
    return ((precision << 16) | (scale & 0x7FF)) + 4


# --- value texts, as PostgreSQL prints them --------------------------------------------------
def float_text(x: float) -> str:
    if x != x:
        return "NaN"
    if x in (float("inf"), float("-inf")):
        return "Infinity" if x > 0 else "-Infinity"
    return repr(x)


def numeric_text(precision: int, scale: int) -> st.SearchStrategy[str]:
    bound = 10**precision - 1

    def fmt(v: int) -> str:
        sign = "-" if v < 0 else ""
        digits = str(abs(v)).rjust(scale + 1, "0")
        if scale == 0:
            return sign + digits
        return f"{sign}{digits[:-scale]}.{digits[-scale:]}"

    return st.one_of(st.integers(-bound, bound).map(fmt), st.just("NaN"))


_SPECIAL_YEARS = st.sampled_from([1, 2, 1969, 1970, 1999, 2000, 2024, 9999, 10000, 294276])
_YEARS = st.one_of(st.integers(1, 9999), st.integers(10000, 300000), _SPECIAL_YEARS)


@st.composite
def date_text(draw: st.DrawFn, max_year: int = 5874897) -> str:
    if draw(st.integers(0, 15)) == 0:
        return draw(st.sampled_from(["infinity", "-infinity"]))
    bc = draw(st.integers(0, 6)) == 0
    year = draw(st.one_of(st.integers(1, 4713), st.sampled_from([1, 2, 44, 4713]))) if bc \
        else draw(st.one_of(_YEARS, st.integers(1, max_year)))
    year = min(year, max_year)
    day = draw(st.integers(1, 31))
    month = draw(st.integers(1, 12))
    try:  # validity of the day in its month (leap years of the astronomical year)
        dt.date(2000 + ((1 - year if bc else year) % 400), month, day)
    except ValueError:
        day = 28
    return f"{year:04d}-{month:02d}-{day:02d}" + (" BC" if bc else "")


@st.composite
def timestamp_text(draw: st.DrawFn, with_zone: bool) -> str:
    date = draw(date_text(max_year=294276))
    if "infinity" in date:
        return date
    body, bc = (date[:-3], " BC") if date.endswith(" BC") else (date, "")
    h, m, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    text = f"{body} {h:02d}:{m:02d}:{s:02d}"
    micro = draw(st.one_of(st.just(0), st.integers(0, 999999)))
    if micro:
        text += f".{micro:06d}".rstrip("0")
    if with_zone:
        text += draw(st.sampled_from(["+00", "+00", "+05:30", "-03", "+05:30:17", "-09:59:59",
                                      "+14"]))
    return text + bc


def pg_text() -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   max_size=40)


def quote_element(text: str, delimiter: str) -> str:
    if (text == "" or text.upper() == "NULL" or any(c in text for c in '{}"\\' + delimiter)
            or any(c in text for c in " \t\n\r\v\f")):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


@st.composite
def array_text(draw: st.DrawFn, element: st.SearchStrategy[str], delimiter: str = ",") -> str:
    item = st.one_of(st.none(), element)
    shape = draw(st.integers(0, 8))
    if shape == 0:  # two-dimensional: flattened by the decoder
        rows, cols = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        inner = [delimiter.join("NULL" if v is None else quote_element(v, delimiter)
                                for v in draw(st.lists(item, min_size=cols, max_size=cols)))
                 for _ in range(rows)]
        return "{" + delimiter.join("{" + r + "}" for r in inner) + "}"
    values = draw(st.lists(item, max_size=6))
    body = "{" + delimiter.join("NULL" if v is None else quote_element(v, delimiter)
                                for v in values) + "}"
    if shape == 1 and values:
        body = f"[0:{len(values) - 1}]={body}"
    return body


SCALARS: dict[tuple[int, int], st.SearchStrategy[str]] = {
    (T.BOOL, -1): st.sampled_from(["t", "f"]),
    (T.INT2, -1): st.integers(-(2**15), 2**15 - 1).map(str),
    (T.INT4, -1): st.integers(-(2**31), 2**31 - 1).map(str),
    (T.INT8, -1): st.integers(-(2**63), 2**63 - 1).map(str),
    (T.OID, -1): st.integers(0, 2**32 - 1).map(str),
    (T.FLOAT4, -1): st.floats(width=32).map(float_text),
    (T.FLOAT8, -1): st.floats().map(float_text),
    (T.NUMERIC, numeric_typmod(12, 2)): numeric_text(12, 2),
    (T.NUMERIC, numeric_typmod(15, 5)): numeric_text(15, 5),
    (T.NUMERIC, numeric_typmod(5, 5)): numeric_text(5, 5),
    (T.NUMERIC, numeric_typmod(38, 10)): numeric_text(38, 10),
    (T.NUMERIC, numeric_typmod(18, 0)): numeric_text(18, 0),
    (T.NUMERIC, -1): st.one_of(st.decimals(allow_nan=False, allow_infinity=False).map(
        lambda d: format(d, "f")), st.sampled_from(["NaN", "Infinity", "-Infinity"])),
    (T.TEXT, -1): pg_text(),
    (T.VARCHAR, 14): pg_text(),
    (T.BPCHAR, 9): pg_text().map(lambda s: s.ljust(5)),
    (T.JSONB, -1): st.builds(lambda k, v: f'{{"{k}": {v}}}', st.text("abc", max_size=3),
                             st.integers()),
    (T.UUID, -1): st.uuids().map(str),
    (T.INTERVAL, -1): st.sampled_from(["00:00:00", "1 year 2 mons 3 days 04:05:06.5",
                                       "-1 days +02:00:00"]),
    (T.BYTEA, -1): st.binary(max_size=30).map(lambda b: "\\x" + b.hex()),
    (T.DATE, -1): date_text(),
    (T.TIMESTAMP, -1): timestamp_text(False),
    (T.TIMESTAMPTZ, -1): timestamp_text(True),
}
ARRAYS: dict[tuple[int, int], st.SearchStrategy[str]] = {
    (1000, -1): array_text(SCALARS[(T.BOOL, -1)]),
    (1007, -1): array_text(SCALARS[(T.INT4, -1)]),
    (1016, -1): array_text(SCALARS[(T.INT8, -1)]),
    (1009, -1): array_text(pg_text()),
    (1022, -1): array_text(SCALARS[(T.FLOAT8, -1)]),
    (1231, numeric_typmod(12, 2)): array_text(numeric_text(12, 2)),
    (1182, -1): array_text(date_text()),
    (1185, -1): array_text(timestamp_text(True)),
    (1001, -1): array_text(SCALARS[(T.BYTEA, -1)]),
    (1020, -1): array_text(st.sampled_from(["(1,1),(0,0)", "(2.5,3),(1,-1)"]), ";"),
}
ALL_TYPES = {**SCALARS, **ARRAYS}
TYPE_KEYS = sorted(ALL_TYPES)


@st.composite
def relations(draw: st.DrawFn) -> tuple[Relation, list[str]]:
    width = draw(st.one_of(st.integers(1, 8), st.integers(60, 80)))
    types = [draw(st.sampled_from(TYPE_KEYS)) for _ in range(width)]
    identity = draw(st.sampled_from(["d", "f"]))
    nkeys = draw(st.integers(0, min(2, width)))
    keys = [f"c{i}" for i in range(nkeys)]
    cols = tuple(RelationColumn(f"c{i}", oid, typmod, identity == "f" or f"c{i}" in keys)
                 for i, (oid, typmod) in enumerate(types))
    return Relation(OID, "public", "prop", identity, cols), keys


@st.composite
def tuples(draw: st.DrawFn, rel: Relation, allow_unchanged: bool) -> list[Field]:
    fields: list[Field] = []
    for col in rel.columns:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            fields.append(NULL)
        elif roll == 1 and allow_unchanged:
            fields.append(UNCHANGED)
        else:
            fields.append(t(draw(ALL_TYPES[(col.type_oid, col.type_modifier)])))
    return fields


@st.composite
def streams(draw: st.DrawFn) -> tuple[Relation, list[str], list[bytes], list[bytes]]:
    rel, keys = draw(relations())
    messages: list[bytes] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from("IIUUUD"))
        if kind == "I":
            messages.append(encode_insert(OID, draw(tuples(rel, False))))
        elif kind == "U":
            old_kind = draw(st.sampled_from(["", "K", "O"]))
            old = draw(tuples(rel, False)) if old_kind else None
            messages.append(encode_update(OID, draw(tuples(rel, True)), old, old_kind or "K"))
        else:
            messages.append(encode_delete(OID, draw(tuples(rel, False)),
                                          draw(st.sampled_from("KO"))))
    gaps = [draw(st.binary(max_size=3)) for _ in messages]
    return rel, keys, messages, gaps


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(streams())
def test_vectorized_equals_reference(stream: tuple[Relation, list[str], list[bytes],
                                                   list[bytes]]) -> None:
    rel, keys, messages, gaps = stream
    data, starts = build_buffer(messages, gaps)
    lsns = np.arange(len(messages), dtype=np.uint64) * 7 + 2**40
    batch = decode_changes(rel, keys, data, starts, lsns)
    assert_matches_reference(batch, rel, keys, data, starts, lsns)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TYPE_KEYS).flatmap(
    lambda key: st.tuples(st.just(key), st.lists(ALL_TYPES[key], min_size=1, max_size=40))))
def test_single_type_columns(case: tuple[tuple[int, int], list[str]]) -> None:
    """Many values of one type in one column: exercises the per-type casts in bulk."""
    (oid, typmod), texts = case
    rel = Relation(OID, "public", "one", "d", (RelationColumn("v", oid, typmod, False),))
    messages = [encode_insert(OID, [t(x)]) for x in texts]
    data, starts = build_buffer(messages)
    lsns = np.zeros(len(messages), dtype=np.uint64)
    batch = decode_changes(rel, [], data, starts, lsns)
    assert_matches_reference(batch, rel, [], data, starts, lsns)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.data_too_large])
@given(streams(), st.integers(1, 4))
def test_blocks_of_rows_concatenate_to_the_same_batch(
        stream: tuple[Relation, list[str], list[bytes], list[bytes]], block_rows: int) -> None:
    """Big batches are decoded in cache-sized blocks of rows; blocks of 1–4 rows here."""
    rel, keys, messages, gaps = stream
    data, starts = build_buffer(messages, gaps)
    lsns = np.arange(len(messages), dtype=np.uint64) + 5
    whole = decode_changes(rel, keys, data, starts, lsns)
    with mock.patch.object(columnar, "_MIN_BLOCK_ROWS", block_rows), \
            mock.patch.object(columnar, "_MAX_BLOCK_ROWS", block_rows):
        stats = T.DecodeStats()
        blocked = decode_changes(rel, keys, data, starts, lsns, stats=stats)
    assert blocked.schema == whole.schema
    assert_matches_reference(blocked, rel, keys, data, starts, lsns)
    assert stats.rows == len(messages) and stats.batches == 1
