"""StarRocks column types: parsing, validation, value conversion and catalog strings.

Values are held as canonical Python objects: bool, int, float, Decimal, str, bytes,
date, datetime, list (ARRAY) and JSON text (str, normalised with ``json.dumps``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation
from typing import Any

from sqlglot import exp

VARCHAR_MAX = 1_048_576
STRING_LENGTH = 65_533
CHAR_MAX = 255
DECIMAL_MAX_PRECISION = 38
# Python's default context keeps 28 digits, too few for DECIMAL(38,s): quantize would signal
# InvalidOperation (a valid value turned NULL) and arithmetic would round. Twice the maximum
# precision holds a product of two DECIMAL(38) values exactly. Passed explicitly (or through
# ``localcontext``) so the thread's global context is never changed.
DECIMAL_CONTEXT = Context(prec=2 * DECIMAL_MAX_PRECISION, rounding=ROUND_HALF_UP)

INT_RANGES: dict[str, tuple[int, int]] = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INT": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "LARGEINT": (-(2**127), 2**127 - 1),
}
# Types a primary key may use (primary_key_table.md).
KEY_TYPES = frozenset(
    {"BOOLEAN", "TINYINT", "SMALLINT", "INT", "BIGINT", "LARGEINT", "STRING", "VARCHAR",
     "CHAR", "DATE", "DATETIME"}
)
STRING_TYPES = frozenset({"CHAR", "VARCHAR", "STRING"})


class TypeError_(ValueError):
    """A type that StarRocks would refuse in DDL."""


class ConversionError(ValueError):
    """A value that cannot be converted to the column type."""


@dataclass(frozen=True)
class SRType:
    name: str
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    item: SRType | None = None
    # MAP and STRUCT are kept as their DDL text; values pass through as JSON.
    raw: str | None = None

    def sql(self) -> str:
        if self.name in ("CHAR", "VARCHAR", "VARBINARY"):
            return f"{self.name}({self.length})"
        if self.name == "DECIMAL":
            return f"DECIMAL({self.precision},{self.scale})"
        if self.name == "ARRAY":
            assert self.item is not None
            return f"ARRAY<{self.item.sql()}>"
        if self.raw is not None:
            return self.raw
        return self.name

    @property
    def is_string(self) -> bool:
        return self.name in STRING_TYPES

    @property
    def is_integer(self) -> bool:
        return self.name in INT_RANGES


_SIMPLE = {
    exp.DataType.Type.BOOLEAN: "BOOLEAN",
    exp.DataType.Type.TINYINT: "TINYINT",
    exp.DataType.Type.SMALLINT: "SMALLINT",
    exp.DataType.Type.INT: "INT",
    exp.DataType.Type.BIGINT: "BIGINT",
    exp.DataType.Type.INT128: "LARGEINT",
    exp.DataType.Type.FLOAT: "FLOAT",
    exp.DataType.Type.DOUBLE: "DOUBLE",
    exp.DataType.Type.DATE: "DATE",
    exp.DataType.Type.DATETIME: "DATETIME",
    exp.DataType.Type.JSON: "JSON",
}
_DECIMALS = {
    exp.DataType.Type.DECIMAL,
    exp.DataType.Type.DECIMAL32,
    exp.DataType.Type.DECIMAL64,
    exp.DataType.Type.DECIMAL128,
}


def _params(dtype: exp.DataType) -> list[int]:
    out = []
    for p in dtype.expressions:
        node = p.this if isinstance(p, exp.DataTypeParam) else p
        try:
            out.append(int(node.name if isinstance(node, exp.Expression) else str(node)))
        except ValueError as e:
            raise TypeError_(f"Invalid type parameter in {dtype.sql('starrocks')}") from e
    return out


def from_sqlglot(dtype: exp.DataType) -> SRType:
    """Translate a parsed DDL type, validating StarRocks' limits."""
    kind = dtype.this
    text = dtype.sql(dialect="starrocks")
    if kind in _SIMPLE:
        return SRType(_SIMPLE[kind])
    if kind in _DECIMALS:
        params = _params(dtype)
        precision = params[0] if params else 10
        scale = params[1] if len(params) > 1 else 0
        if not 1 <= precision <= DECIMAL_MAX_PRECISION:
            raise TypeError_(
                f"DECIMAL's precision should range from 1 to {DECIMAL_MAX_PRECISION}, "
                f"but got {precision}"
            )
        if not 0 <= scale <= precision:
            raise TypeError_(
                f"DECIMAL's scale should range from 0 to {precision}, but got {scale}"
            )
        return SRType("DECIMAL", precision=precision, scale=scale)
    if kind == exp.DataType.Type.TEXT:
        return SRType("STRING", length=STRING_LENGTH)
    if kind in (exp.DataType.Type.VARCHAR, exp.DataType.Type.CHAR):
        name = "VARCHAR" if kind == exp.DataType.Type.VARCHAR else "CHAR"
        params = _params(dtype)
        length = params[0] if params else 1
        limit = VARCHAR_MAX if name == "VARCHAR" else CHAR_MAX
        if not 1 <= length <= limit:
            raise TypeError_(f"{name} length should be in [1, {limit}], but got {length}")
        return SRType(name, length=length)
    if kind in (exp.DataType.Type.VARBINARY, exp.DataType.Type.BINARY):
        params = _params(dtype)
        length = params[0] if params else VARCHAR_MAX
        if not 1 <= length <= VARCHAR_MAX:
            raise TypeError_(f"VARBINARY length should be in [1, {VARCHAR_MAX}], but got {length}")
        return SRType("VARBINARY", length=length)
    if kind == exp.DataType.Type.ARRAY:
        if not dtype.expressions or not isinstance(dtype.expressions[0], exp.DataType):
            raise TypeError_("ARRAY needs an element type")
        return SRType("ARRAY", item=from_sqlglot(dtype.expressions[0]))
    if kind in (exp.DataType.Type.MAP, exp.DataType.Type.STRUCT):
        return SRType(kind.name, raw=text)
    raise TypeError_(f"Unsupported data type: {text}")


def parse_type(text: str) -> SRType:
    import sqlglot

    dtype = sqlglot.parse_one(f"CAST(NULL AS {text})", read="starrocks")
    assert isinstance(dtype, exp.Cast)
    return from_sqlglot(dtype.to)


# -- information_schema strings (§5; pinned to a 3.x-like server) -------------------------


def info_schema(t: SRType) -> tuple[str, str, int | None, int | None]:
    """(DATA_TYPE, COLUMN_TYPE, COLUMN_SIZE, DECIMAL_DIGITS)."""
    name = t.name
    if name == "BOOLEAN":
        return "tinyint", "tinyint(1)", None, None
    fixed = {
        "TINYINT": ("tinyint", "tinyint(4)", 3),
        "SMALLINT": ("smallint", "smallint(6)", 5),
        "INT": ("int", "int(11)", 10),
        "BIGINT": ("bigint", "bigint(20)", 19),
        "LARGEINT": ("bigint unsigned", "bigint(20) unsigned", 39),
        "FLOAT": ("float", "float", 12),
        "DOUBLE": ("double", "double", 22),
    }
    if name in fixed:
        data_type, column_type, size = fixed[name]
        return data_type, column_type, size, 0 if name not in ("FLOAT", "DOUBLE") else None
    if name == "DECIMAL":
        return "decimal", f"decimal({t.precision},{t.scale})", t.precision, t.scale
    if name in ("VARCHAR", "STRING"):
        return "varchar", f"varchar({t.length})", t.length, None
    if name == "CHAR":
        return "char", f"char({t.length})", t.length, None
    if name == "VARBINARY":
        return "varbinary", f"varbinary({t.length})", t.length, None
    if name in ("DATE", "DATETIME", "JSON"):
        return name.lower(), name.lower(), None, None
    if name == "ARRAY":
        assert t.item is not None
        return "array", f"array<{info_schema(t.item)[1]}>", None, None
    lowered = (t.raw or name).lower()
    return name.lower(), lowered, None, None


# -- value conversion ---------------------------------------------------------------------

_DATETIME_FORMATS = (
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y%m%d%H%M%S",
    "%Y-%m-%d",
    "%Y%m%d",
)
_INT_RE = re.compile(r"^[+-]?\d+$")


def _bad(value: Any, t: SRType) -> ConversionError:
    shown = value if isinstance(value, str) else json.dumps(value, default=str)
    return ConversionError(f"Value '{shown}' is invalid or out of range for type {t.sql()}")


def _parse_datetime(text: str, t: SRType) -> datetime:
    stripped = text.strip()
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(stripped, fmt)
        except ValueError:
            continue
    raise _bad(text, t)


def _check_int(value: int, t: SRType, original: Any) -> int:
    low, high = INT_RANGES[t.name]
    if not low <= value <= high:
        raise _bad(original, t)
    return value


def _decimal(value: Decimal, t: SRType, original: Any) -> Decimal:
    assert t.precision is not None and t.scale is not None
    if not value.is_finite():
        raise _bad(original, t)
    quantum = Decimal(1).scaleb(-t.scale, context=DECIMAL_CONTEXT)
    try:
        rounded = value.quantize(quantum, rounding=ROUND_HALF_UP, context=DECIMAL_CONTEXT)
    except InvalidOperation as e:
        raise _bad(original, t) from e
    digits = len(rounded.as_tuple().digits)
    integer_digits = max(digits - t.scale, 0) if rounded != 0 else 0
    if integer_digits > t.precision - t.scale:
        raise _bad(original, t)
    return rounded


def _check_length(value: str | bytes, t: SRType, original: Any) -> None:
    size = len(value.encode("utf-8")) if isinstance(value, str) else len(value)
    if t.length is not None and size > t.length:
        raise ConversionError(
            f"String (length={size}) is too long. The max length of '{t.sql()}' is {t.length}"
        )


def _parse_array_text(text: str) -> list[Any]:
    stripped = text.strip()
    try:
        # strict=False: items printed by the BE hold control characters as they are.
        parsed = json.loads(stripped, parse_float=Decimal, strict=False)
    except ValueError:
        # StarRocks also takes unquoted strings: [a,b].
        if not (stripped.startswith("[") and stripped.endswith("]")):
            raise
        inner = stripped[1:-1].strip()
        return [] if not inner else [p.strip() for p in inner.split(",")]
    if not isinstance(parsed, list):
        raise ValueError("not an array")
    return parsed


def normalise_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value) if value != value.to_integral_value() else int(value)
    if isinstance(value, datetime | date):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def convert_text(text: str | bytes, t: SRType) -> Any:
    """Convert a CSV field (or any textual value) to the column's canonical value."""
    if t.name == "VARBINARY":
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        _check_length(raw, t, text)
        return raw
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConversionError("Invalid UTF-8 data") from e
    name = t.name
    if name in STRING_TYPES:
        _check_length(text, t, text)
        return text
    if name == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise _bad(text, t)
    if name in INT_RANGES:
        if not _INT_RE.match(text.strip()):
            raise _bad(text, t)
        return _check_int(int(text), t, text)
    if name in ("FLOAT", "DOUBLE"):
        try:
            return float(text)
        except ValueError as e:
            raise _bad(text, t) from e
    if name == "DECIMAL":
        try:
            return _decimal(Decimal(text.strip()), t, text)
        except InvalidOperation as e:
            raise _bad(text, t) from e
    if name == "DATETIME":
        return _parse_datetime(text, t)
    if name == "DATE":
        return _parse_datetime(text, t).date()
    if name == "JSON":
        try:
            return normalise_json(json.loads(text, parse_float=Decimal))
        except ValueError as e:
            raise _bad(text, t) from e
    if name == "ARRAY":
        try:
            items = _parse_array_text(text)
        except ValueError as e:
            raise _bad(text, t) from e
        return convert_json(items, t)
    # MAP / STRUCT: keep parsed JSON where possible, else the text itself.
    try:
        return normalise_json(json.loads(text, parse_float=Decimal))
    except ValueError:
        return text


#: Longest text a JSON value is parsed from (util/json.h kJSONLengthLimit).
JSON_LENGTH_LIMIT = 16 * 1024 * 1024


def convert_csv(text: str | bytes, t: SRType) -> Any:
    """A field of a CSV body (no enclose/escape) as StarRocks' CSV converters read it: as
    :func:`convert_text`, except an ARRAY, which is not JSON there (:func:`_csv_array`),
    and JSON, parsed only when it looks like an object, array or string."""
    if t.name not in ("ARRAY", "JSON"):
        return convert_text(text, t)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConversionError("Invalid UTF-8 data") from e
    if t.name == "JSON":
        return _csv_json(text, t)
    return _csv_array(text, t)


def _csv_json(text: str, t: SRType) -> str:
    """``JsonValue::parse`` (util/json.cpp, parse_json_or_string): text whose first
    non-space character is ``{``, ``[`` or ``"`` is parsed as JSON; any other text — ``42``,
    ``true``, ``null`` — is stored as a JSON string holding it."""
    if len(text.encode("utf-8")) > JSON_LENGTH_LIMIT:
        raise ConversionError("JSON string exceed maximum length 16MB")
    stripped = text.lstrip()
    if not stripped or stripped[0] not in '{["':
        return normalise_json(text)
    return str(convert_text(text, t))


def _csv_array(text: str, t: SRType) -> list[Any]:
    """``[item,…]`` read as the BE's DefaultArrayReader does (be/src/formats/csv).

    The brackets must be the field's first and last bytes; items are split at commas
    outside double quotes (every ``"`` toggles: there is no escape) and outside nested
    brackets; a bare ``null`` is NULL; each other item is read by its type's
    ``read_quoted_string`` (:func:`_csv_array_item`)."""
    assert t.item is not None
    if len(text) < 2 or text[0] != "[" or text[-1] != "]":
        raise _bad(text, t)
    inner = text[1:-1]
    if not inner:
        return []
    items: list[str] = []
    start, level, quoted = 0, 0, False
    for i, ch in enumerate(inner):
        if ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "[":
            level += 1
        elif ch == "]":
            level -= 1
        elif ch == "," and level == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    if level != 0 or quoted:
        raise _bad(text, t)
    return [None if item == "null" else _csv_array_item(item, t.item, text, t)
            for item in items]


def _csv_array_item(item: str, t: SRType, field: str, array: SRType) -> Any:
    """One array item as its converter's ``read_quoted_string`` reads it: CHAR/VARCHAR,
    DATE and DATETIME only between double quotes, which are removed (and ``""`` read as
    one ``"``: StringConverter), nested arrays as arrays, every other type as it is —
    a quoted number fails."""
    if t.is_string or t.name in ("DATE", "DATETIME"):
        if len(item) < 2 or item[0] != '"' or item[-1] != '"':
            raise _bad(field, array)
        inner = item[1:-1]
        if t.name in ("DATE", "DATETIME"):
            return convert_text(inner, t)
        parts: list[str] = []
        at = 0
        while (quote := inner.find('"', at)) >= 0:
            parts.append(inner[at : quote + 1])
            at = quote + 2 if inner.startswith('"', quote + 1) else quote + 1
        parts.append(inner[at:])
        value = "".join(parts)
        _check_length(value, t, value)
        return value
    if t.name == "ARRAY":
        return _csv_array(item, t)
    return convert_text(item, t)


def convert_json(value: Any, t: SRType) -> Any:
    """Convert a value decoded from a JSON body (str, int, Decimal, bool, list, dict)."""
    if value is None:
        return None
    name = t.name
    if isinstance(value, str) and name not in ("JSON", "ARRAY"):
        return convert_text(value, t)
    if name == "JSON":
        if isinstance(value, str):
            try:
                return normalise_json(json.loads(value, parse_float=Decimal))
            except ValueError:
                return normalise_json(value)
        return normalise_json(value)
    if name == "ARRAY":
        assert t.item is not None
        if isinstance(value, str):
            return convert_text(value, t)
        if not isinstance(value, list):
            raise _bad(value, t)
        return [_json_array_item(v, t.item) for v in value]
    if name == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, int | Decimal) and value in (0, 1):
            return bool(value)
        raise _bad(value, t)
    if name in INT_RANGES:
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return _check_int(value, t, value)
        if isinstance(value, Decimal | float) and value == int(value):
            return _check_int(int(value), t, value)
        raise _bad(value, t)
    if name in ("FLOAT", "DOUBLE"):
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            return float(value)
        raise _bad(value, t)
    if name == "DECIMAL":
        if isinstance(value, int | Decimal) and not isinstance(value, bool):
            return _decimal(Decimal(value), t, value)
        if isinstance(value, float) and math.isfinite(value):
            return _decimal(Decimal(repr(value)), t, value)
        raise _bad(value, t)
    if name in STRING_TYPES or name == "VARBINARY":
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | Decimal):
            text = str(value)
        else:
            text = normalise_json(value)
        return convert_text(text, t)
    if name in ("DATE", "DATETIME"):
        raise _bad(value, t)
    return normalise_json(value)


def _json_array_item(value: Any, t: SRType) -> Any:
    """An item of a JSON array: one the item type cannot take is NULL, never an error.

    The BE reads a JSON body's ARRAY items with ``invalid_as_null`` (formats/json:
    add_nullable_array_column), and DATE/DATETIME/DECIMAL items as text that a cast to the
    item type turns NULL when it cannot parse them (JsonScanner::_construct_json_types);
    strict mode compares only whole columns' NULLs (FileScanner::materialize), so the row
    loads with a NULL item, whatever strict_mode says."""
    if value is None:
        return None
    try:
        return convert_json(value, t)
    except ConversionError:
        return None


def zero_value(t: SRType) -> Any:
    """What a partial update puts in a new row's NOT NULL column that has no default."""
    name = t.name
    if name == "BOOLEAN":
        return False
    if name in INT_RANGES:
        return 0
    if name in ("FLOAT", "DOUBLE"):
        return 0.0
    if name == "DECIMAL":
        return _decimal(Decimal(0), t, 0)
    if name == "VARBINARY":
        return b""
    if name == "DATE":
        return date(1970, 1, 1)
    if name == "DATETIME":
        return datetime(1970, 1, 1)
    if name == "ARRAY":
        return []
    if name == "JSON":
        return "null"
    return ""


def sort_key(value: Any) -> tuple[int, Any]:
    """Orders NULL first, then values of one type; used for PK ordering and merge_condition."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    return (1, value)


def render(value: Any) -> str:
    """Text of a value as StarRocks prints it (SHOW, CSV-like contexts)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, list):
        return "[" + ",".join(_render_item(v) for v in value) + "]"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _render_item(value: Any) -> str:
    """An ARRAY item as the BE prints it (MysqlRowBuffer::push_string inside an array):
    text between double quotes with only ``"`` and ``\\`` escaped by a backslash —
    control characters are printed as they are, unlike JSON."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return render(value)
