"""Stream Load body formats: CSV records and JSON records, before any type conversion."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dbmazz.testing.starrocks.errors import LoadError

NULL_MARKER = b"\\N"
_MAX_SEPARATOR_BYTES = 50


def parse_separator(value: str, header: str) -> bytes:
    """Decode a ``column_separator``/``row_delimiter`` header, including ``\\xHH`` hex."""
    text = value
    if text.startswith("\\\\x"):
        text = text[1:]
    if text.lower().startswith("\\x"):
        digits = text[2:]
        try:
            raw = bytes.fromhex(digits)
        except ValueError as e:
            raise LoadError(f"Invalid {header}: {value}") from e
    elif text == "\\t":
        raw = b"\t"
    elif text == "\\n":
        raw = b"\n"
    else:
        raw = text.encode("utf-8")
    if not raw or len(raw) > _MAX_SEPARATOR_BYTES:
        raise LoadError(f"{header} should be 1 to {_MAX_SEPARATOR_BYTES} bytes: {value}")
    return raw


@dataclass
class CsvOptions:
    column_separator: bytes = b"\t"
    row_delimiter: bytes = b"\n"
    enclose: bytes | None = None
    escape: bytes | None = None
    skip_header: int = 0
    trim_space: bool = False


@dataclass
class CsvRecord:
    # None stands for \N; values stay bytes until the column type is known.
    fields: list[bytes | None]
    raw: bytes


def iter_csv(body: bytes, opts: CsvOptions) -> Iterator[CsvRecord]:
    records = _split_fast(body, opts) if not (opts.enclose or opts.escape) else _split_slow(
        body, opts
    )
    skipped = 0
    for record in records:
        if skipped < opts.skip_header:
            skipped += 1
            continue
        yield record


def _field(value: bytes, trim: bool) -> bytes | None:
    if trim:
        value = value.strip(b" ")
    return None if value == NULL_MARKER else value


def _split_fast(body: bytes, opts: CsvOptions) -> Iterator[CsvRecord]:
    for line in body.split(opts.row_delimiter):
        if not line:
            continue
        fields = [_field(f, opts.trim_space) for f in line.split(opts.column_separator)]
        yield CsvRecord(fields, line)


def _split_slow(body: bytes, opts: CsvOptions) -> Iterator[CsvRecord]:
    """Byte-at-a-time parser for enclose/escape, where separators may sit inside fields."""
    sep, delim = opts.column_separator, opts.row_delimiter
    enc, esc = opts.enclose, opts.escape
    n = len(body)
    i = 0
    row_start = 0
    fields: list[bytes | None] = []
    cur = bytearray()
    quoted = False
    in_quote = False
    field_raw_start = 0

    def finish_field(end: int) -> None:
        nonlocal cur, quoted
        raw = body[field_raw_start:end]
        bare = raw.strip(b" ") if opts.trim_space else raw
        if quoted:
            fields.append(bytes(cur))
        elif bare == NULL_MARKER:
            fields.append(None)
        else:
            value = bytes(cur)
            fields.append(value.strip(b" ") if opts.trim_space else value)
        cur = bytearray()
        quoted = False

    while i < n:
        if in_quote:
            if esc and body.startswith(esc, i) and i + len(esc) < n:
                cur.append(body[i + len(esc)])
                i += len(esc) + 1
            elif enc and body.startswith(enc, i):
                if body.startswith(enc, i + len(enc)):
                    cur += enc
                    i += 2 * len(enc)
                else:
                    in_quote = False
                    i += len(enc)
            else:
                cur.append(body[i])
                i += 1
            continue
        if body.startswith(sep, i):
            finish_field(i)
            i += len(sep)
            field_raw_start = i
            continue
        if body.startswith(delim, i):
            finish_field(i)
            raw_row = body[row_start:i]
            if raw_row:
                yield CsvRecord(fields, raw_row)
            fields = []
            i += len(delim)
            row_start = field_raw_start = i
            continue
        # An escaped "N" is left alone so that \N still reads as NULL.
        escaped = i + len(esc) if esc else n
        if esc and body.startswith(esc, i) and escaped < n and body[escaped] != ord("N"):
            cur.append(body[escaped])
            i += len(esc) + 1
            continue
        if (
            enc
            and not quoted
            and body.startswith(enc, i)
            and (not cur or (opts.trim_space and not cur.strip(b" ")))
        ):
            in_quote = quoted = True
            cur = bytearray()
            i += len(enc)
            continue
        if quoted:
            # After the closing enclose only spaces are expected; keep them out of the value.
            i += 1
            continue
        cur.append(body[i])
        i += 1
    if row_start < n:
        finish_field(n)
        yield CsvRecord(fields, body[row_start:n])


# -- JSON --------------------------------------------------------------------------------

_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\[\"([^\"]*)\"\]|\['([^']*)'\]")


@dataclass
class JsonPath:
    text: str
    steps: list[str | int]

    @classmethod
    def parse(cls, text: str) -> JsonPath:
        if not text.startswith("$"):
            raise LoadError(f"Invalid json path: {text}")
        steps: list[str | int] = []
        pos = 1
        while pos < len(text):
            match = _PATH_TOKEN.match(text, pos)
            if match is None:
                raise LoadError(f"Invalid json path: {text}")
            name, index, dq, sq = match.groups()
            steps.append(int(index) if index is not None else name or dq or sq or "")
            pos = match.end()
        return cls(text, steps)

    def extract(self, doc: Any) -> tuple[bool, Any]:
        """(found, value)."""
        current = doc
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(current, list) or step >= len(current):
                    return False, None
                current = current[step]
            else:
                if not isinstance(current, dict) or step not in current:
                    return False, None
                current = current[step]
        return True, current


def parse_jsonpaths(text: str) -> list[JsonPath]:
    try:
        paths = json.loads(text)
    except ValueError as e:
        raise LoadError(f"Invalid jsonpaths: {text}") from e
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise LoadError(f"Invalid jsonpaths: {text}")
    return [JsonPath.parse(p) for p in paths]


@dataclass
class JsonRecord:
    value: Any
    raw: str


def iter_json(
    body: bytes, strip_outer_array: bool, json_root: JsonPath | None = None
) -> Iterator[JsonRecord]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LoadError("JSON body is not valid UTF-8") from e
    decoder = json.JSONDecoder(parse_float=Decimal)
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            return
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except ValueError as e:
            raise LoadError(f"Failed to parse json data: {e}") from e
        if json_root is not None:
            found, doc = json_root.extract(doc)
            if not found:
                raise LoadError(f"json_root {json_root.text} does not exist in the data")
        if strip_outer_array:
            if not isinstance(doc, list):
                raise LoadError(
                    "JSON data is an object, strip_outer_array must be set false"
                )
            for item in doc:
                yield JsonRecord(item, _dump(item))
        else:
            if isinstance(doc, list):
                raise LoadError("JSON data is an array, strip_outer_array must be set true")
            yield JsonRecord(doc, _dump(doc))


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
