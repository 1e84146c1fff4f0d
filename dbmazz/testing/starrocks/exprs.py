"""The small expression language of the ``columns`` and ``where`` load headers.

Supported: column references, literals, NULL, arithmetic, comparisons, AND/OR/NOT,
IS [NOT] NULL, IN, BETWEEN, CASE/IF, IFNULL/COALESCE, CONCAT, UPPER/LOWER/TRIM, CAST and
TO_BINARY.
Anything else is refused when the load is planned, so a test sees it at once.
"""

from __future__ import annotations

import base64
import binascii
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

import sqlglot
from sqlglot import exp

from dbmazz.testing.starrocks.coltypes import (
    DECIMAL_CONTEXT,
    ConversionError,
    SRType,
    TypeError_,
    convert_json,
    convert_text,
    from_sqlglot,
)
from dbmazz.testing.starrocks.errors import LoadError


@dataclass
class ColumnItem:
    """One entry of the ``columns`` header: a source name, or ``target = expression``."""

    name: str
    expr: Expr | None = None


class Expr:
    def __init__(self, node: exp.Expression, text: str) -> None:
        self.node = node
        self.text = text
        _check(node, text)

    def references(self) -> set[str]:
        return {c.name.lower() for c in self.node.find_all(exp.Column)}

    def evaluate(self, env: Mapping[str, Any]) -> Any:
        # DECIMAL arithmetic needs more than the default 28 digits (see DECIMAL_CONTEXT).
        with localcontext(DECIMAL_CONTEXT):
            return _eval(self.node, env)


def _parse_select_list(text: str, what: str) -> list[exp.Expression]:
    try:
        select = sqlglot.parse_one(f"SELECT {text}", read="starrocks")
    except sqlglot.errors.ParseError as e:
        raise LoadError(f"Failed to parse {what}[{text}]") from e
    if not isinstance(select, exp.Select) or select.args.get("from_") or select.args.get("from"):
        raise LoadError(f"Failed to parse {what}[{text}]")
    return list(select.expressions)


def parse_columns(text: str) -> list[ColumnItem]:
    items: list[ColumnItem] = []
    for node in _parse_select_list(text, "columns"):
        if isinstance(node, exp.Column) and not node.table:
            items.append(ColumnItem(node.name))
        elif isinstance(node, exp.EQ) and isinstance(node.this, exp.Column):
            rhs = node.expression
            items.append(ColumnItem(node.this.name, Expr(rhs, rhs.sql("starrocks"))))
        else:
            raise LoadError(f"Invalid column mapping in columns[{text}]: {node.sql('starrocks')}")
    return items


def parse_where(text: str) -> Expr:
    nodes = _parse_select_list(text, "where")
    if len(nodes) != 1:
        raise LoadError(f"Failed to parse where[{text}]")
    return Expr(nodes[0], text)


_BINARY: dict[type[exp.Expression], Callable[[Any, Any], Any]] = {
    exp.Add: operator.add,
    exp.Sub: operator.sub,
    exp.Mul: operator.mul,
    exp.Div: operator.truediv,
    exp.Mod: operator.mod,
}
_COMPARE: dict[type[exp.Expression], Callable[[Any, Any], bool]] = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
}
_SIMPLE_NODES = (
    exp.Column, exp.Identifier, exp.Literal, exp.Null, exp.Boolean, exp.Paren, exp.Neg,
    exp.And, exp.Or, exp.Not, exp.Is, exp.In, exp.Between, exp.If, exp.Case, exp.Coalesce,
    exp.Concat, exp.DPipe, exp.Upper, exp.Lower, exp.Trim, exp.Cast, exp.DataType,
    exp.DataTypeParam, exp.Var, exp.ToBinary,
)


def _check(node: exp.Expression, text: str) -> None:
    for sub in node.walk():
        if isinstance(sub, _SIMPLE_NODES) or type(sub) in _BINARY or type(sub) in _COMPARE:
            continue
        raise LoadError(
            f"The StarRocks emulator does not support the expression "
            f"'{sub.sql('starrocks')}' in [{text}]"
        )


def _number(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float | Decimal):
        return value
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        return None


def _coerce(a: Any, b: Any) -> tuple[Any, Any]:
    if type(a) is type(b):
        return a, b
    numeric = (int, float, Decimal, bool)
    if isinstance(a, numeric) or isinstance(b, numeric):
        na, nb = _number(a), _number(b)
        if na is not None and nb is not None:
            if isinstance(na, float) or isinstance(nb, float):
                return float(na), float(nb)
            return Decimal(na), Decimal(nb)
    if isinstance(a, datetime | date) and isinstance(b, str):
        return a, _as_temporal(b, a)
    if isinstance(b, datetime | date) and isinstance(a, str):
        return _as_temporal(a, b), b
    return str(a), str(b)


def _as_temporal(text: str, like: date) -> Any:
    kind = "DATETIME" if isinstance(like, datetime) else "DATE"
    try:
        return convert_text(text, SRType(kind))
    except ConversionError:
        return text


def _truth(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return bool(value)


_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")


def _to_binary(value: Any, binary_type: str) -> bytes | None:
    """``to_binary(str[, binary_type])`` as the BE runs it (``binary_functions.cpp``).

    The type is matched case-insensitively and anything but ``encode64``/``utf8`` means
    ``hex`` (``BinaryFormatState::to_binary_format``). hex is ``unhex``: odd length or a
    non-hex character gives an empty binary. encode64 is ``from_base64``: empty or invalid
    input gives NULL (the function docs say an empty binary; the BE code returns NULL).
    """
    if value is None:
        return None
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    kind = binary_type.lower()
    if kind == "utf8":
        return raw
    if kind == "encode64":
        if not raw:
            return None
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error:
            return None
    text = raw.decode("latin-1")  # only ASCII hex digits can match
    return bytes.fromhex(text) if _HEX_RE.fullmatch(text) else b""


def _eval(node: exp.Expression, env: Mapping[str, Any]) -> Any:
    if isinstance(node, exp.Column):
        return env.get(node.name.lower())
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        text = str(node.this)
        return Decimal(text) if any(ch in text for ch in ".eE") else int(text)
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if isinstance(node, exp.Paren):
        return _eval(node.this, env)
    if isinstance(node, exp.Neg):
        value = _number(_eval(node.this, env))
        return None if value is None else -value
    if type(node) in _BINARY:
        left, right = _number(_eval(node.this, env)), _number(_eval(node.expression, env))
        if left is None or right is None:
            return None
        if isinstance(node, exp.Div | exp.Mod) and right == 0:
            return None
        if isinstance(node, exp.Div):
            return Decimal(left) / Decimal(right)
        return _BINARY[type(node)](left, right)
    if type(node) in _COMPARE:
        left, right = _eval(node.this, env), _eval(node.expression, env)
        if left is None or right is None:
            return None
        return _COMPARE[type(node)](*_coerce(left, right))
    if isinstance(node, exp.And):
        left, right = _truth(_eval(node.this, env)), _truth(_eval(node.expression, env))
        if left is False or right is False:
            return False
        return None if left is None or right is None else True
    if isinstance(node, exp.Or):
        left, right = _truth(_eval(node.this, env)), _truth(_eval(node.expression, env))
        if left or right:
            return True
        return None if left is None or right is None else False
    if isinstance(node, exp.Not):
        value = _truth(_eval(node.this, env))
        return None if value is None else not value
    if isinstance(node, exp.Is):
        return _eval(node.this, env) is None
    if isinstance(node, exp.In):
        value = _eval(node.this, env)
        if value is None:
            return None
        return any(
            operator.eq(*_coerce(value, _eval(e, env)))
            for e in node.expressions
            if _eval(e, env) is not None
        )
    if isinstance(node, exp.Between):
        value, low, high = (
            _eval(node.this, env), _eval(node.args["low"], env), _eval(node.args["high"], env)
        )
        if value is None or low is None or high is None:
            return None
        a, lo = _coerce(value, low)
        b, hi = _coerce(value, high)
        return lo <= a and b <= hi
    if isinstance(node, exp.If):
        cond = _truth(_eval(node.this, env))
        branch = node.args.get("true") if cond else node.args.get("false")
        return None if branch is None else _eval(branch, env)
    if isinstance(node, exp.Case):
        subject = node.this
        for when in node.args.get("ifs") or []:
            if subject is not None:
                left, right = _eval(subject, env), _eval(when.this, env)
                hit = left is not None and right is not None and operator.eq(*_coerce(left, right))
            else:
                hit = bool(_truth(_eval(when.this, env)))
            if hit:
                return _eval(when.args["true"], env)
        default = node.args.get("default")
        return None if default is None else _eval(default, env)
    if isinstance(node, exp.Coalesce):
        for part in [node.this, *node.expressions]:
            value = _eval(part, env)
            if value is not None:
                return value
        return None
    if isinstance(node, exp.Concat | exp.DPipe):
        parts = [node.this, node.expression] if isinstance(node, exp.DPipe) else node.expressions
        values = [_eval(p, env) for p in parts]
        if any(v is None for v in values):
            return None
        return "".join(str(v) for v in values)
    if isinstance(node, exp.Upper | exp.Lower):
        value = _eval(node.this, env)
        if value is None:
            return None
        return str(value).upper() if isinstance(node, exp.Upper) else str(value).lower()
    if isinstance(node, exp.Trim):
        value = _eval(node.this, env)
        return None if value is None else str(value).strip()
    if isinstance(node, exp.ToBinary):
        fmt = node.args.get("format")
        # The BE reads only a constant, non-NULL type; otherwise it decodes hex.
        kind = fmt.this if isinstance(fmt, exp.Literal) and fmt.is_string else "hex"
        return _to_binary(_eval(node.this, env), kind)
    if isinstance(node, exp.Cast):
        value = _eval(node.this, env)
        if value is None:
            return None
        try:
            target = from_sqlglot(node.to)
            if isinstance(value, str):
                return convert_text(value, target)
            return convert_json(value, target)
        except (ConversionError, TypeError_):
            return None
    raise LoadError(f"The StarRocks emulator cannot evaluate '{node.sql('starrocks')}'")
