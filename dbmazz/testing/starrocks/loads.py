"""Planning a load from its headers and running it over body bytes.

``plan_load`` does what the BE does before ``100 Continue`` (header validation, the
``columns``/``where`` expressions, partial-update and merge-condition checks) and raises
``LoadError`` with the BE's message. ``run_load`` parses the body, maps and converts each
record, and returns the row operations plus the four counters and the error-log lines.
Nothing touches the table until the caller applies the operations, so a load is all or
nothing.
"""

from __future__ import annotations

import bz2
import gzip
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dbmazz.testing.starrocks.catalog import Column, Table
from dbmazz.testing.starrocks.coltypes import (
    ConversionError,
    convert_csv,
    convert_json,
    convert_text,
    normalise_json,
)
from dbmazz.testing.starrocks.errors import LoadError
from dbmazz.testing.starrocks.exprs import ColumnItem, Expr, parse_columns, parse_where
from dbmazz.testing.starrocks.formats import (
    CsvOptions,
    JsonPath,
    iter_csv,
    iter_json,
    parse_jsonpaths,
    parse_separator,
)
from dbmazz.testing.starrocks.store import Op, RowOp

FORMATS = ("csv", "json", "gzip", "bzip2", "lz4", "deflate", "zstd")
_COMPRESSED_CSV = {"gzip": "gzip", "bzip2": "bzip2", "deflate": "deflate"}
_CODECS = {"gzip": "gzip", "bzip2": "bzip2", "deflate": "deflate", "lz4_frame": "lz4",
           "lz4": "lz4", "zstd": "zstd"}
JSON_MAX_BYTES = 100 * 1024 * 1024
MAX_TIMEOUT = 259200
PK_MAX_BYTES = 128
ERROR_LOG_MAX_LINES = 1000
OP_COLUMN = "__op"
_FIXED_KEY_BYTES = {"BOOLEAN": 1, "TINYINT": 1, "SMALLINT": 2, "INT": 4, "BIGINT": 8,
                    "LARGEINT": 16, "DATE": 4, "DATETIME": 8}


def _bool_header(headers: Mapping[str, str], name: str, message: str) -> bool:
    value = headers.get(name)
    if value is None or value == "":
        return False
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise LoadError(message)
    return lowered == "true"


@dataclass
class LoadPlan:
    table: Table
    columns: list[Column]
    format: str
    codec: str | None = None
    csv: CsvOptions = field(default_factory=CsvOptions)
    strip_outer_array: bool = False
    json_root: JsonPath | None = None
    jsonpaths: list[JsonPath] | None = None
    items: list[ColumnItem] | None = None
    where: Expr | None = None
    partial: bool = False
    merge_condition: str | None = None
    strict: bool = False
    max_filter_ratio: float = 0.0
    timeout: int | None = None
    # Source names, lower-cased, in header order (CSV fields / jsonpaths are positional).
    source_names: list[str] = field(default_factory=list)
    derived: dict[str, Expr] = field(default_factory=dict)
    # Columns whose values come from the load; None means "the keys each JSON row has".
    targets: list[Column] | None = None

    def column(self, lname: str) -> Column | None:
        for c in self.columns:
            if c.lname == lname:
                return c
        return None


def check_timeout(headers: Mapping[str, str]) -> int | None:
    value = headers.get("timeout")
    if value is None or value == "":
        return None
    try:
        seconds = int(value)
    except ValueError as e:
        raise LoadError("Invalid timeout format") from e
    if not 1 <= seconds <= MAX_TIMEOUT:
        raise LoadError("Invalid timeout format")
    return seconds


def check_format(headers: Mapping[str, str]) -> str:
    fmt = (headers.get("format") or "csv").strip().lower()
    if fmt not in FORMATS:
        raise LoadError(f"unknown data format, format={headers.get('format')}")
    return fmt


def plan_load(headers: Mapping[str, str], table: Table) -> LoadPlan:
    """Validate the load headers against the table; headers are keyed in lower case."""
    fmt = check_format(headers)
    columns = list(table.columns)
    plan = LoadPlan(table=table, columns=columns, format="json" if fmt == "json" else "csv")
    if fmt in ("lz4", "zstd"):
        raise LoadError(f"The StarRocks emulator does not support format={fmt}")
    plan.codec = _COMPRESSED_CSV.get(fmt)
    encoding = headers.get("content-encoding")
    compression = headers.get("compression")
    if encoding and compression:
        raise LoadError("Content-Encoding and compression can not be set at the same time")
    codec_name = (encoding or compression or "").strip().lower()
    if codec_name:
        codec = _CODECS.get(codec_name)
        if codec is None or codec in ("lz4", "zstd"):
            raise LoadError(f"The StarRocks emulator does not support compression {codec_name}")
        plan.codec = codec
    if headers.get("partitions") and headers.get("temporary_partitions"):
        raise LoadError("Can not specify both partitions and temporary partitions")
    plan.timeout = check_timeout(headers)
    plan.strict = _bool_header(
        headers, "strict_mode", "Invalid strict mode format. Must be bool type"
    )
    plan.partial = _bool_header(
        headers, "partial_update", "Invalid partial update flag format. Must be bool type"
    )
    mode = (headers.get("partial_update_mode") or "row").strip().lower()
    if mode not in ("row", "column", "auto"):
        raise LoadError(f"Invalid partial update mode: {mode}")
    ratio = headers.get("max_filter_ratio")
    if ratio:
        try:
            plan.max_filter_ratio = float(ratio)
        except ValueError as e:
            raise LoadError(f"Invalid max_filter_ratio: {ratio}") from e
        if not 0 <= plan.max_filter_ratio <= 1:
            raise LoadError(f"Invalid max_filter_ratio: {ratio}")
    _plan_format(headers, plan)
    _plan_columns(headers, plan)
    if headers.get("where"):
        plan.where = parse_where(headers["where"])
    if plan.partial and not table.primary:
        raise LoadError("Only primary key table support partial update")
    merge = headers.get("merge_condition")
    if merge:
        column = plan.column(merge.strip().lower())
        if column is None:
            raise LoadError(f"Invalid merge condition column: {merge}, not found in table")
        if column.is_key:
            raise LoadError(f"Merge condition column can not be a primary key column: {merge}")
        if not table.primary:
            raise LoadError("Only primary key table support merge condition")
        plan.merge_condition = column.lname
    return plan


def _plan_format(headers: Mapping[str, str], plan: LoadPlan) -> None:
    if plan.format == "csv":
        opts = plan.csv
        if headers.get("column_separator"):
            opts.column_separator = parse_separator(headers["column_separator"], "column_separator")
        if headers.get("row_delimiter"):
            opts.row_delimiter = parse_separator(headers["row_delimiter"], "row_delimiter")
        for name in ("enclose", "escape"):
            value = headers.get(name)
            if value:
                raw = parse_separator(value, name)
                if len(raw) != 1:
                    raise LoadError(f"{name} must be a single byte: {value}")
                setattr(opts, name, raw)
        if headers.get("skip_header"):
            try:
                opts.skip_header = int(headers["skip_header"])
            except ValueError as e:
                raise LoadError(f"Invalid skip_header: {headers['skip_header']}") from e
        opts.trim_space = _bool_header(headers, "trim_space", "Invalid trim_space format")
        return
    plan.strip_outer_array = _bool_header(
        headers, "strip_outer_array", "Invalid strip_outer_array format. Must be bool type"
    )
    if headers.get("json_root"):
        plan.json_root = JsonPath.parse(headers["json_root"])
    if headers.get("jsonpaths"):
        plan.jsonpaths = parse_jsonpaths(headers["jsonpaths"])


def _plan_columns(headers: Mapping[str, str], plan: LoadPlan) -> None:
    text = headers.get("columns")
    table_columns = plan.columns
    if text:
        plan.items = parse_columns(text)
        seen: set[str] = set()
        for item in plan.items:
            lname = item.name.lower()
            if lname in seen:
                raise LoadError(f"Duplicate column: {item.name}")
            seen.add(lname)
            if item.expr is None:
                plan.source_names.append(lname)
            else:
                plan.derived[lname] = item.expr
        # Plain JSON mode reads any key, so references cannot be checked up front.
        if plan.format == "csv" or plan.jsonpaths is not None:
            for lname, expr in plan.derived.items():
                unknown = expr.references() - set(plan.source_names)
                if unknown:
                    raise LoadError(
                        f"Unknown column '{sorted(unknown)[0]}' in the expression of {lname}"
                    )
        target_names = [n for n in plan.source_names if n != OP_COLUMN]
        target_names += [n for n in plan.derived if n != OP_COLUMN and n not in target_names]
        # Names that are not table columns are temporary source columns.
        plan.targets = [c for c in table_columns if c.lname in set(target_names)]
    elif plan.format == "csv" or plan.jsonpaths is not None:
        plan.source_names = [c.lname for c in table_columns]
        if plan.jsonpaths is not None:
            plan.source_names = plan.source_names[: len(plan.jsonpaths)]
        plan.targets = [c for c in table_columns if c.lname in set(plan.source_names)]
    else:
        plan.targets = None
    if plan.jsonpaths is not None and len(plan.jsonpaths) != len(plan.source_names):
        raise LoadError(
            f"The number of jsonpaths ({len(plan.jsonpaths)}) does not match the number of "
            f"columns ({len(plan.source_names)})"
        )
    if plan.targets is None:
        return
    listed = {c.lname for c in plan.targets}
    if plan.partial:
        missing = [c.name for c in plan.table.key_columns if c.lname not in listed]
        if missing:
            raise LoadError(f"partial update must include all primary key columns: {missing[0]}")
        return
    for c in table_columns:
        if c.lname not in listed and not c.nullable and c.default is None:
            raise LoadError(f"Column has no default value. column: {c.name}")


# -- running ------------------------------------------------------------------------------


@dataclass
class LoadOutcome:
    ops: list[RowOp] = field(default_factory=list)
    total: int = 0
    loaded: int = 0
    filtered: int = 0
    unselected: int = 0
    errors: list[str] = field(default_factory=list)

    def too_many_filtered(self, max_filter_ratio: float) -> bool:
        selected = self.total - self.unselected
        return selected > 0 and self.filtered / selected > max_filter_ratio

    def merge(self, other: LoadOutcome) -> None:
        self.ops.extend(other.ops)
        self.total += other.total
        self.loaded += other.loaded
        self.filtered += other.filtered
        self.unselected += other.unselected
        self.errors.extend(other.errors)


class _RowError(Exception):
    pass


def decompress(body: bytes, codec: str | None) -> bytes:
    if not codec or not body:
        return body
    try:
        if codec == "gzip":
            return gzip.decompress(body)
        if codec == "bzip2":
            return bz2.decompress(body)
        if codec == "deflate":
            return zlib.decompress(body)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        raise LoadError(f"Failed to decompress the {codec} body: {e}") from e
    raise LoadError(f"unsupported compression {codec}")


@dataclass
class _Record:
    src: dict[str, Any]
    raw: str
    present: set[str]
    #: Values decoded from a JSON body (not CSV text).
    json: bool = False


def _records(plan: LoadPlan, body: bytes) -> Iterator[_Record | _RowErrorRecord]:
    if plan.format == "csv":
        expected = len(plan.source_names)
        for rec in iter_csv(body, plan.csv):
            raw = rec.raw.decode("utf-8", "replace")
            if len(rec.fields) != expected:
                yield _RowErrorRecord(
                    f"Value count does not match column count. Expect {expected}, "
                    f"but got {len(rec.fields)}.",
                    raw,
                )
                continue
            src = dict(zip(plan.source_names, rec.fields, strict=True))
            yield _Record(src, raw, set(src))
        return
    for jrec in iter_json(body, plan.strip_outer_array, plan.json_root):
        if not isinstance(jrec.value, dict):
            yield _RowErrorRecord("JSON value is not an object", jrec.raw)
            continue
        if plan.jsonpaths is not None:
            src = {}
            for name, path in zip(plan.source_names, plan.jsonpaths, strict=True):
                _, src[name] = path.extract(jrec.value)
            yield _Record(src, jrec.raw, set(src), json=True)
            continue
        lowered = {str(k).lower(): v for k, v in jrec.value.items()}
        if plan.items is not None:
            src = {n: lowered.get(n) for n in plan.source_names}
            yield _Record(src, jrec.raw, {n for n in plan.source_names if n in lowered},
                          json=True)
        else:
            yield _Record(lowered, jrec.raw, set(lowered), json=True)


@dataclass
class _RowErrorRecord:
    reason: str
    raw: str


def _op_of(value: Any) -> Op:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None:
        return "upsert"
    text = str(value).strip().lower()
    if text in ("0", "upsert"):
        return "upsert"
    if text in ("1", "delete"):
        return "delete"
    raise _RowError(f"Invalid value of __op: {value}")


def _convert(column: Column, value: Any, strict: bool) -> Any:
    if value is None:
        return None
    # Bytes are CSV fields (JSON values are decoded): an ARRAY reads them its own way.
    csv_field = isinstance(value, bytes)
    if isinstance(value, bytes) and column.type.name != "VARBINARY":
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            # Invalid UTF-8 is filtered whatever strict_mode says.
            raise _RowError(f"Invalid UTF-8 data in column '{column.name}'") from e
    try:
        if isinstance(value, bytes | str):
            return (convert_csv if csv_field else convert_text)(value, column.type)
        return convert_json(value, column.type)
    except ConversionError as e:
        if strict:
            raise _RowError(f"{e}, column: {column.name}") from e
        return None


def _key_bytes(plan: LoadPlan, values: dict[str, Any]) -> int:
    total = 0
    for c in plan.table.key_columns:
        value = values.get(c.lname)
        if c.type.name in _FIXED_KEY_BYTES:
            total += _FIXED_KEY_BYTES[c.type.name]
        elif isinstance(value, str):
            total += len(value.encode("utf-8")) + (2 if len(plan.table.key_columns) > 1 else 0)
    return total


def _decoded_env(src: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in src.items()
    }


def _map(plan: LoadPlan, rec: _Record, targets: list[Column]) -> RowOp | None:
    env = _decoded_env(rec.src)
    if OP_COLUMN in plan.derived:
        op = _op_of(plan.derived[OP_COLUMN].evaluate(env))
    else:
        op = _op_of(rec.src.get(OP_COLUMN))
    values: dict[str, Any] = {}
    for column in targets:
        if op == "delete" and not column.is_key:
            continue
        lname = column.lname
        if lname in plan.derived:
            raw = plan.derived[lname].evaluate(env)
        elif lname in rec.present:
            raw = rec.src.get(lname)
            if rec.json and column.type.name == "JSON" and raw is not None:
                # The BE stores a JSON body's value in a JSON column as the JSON value it
                # is (add_native_json_column): a string stays a string, never re-parsed.
                values[lname] = normalise_json(raw)
                continue
        elif plan.partial or plan.targets is not None:
            raw = None
        elif column.default is not None or column.nullable:
            # A JSON key the row lacks: the column's default, as for unlisted columns.
            continue
        else:
            raw = None
        value = _convert(column, raw, plan.strict)
        if value is None and not column.nullable:
            raise _RowError(f"NULL value in non-nullable column '{column.name}'")
        values[lname] = value
    if plan.table.primary:
        for key in plan.table.key_columns:
            if values.get(key.lname) is None:
                raise _RowError(f"NULL value in non-nullable column '{key.name}'")
        if _key_bytes(plan, values) > PK_MAX_BYTES:
            raise LoadError(
                f"primary key size exceed the limit. limit: {PK_MAX_BYTES} bytes, row: {rec.raw}"
            )
    if plan.where is not None:
        where_env = {**env, **values}
        if plan.where.evaluate(where_env) is not True:
            return None
    return RowOp(op, values)


def _targets_for_json(plan: LoadPlan, records: list[_Record | _RowErrorRecord]) -> list[Column]:
    present: set[str] = set()
    for rec in records:
        if isinstance(rec, _Record):
            present |= rec.present
    targets = [c for c in plan.columns if c.lname in present]
    if plan.partial:
        missing = [c.name for c in plan.table.key_columns if c.lname not in present]
        if missing:
            raise LoadError(f"partial update must include all primary key columns: {missing[0]}")
        return targets
    # Full rows: every column is written, absent keys take the default.
    return list(plan.columns)


def run_load(plan: LoadPlan, body: bytes) -> LoadOutcome:
    body = decompress(body, plan.codec)
    if plan.format == "json" and plan.targets is None:
        records = list(_records(plan, body))
        targets = _targets_for_json(plan, records)
        source: Iterator[_Record | _RowErrorRecord] | list[_Record | _RowErrorRecord] = records
    else:
        assert plan.targets is not None
        targets = plan.targets
        source = _records(plan, body)
    out = LoadOutcome()
    for rec in source:
        out.total += 1
        if isinstance(rec, _RowErrorRecord):
            _filter(out, rec.reason, rec.raw)
            continue
        try:
            op = _map(plan, rec, targets)
        except _RowError as e:
            _filter(out, str(e), rec.raw)
            continue
        if op is None:
            out.unselected += 1
            continue
        out.loaded += 1
        out.ops.append(op)
    return out


def _filter(out: LoadOutcome, reason: str, raw: str) -> None:
    out.filtered += 1
    if len(out.errors) < ERROR_LOG_MAX_LINES:
        reason = reason.rstrip(".")
        out.errors.append(f"Error: {reason}. Row: {raw}")

