"""Type mapping and DDL text for StarRocks (no server needed)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from dbmazz.errors import SetupError
from dbmazz.pipeline.batch import ColumnSpec, TableSchema
from dbmazz.sink.starrocks.catalog import normalise_info_type
from dbmazz.sink.starrocks.ddl import (
    TypeOptions,
    UnsupportedType,
    add_columns_sql,
    column_type,
    create_table_sql,
    is_safe_widening,
    modify_column_sql,
)
from dbmazz.sink.starrocks.mysql import quote_ident, quote_literal
from dbmazz.sink.starrocks.schema import check_target_names


def spec(name: str, t: pa.DataType, pg: str = "", typmod: int = -1) -> ColumnSpec:
    return ColumnSpec(name, t, 0, typmod, pg)


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (spec("c", pa.bool_(), "bool"), "BOOLEAN"),
        (spec("c", pa.int16(), "int2"), "SMALLINT"),
        (spec("c", pa.int32(), "int4"), "INT"),
        (spec("c", pa.int64(), "int8"), "BIGINT"),
        (spec("c", pa.float32(), "float4"), "FLOAT"),
        (spec("c", pa.float64(), "float8"), "DOUBLE"),
        (spec("c", pa.decimal128(12, 3), "numeric"), "DECIMAL(12,3)"),
        (spec("c", pa.string(), "numeric"), "DECIMAL(38,9)"),
        (spec("c", pa.string(), "numeric", ((40 << 16) | 2) + 4), "VARCHAR(1048576)"),
        (spec("c", pa.string(), "text"), "VARCHAR(1048576)"),
        (spec("c", pa.string(), "varchar", 10 + 4), "VARCHAR(40)"),
        (spec("c", pa.string(), "bpchar", 3 + 4), "VARCHAR(12)"),
        (spec("c", pa.string(), "varchar", 400_000 + 4), "VARCHAR(1048576)"),
        (spec("c", pa.string(), "uuid"), "VARCHAR(1048576)"),
        (spec("c", pa.string(), "json"), "JSON"),
        (spec("c", pa.string(), "jsonb"), "JSON"),
        (spec("c", pa.binary(), "bytea"), "VARBINARY"),
        (spec("c", pa.date32(), "date"), "DATE"),
        (spec("c", pa.timestamp("us"), "timestamp"), "DATETIME"),
        (spec("c", pa.timestamp("us", "UTC"), "timestamptz"), "DATETIME"),
        (spec("c", pa.string(), "time"), "VARCHAR(32)"),
        (spec("c", pa.duration("us"), "interval"), "BIGINT"),
        (spec("c", pa.list_(pa.int32()), "_int4"), "ARRAY<INT>"),
        (spec("c", pa.list_(pa.string()), "_text"), "ARRAY<VARCHAR(1048576)>"),
        # Items arrive as hex text: an ARRAY<VARBINARY> would hold the text's bytes.
        (spec("c", pa.list_(pa.binary()), "_bytea"), "ARRAY<VARCHAR(1048576)>"),
        (spec("c", pa.list_(pa.list_(pa.decimal128(5, 1))), ""), "ARRAY<ARRAY<DECIMAL(5,1)>>"),
        (spec("c", pa.string(), "inet"), "VARCHAR(1048576)"),
    ],
)
def test_column_types(column: ColumnSpec, expected: str) -> None:
    assert column_type(column) == expected


def test_unconstrained_numeric_as_string_when_configured() -> None:
    c = spec("c", pa.string(), "numeric")
    assert column_type(c, opts=TypeOptions(unconstrained_numeric="string")) == "VARCHAR(1048576)"


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        (spec("k", pa.decimal128(10, 2), "numeric"), "VARCHAR(12)"),
        (spec("k", pa.decimal128(2, 2), "numeric"), "VARCHAR(5)"),  # "-0.99"
        (spec("k", pa.string(), "numeric"), "VARCHAR(65533)"),
        (spec("k", pa.float64(), "float8"), "VARCHAR(64)"),
        (spec("k", pa.string(), "text"), "VARCHAR(65533)"),
        (spec("k", pa.string(), "jsonb"), "VARCHAR(65533)"),
        (spec("k", pa.binary(), "bytea"), "VARCHAR(65533)"),
        (spec("k", pa.int64(), "int8"), "BIGINT"),
        (spec("k", pa.timestamp("us"), "timestamp"), "DATETIME"),
        (spec("k", pa.string(), "varchar", 36 + 4), "VARCHAR(144)"),
    ],
)
def test_key_column_types(column: ColumnSpec, expected: str) -> None:
    assert column_type(column, key=True) == expected


def test_array_key_is_refused() -> None:
    with pytest.raises(UnsupportedType):
        column_type(spec("k", pa.list_(pa.int32())), key=True)


def schema(name: str = "t", target: str | None = None, ns: str = "public") -> TableSchema:
    cols = (
        spec("v", pa.string(), "text"),
        spec("id", pa.int64(), "int8"),
        spec("Amount", pa.decimal128(10, 2), "numeric"),
    )
    return TableSchema(ns, name, cols, ("id",), target or name)


def test_create_table_puts_keys_first_and_audit_last() -> None:
    sql = create_table_sql("db", schema(), properties={"replication_num": "3"})
    assert sql == (
        "CREATE TABLE IF NOT EXISTS `db`.`t` (\n"
        "  `id` BIGINT NOT NULL,\n"
        "  `v` VARCHAR(1048576) NULL,\n"
        "  `Amount` DECIMAL(10,2) NULL,\n"
        "  `dbmazz_op_type` TINYINT NULL,\n"
        "  `dbmazz_is_deleted` BOOLEAN NULL,\n"
        "  `dbmazz_synced_at` DATETIME NULL,\n"
        "  `dbmazz_cdc_version` BIGINT NULL\n"
        ")\n"
        "PRIMARY KEY (`id`)\n"
        "DISTRIBUTED BY HASH (`id`)\n"
        'PROPERTIES ("replication_num" = "3")'
    )


def test_hostile_identifiers_are_quoted() -> None:
    assert quote_ident("a`b") == "`a``b`"
    assert quote_ident("x y 'z' \"w\" ✓") == "`x y 'z' \"w\" ✓`"
    assert quote_literal("it's \\ here") == "'it\\'s \\\\ here'"
    weird = TableSchema(
        "s",
        "t",
        (spec("we`ird col", pa.int32()), spec("%s", pa.string())),
        ("we`ird col",),
        "Tab`le %d",
    )
    sql = create_table_sql("d`b", weird)
    assert "CREATE TABLE IF NOT EXISTS `d``b`.`Tab``le %d`" in sql
    assert "`we``ird col` INT NOT NULL" in sql and "`%s` VARCHAR(1048576) NULL" in sql
    assert "PRIMARY KEY (`we``ird col`)" in sql


def test_alter_statements() -> None:
    assert add_columns_sql("db", "t", [("a", "INT")]) == (
        "ALTER TABLE `db`.`t` ADD COLUMN `a` INT NULL"
    )
    assert add_columns_sql("db", "t", [("a", "INT"), ("b c", "JSON")]) == (
        "ALTER TABLE `db`.`t` ADD COLUMN (`a` INT NULL, `b c` JSON NULL)"
    )
    assert modify_column_sql("db", "t", "a", "BIGINT") == (
        "ALTER TABLE `db`.`t` MODIFY COLUMN `a` BIGINT NULL"
    )


@pytest.mark.parametrize(
    ("old", "new", "safe"),
    [
        ("SMALLINT", "INT", True),
        ("INT", "BIGINT", True),
        ("BIGINT", "INT", False),
        ("FLOAT", "DOUBLE", True),
        ("DOUBLE", "FLOAT", False),
        ("DECIMAL(10,2)", "DECIMAL(12,2)", True),
        ("DECIMAL(10,2)", "DECIMAL(12,3)", False),
        ("VARCHAR(40)", "VARCHAR(80)", True),
        ("VARCHAR(40)", "STRING", True),
        ("VARCHAR(80)", "VARCHAR(40)", False),
        ("INT", "STRING", False),
        ("STRING", "VARCHAR(65533)", True),
    ],
)
def test_safe_widenings(old: str, new: str, safe: bool) -> None:
    assert is_safe_widening(old, new) is safe


@pytest.mark.parametrize(
    ("info", "sql"),
    [
        ("int(11)", "INT"),
        ("bigint(20)", "BIGINT"),
        ("tinyint(1)", "BOOLEAN"),
        ("tinyint(4)", "TINYINT"),
        ("bigint(20) unsigned", "LARGEINT"),
        ("decimal(10,2)", "DECIMAL(10,2)"),
        ("varchar(65533)", "VARCHAR(65533)"),
        ("json", "JSON"),
    ],
)
def test_information_schema_types_normalise(info: str, sql: str) -> None:
    assert normalise_info_type(info) == sql


def test_two_sources_one_target_is_refused() -> None:
    with pytest.raises(SetupError, match="TABLE_MAP"):
        check_target_names([schema("items", ns="a"), schema("items", ns="b")])
    check_target_names([schema("items", ns="a"), schema("items", "b_items", ns="b")])


def test_line_breaks_in_names_are_refused() -> None:
    with pytest.raises(SetupError, match="line break"):
        check_target_names([schema("t", "bad\nname")])


def test_an_array_of_varbinary_for_bytea_items_is_lossy() -> None:
    from dbmazz.sink.starrocks.typecheck import compare

    verdict = compare("ARRAY<VARCHAR(1048576)>", "ARRAY<VARBINARY>")
    assert verdict is not None and verdict[0] == "lossy" and "hex text" in verdict[1]
