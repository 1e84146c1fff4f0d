"""CREATE TABLE / ALTER TABLE statements (sqlglot's starrocks dialect) to catalog objects.

Validation follows the Primary Key rules of the reference (§5): key columns first and in
key order, NOT NULL, of an allowed key type; distribution columns among the keys.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp

from dbmazz.testing.starrocks.catalog import AlterAction, Column, Default, Ids, KeysType, Table
from dbmazz.testing.starrocks.coltypes import (
    KEY_TYPES,
    ConversionError,
    SRType,
    TypeError_,
    convert_text,
    from_sqlglot,
)
from dbmazz.testing.starrocks.errors import ER_DUP_FIELDNAME, ER_NO_DB_ERROR, SRError


def table_ref(node: exp.Table, current_db: str | None) -> tuple[str, str]:
    db = node.args.get("db")
    db_name = db.name if isinstance(db, exp.Identifier) else current_db
    if not db_name:
        raise SRError("No database selected", ER_NO_DB_ERROR)
    return db_name, node.name


def column_from_def(cdef: exp.ColumnDef) -> Column:
    return _column_def(cdef)[0]


def _column_def(cdef: exp.ColumnDef) -> tuple[Column, bool]:
    """The column, and whether NULL was written explicitly (a key may not say so)."""
    name = cdef.name
    if name.lower() == "__op":
        raise SRError("Column name '__op' is reserved for the load operation type")
    kind = cdef.args.get("kind")
    if not isinstance(kind, exp.DataType):
        raise SRError(f"Column '{name}' has no type")
    try:
        sr_type = from_sqlglot(kind)
    except TypeError_ as e:
        raise SRError(str(e)) from e
    column = Column(name=name, type=sr_type)
    nullable: bool | None = None
    for constraint in cdef.args.get("constraints") or []:
        ckind = constraint.args.get("kind")
        if isinstance(ckind, exp.NotNullColumnConstraint):
            nullable = bool(ckind.args.get("allow_null"))
        elif isinstance(ckind, exp.DefaultColumnConstraint):
            column.default = _default(name, ckind.this, sr_type)
        elif isinstance(ckind, exp.CommentColumnConstraint):
            column.comment = ckind.this.name
        elif isinstance(ckind, exp.AutoIncrementColumnConstraint):
            raise SRError("The emulator does not support AUTO_INCREMENT columns")
    column.nullable = True if nullable is None else nullable
    return column, nullable is True


def _default(name: str, node: exp.Expression, sr_type: SRType) -> Default:
    if isinstance(node, exp.Null):
        return Default(value=None, text=None)
    if isinstance(node, exp.CurrentTimestamp) or node.name.upper() in ("NOW", "CURRENT_TIMESTAMP"):
        if sr_type.name != "DATETIME":
            raise SRError(f"Invalid default value for '{name}'")
        return Default(current_timestamp=True, text="CURRENT_TIMESTAMP")
    if isinstance(node, exp.Literal):
        text = node.this
        try:
            return Default(value=convert_text(str(text), sr_type), text=str(text))
        except ConversionError as e:
            raise SRError(f"Invalid default value for '{name}': {e}") from e
    raise SRError(f"Unsupported default value for '{name}': {node.sql()}")


def table_from_create(stmt: exp.Create, current_db: str | None, ids: Ids) -> Table:
    schema = stmt.this
    if not isinstance(schema, exp.Schema) or not isinstance(schema.this, exp.Table):
        raise SRError("CREATE TABLE ... AS SELECT and LIKE are not supported by the emulator")
    db_name, name = table_ref(schema.this, current_db)
    columns: list[Column] = []
    explicit_null: set[str] = set()
    keys: list[str] | None = None
    keys_type: KeysType = "DUP_KEYS"
    for item in schema.expressions:
        if isinstance(item, exp.ColumnDef):
            column, explicit = _column_def(item)
            columns.append(column)
            if explicit:
                explicit_null.add(column.lname)
        elif isinstance(item, exp.PrimaryKey):
            keys = [e.name for e in item.expressions]
            keys_type = "PRIMARY_KEYS"
        else:
            raise SRError(f"Unsupported table element: {item.sql('starrocks')}")
    distribution: list[str] = []
    buckets: int | None = None
    properties: dict[str, str] = {}
    comment = ""
    for prop in (stmt.args.get("properties") or exp.Properties(expressions=[])).expressions:
        if isinstance(prop, exp.PrimaryKey):
            keys = [e.name for e in prop.expressions]
            keys_type = "PRIMARY_KEYS"
        elif isinstance(prop, exp.DuplicateKeyProperty):
            keys = [e.name for e in prop.expressions]
        elif isinstance(prop, exp.UniqueKeyProperty | exp.AggregateKeyProperty):
            raise SRError("The emulator supports only PRIMARY KEY and DUPLICATE KEY tables")
        elif isinstance(prop, exp.DistributedByProperty):
            distribution = [e.name for e in prop.expressions]
            b = prop.args.get("buckets")
            buckets = int(b.name) if b is not None and b.name.isdigit() else None
        elif isinstance(prop, exp.SchemaCommentProperty):
            comment = prop.this.name
        elif isinstance(prop, exp.Property):
            key = prop.this.name if isinstance(prop.this, exp.Expression) else str(prop.this)
            value = prop.args.get("value")
            properties[key] = value.name if isinstance(value, exp.Expression) else str(value)
    _validate(name, columns, keys_type, keys or [], distribution, explicit_null)
    key_names = keys if keys is not None else [columns[0].name] if columns else []
    by_name = {c.lname: c for c in columns}
    canonical_keys = [by_name[k.lower()].name for k in key_names if k.lower() in by_name]
    for k in canonical_keys:
        column = by_name[k.lower()]
        column.is_key = keys_type == "PRIMARY_KEYS" or keys is not None
        if keys_type == "PRIMARY_KEYS":
            column.nullable = False
    return Table(
        id=ids.next("table"),
        db_name=db_name,
        name=name,
        columns=columns,
        keys_type=keys_type,
        key_names=canonical_keys,
        distribution=[by_name[d.lower()].name for d in distribution if d.lower() in by_name],
        buckets=buckets,
        properties=properties,
        comment=comment,
    )


def _validate(
    table: str,
    columns: list[Column],
    keys_type: KeysType,
    keys: list[str],
    distribution: list[str],
    explicit_null: set[str],
) -> None:
    if not columns:
        raise SRError("Table must have at least one column")
    seen: set[str] = set()
    for c in columns:
        if c.lname in seen:
            raise SRError(f"Duplicate column name '{c.name}'", ER_DUP_FIELDNAME)
        seen.add(c.lname)
    for k in keys:
        if k.lower() not in seen:
            raise SRError(f"Key column '{k}' does not exist in table '{table}'")
    if [c.lname for c in columns[: len(keys)]] != [k.lower() for k in keys]:
        raise SRError("Key columns should be a ordered prefix of the schema.")
    if keys_type == "PRIMARY_KEYS":
        if not keys:
            raise SRError("Primary key table must have a PRIMARY KEY clause")
        for c in columns[: len(keys)]:
            if c.lname in explicit_null:
                raise SRError(f"primary key column[{c.name}] cannot be nullable")
            if c.type.name not in KEY_TYPES:
                raise SRError(
                    f"Invalid data type of primary key column '{c.name}': '{c.type.sql()}'"
                )
        for d in distribution:
            if d.lower() not in {k.lower() for k in keys}:
                raise SRError(f"Distribution column[{d}] is not a primary key column")
    for d in distribution:
        if d.lower() not in seen:
            raise SRError(f"Distribution column[{d}] does not exist")


# -- ALTER TABLE ----------------------------------------------------------------------------

_ADD_LIST = re.compile(
    r"^(?P<head>\s*ALTER\s+TABLE\s+.+?\s+ADD\s+COLUMN)\s*\((?P<body>.*)\)\s*;?\s*$",
    re.IGNORECASE | re.DOTALL,
)


def split_top_level(text: str, sep: str = ",") -> list[str]:
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"`":
            quote = ch
        elif ch in "(<":
            depth += 1
        elif ch in ")>":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def is_add_column_list(sql: str) -> bool:
    return _ADD_LIST.match(sql) is not None


def parse_alter(sql: str) -> exp.Alter:
    """Parse ALTER TABLE, rewriting ``ADD COLUMN (a INT, b INT)`` which sqlglot lacks."""
    match = _ADD_LIST.match(sql)
    if match:
        head = match.group("head")
        prefix = head[: head.upper().rfind("ADD")]
        items = split_top_level(match.group("body"))
        sql = prefix + ", ".join(f"ADD COLUMN {item}" for item in items)
    try:
        stmt = sqlglot.parse_one(sql, read="starrocks")
    except sqlglot.errors.ParseError as e:
        raise SRError(f"Getting syntax error. {e}") from e
    if not isinstance(stmt, exp.Alter):
        raise SRError(f"The emulator does not support this ALTER statement: {sql}")
    return stmt


def alter_actions(stmt: exp.Alter) -> list[AlterAction]:
    actions: list[AlterAction] = []
    for action in stmt.args.get("actions") or []:
        if isinstance(action, exp.ColumnDef):
            actions.append(
                AlterAction("ADD", action.name, column_from_def(action), _position(action))
            )
        elif isinstance(action, exp.Drop) and str(action.args.get("kind", "")).upper() == "COLUMN":
            for col in action.args.get("tables") or []:
                actions.append(AlterAction("DROP", col.name))
        elif type(action).__name__ == "ModifyColumn" and isinstance(action.this, exp.ColumnDef):
            cdef = action.this
            actions.append(
                AlterAction("MODIFY", cdef.name, column_from_def(cdef), _position(cdef))
            )
        else:
            raise SRError(
                f"The emulator does not support this ALTER TABLE clause: {action.sql('starrocks')}"
            )
    if not actions:
        raise SRError("ALTER TABLE without a clause")
    return actions


def _position(cdef: exp.ColumnDef) -> tuple[str, str | None] | None:
    pos = cdef.args.get("position")
    if not isinstance(pos, exp.ColumnPosition):
        return None
    where = str(pos.args.get("position") or "").upper()
    if where == "FIRST":
        return ("FIRST", None)
    target = pos.this
    return ("AFTER", target.name if isinstance(target, exp.Expression) else None)
