"""Making target tables match source tables: create, verify, add columns, widen types.

Used by :class:`~dbmazz.sink.starrocks.sink.StarRocksSink` and by
:mod:`dbmazz.sink.starrocks.setup`. With ``setup="skip"`` nothing is changed: tables are
only checked against information_schema and every missing column is reported at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from dbmazz.contract import AUDIT_NAMES
from dbmazz.errors import SetupError
from dbmazz.pipeline.batch import SchemaDelta, TableSchema
from dbmazz.sink.starrocks.catalog import Catalog, TargetTable, normalise_info_type
from dbmazz.sink.starrocks.ddl import (
    UnsupportedType,
    add_columns_sql,
    column_definitions,
    column_type,
    create_table_sql,
    is_safe_widening,
    missing_columns,
    modify_column_sql,
    same_type,
)
from dbmazz.sink.starrocks.settings import StarRocksSettings

log = logging.getLogger("dbmazz.sink.starrocks")


@dataclass
class PrepareReport:
    created: list[str] = field(default_factory=list)
    #: target table → columns added (or modified) by this run
    altered: dict[str, list[str]] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)
    tables: dict[str, TargetTable] = field(default_factory=dict)


def check_target_names(tables: Iterable[TableSchema]) -> None:
    """Fail when two source tables would load into one target, or a name cannot be used."""
    seen: dict[str, str] = {}
    for t in tables:
        if not t.target_name:
            raise SetupError(f"{t.source_name} has an empty target table name")
        names = [t.target_name, *t.column_names]
        if any(ch in n for n in names for ch in "\r\n\x00"):
            raise SetupError(
                f"{t.source_name}: a table or column name contains a line break or NUL, "
                "which Stream Load headers cannot carry",
                "rename it at the source, or map the table with TABLE_MAP",
            )
        other = seen.get(t.target_name)
        if other is not None and other != t.source_name:
            raise SetupError(
                f"{other} and {t.source_name} would both load into StarRocks table "
                f"{t.target_name!r}",
                f"rename one with TABLE_MAP, e.g. TABLE_MAP={t.source_name}:{t.namespace}_{t.name}",
            )
        seen[t.target_name] = t.source_name


def _check_keys(schema: TableSchema, target: TargetTable) -> None:
    keys = {k.lower() for k in target.key_names}
    wanted = {k.lower() for k in schema.key_columns}
    if keys and keys != wanted:
        raise SetupError(
            f"StarRocks table {target.db}.{target.name} has primary key "
            f"({', '.join(target.key_names)}) but {schema.source_name} has "
            f"({', '.join(schema.key_columns)})",
            "upserts and deletes match rows by key: recreate the table with the source key",
        )


def validate_table(catalog: Catalog, schema: TableSchema) -> TargetTable:
    """SETUP=skip: the table must exist with every source and audit column."""
    target = catalog.describe(schema.target_name)
    if target is None:
        raise SetupError(
            f"StarRocks table {catalog.db}.{schema.target_name} (for {schema.source_name}) "
            "does not exist",
            "create it, or run with SETUP=auto and CREATE_TABLES=true",
        )
    missing = missing_columns([*schema.column_names, *AUDIT_NAMES], target.names)
    if missing:
        raise SetupError(
            f"StarRocks table {catalog.db}.{schema.target_name} lacks columns "
            f"{', '.join(missing)} of {schema.source_name}",
            "add them (SETUP=skip never changes tables), or run with SETUP=auto",
        )
    _check_keys(schema, target)
    return target


def _definitions(schema: TableSchema, settings: StarRocksSettings) -> list[tuple[str, str, bool]]:
    try:
        return column_definitions(schema, settings.type_options)
    except UnsupportedType as exc:
        raise SetupError(f"cannot map {schema.source_name} to StarRocks: {exc}") from None


def prepare_table(
    catalog: Catalog, schema: TableSchema, settings: StarRocksSettings, report: PrepareReport
) -> TargetTable:
    """Create the table, or add the columns it lacks; returns what it holds afterwards."""
    reserved = [c for c in schema.column_names if c.lower() == "__op"]
    if reserved:
        raise SetupError(
            f"{schema.source_name} has column {reserved[0]}: StarRocks reserves the name "
            "__op (any case) for a load's operation (upsert or delete), so no table can "
            "have it",
            "rename the column at the source, or leave it out with a column list on the "
            "publication (PostgreSQL 15+)",
        )
    if settings.setup == "skip":
        checked = validate_table(catalog, schema)
        report.verified.append(schema.target_name)
        report.tables[schema.target_name] = checked
        return checked
    wanted = _definitions(schema, settings)
    target = catalog.describe(schema.target_name)
    if target is None:
        if not settings.create_tables:
            raise SetupError(
                f"StarRocks table {catalog.db}.{schema.target_name} (for {schema.source_name}) "
                "does not exist",
                "create it, or set CREATE_TABLES=true",
            )
        sql = create_table_sql(
            catalog.db, schema, properties=settings.table_properties, opts=settings.type_options
        )
        catalog.execute(sql, f"create table {catalog.db}.{schema.target_name}")
        created = catalog.describe(schema.target_name)
        if created is None:
            raise SetupError(f"StarRocks did not create {catalog.db}.{schema.target_name}")
        log.info("created StarRocks table %s.%s", catalog.db, schema.target_name)
        report.created.append(schema.target_name)
        report.tables[schema.target_name] = created
        return created
    _check_keys(schema, target)
    target = _add_missing(catalog, schema, target, wanted, report)
    if schema.target_name not in report.altered:
        report.verified.append(schema.target_name)
    report.tables[schema.target_name] = target
    return target


def _add_missing(
    catalog: Catalog,
    schema: TableSchema,
    target: TargetTable,
    wanted: Sequence[tuple[str, str, bool]],
    report: PrepareReport,
) -> TargetTable:
    adds = [(n, t) for n, t, key in wanted if not target.has(n)]
    keys_missing = [n for n, t, key in wanted if key and not target.has(n)]
    if keys_missing:
        raise SetupError(
            f"StarRocks table {catalog.db}.{schema.target_name} lacks key columns "
            f"{', '.join(keys_missing)}",
            "key columns cannot be added to a Primary Key table: recreate it",
        )
    if not adds:
        return target
    names = [n for n, _ in adds]
    catalog.alter(
        schema.target_name,
        add_columns_sql(catalog.db, schema.target_name, adds),
        done=lambda t: all(t.has(n) for n in names),
    )
    log.info("added columns %s to %s.%s", names, catalog.db, schema.target_name)
    report.altered.setdefault(schema.target_name, []).extend(names)
    described = catalog.describe(schema.target_name)
    if described is None:
        raise SetupError(f"StarRocks table {catalog.db}.{schema.target_name} disappeared")
    return described


def prepare_tables(
    catalog: Catalog, tables: Sequence[TableSchema], settings: StarRocksSettings
) -> PrepareReport:
    check_target_names(tables)
    report = PrepareReport()
    for schema in tables:
        prepare_table(catalog, schema, settings, report)
    if settings.setup == "skip":
        check_types(tables, report, settings)
    return report


def check_types(tables: Sequence[TableSchema], report: PrepareReport,
                settings: StarRocksSettings) -> None:
    """SETUP=skip: every column must take what dbmazz sends; all mismatches in one error,
    before the first load (tables dbmazz created or altered match by construction)."""
    from dbmazz.sink.starrocks.typecheck import describe_mismatches, type_mismatches

    found = [m for schema in tables if schema.target_name in report.tables
             for m in type_mismatches(schema, report.tables[schema.target_name],
                                      settings.type_options)]
    for mismatch in (m for m in found if m.severity == "warning"):
        log.warning("%s", mismatch.text)
    errors = [m for m in found if m.severity != "warning"]
    if errors:
        raise SetupError(
            f"StarRocks columns cannot take what dbmazz sends: {describe_mismatches(errors)}",
            "widen or change those columns to the types in docs/types.md (ALTER TABLE ... "
            "MODIFY COLUMN), or let dbmazz create the tables (SETUP=auto)")


def apply_delta(catalog: Catalog, delta: SchemaDelta, settings: StarRocksSettings) -> TargetTable:
    """Bring the target table to ``delta.after``: add columns, widen retyped ones.

    Dropped source columns stay in the target (their old values are kept, or the pipeline
    fills NULL, per DROPPED_COLUMNS).
    """
    schema = delta.after
    report = PrepareReport()
    target = prepare_table(catalog, schema, settings, report)
    if settings.setup == "skip":
        return target
    from dbmazz.sink.starrocks.typecheck import compare

    keys = {k.lower() for k in schema.key_columns}
    for old, new in delta.retyped:
        current = target.column(new.name)
        if current is None:
            continue
        is_key = new.name.lower() in keys
        try:
            old_sql = column_type(old, key=is_key, opts=settings.type_options)
            new_sql = column_type(new, key=is_key, opts=settings.type_options)
        except UnsupportedType as exc:
            raise SetupError(f"cannot map {schema.source_name}.{new.name}: {exc}") from None
        held = normalise_info_type(current.column_type)
        if same_type(held, new_sql) or same_type(old_sql, new_sql) or compare(new_sql,
                                                                              held) is None:
            # The column takes every value of the new type as it is: a narrowing, or the
            # older shape a replay after a crash shows before the newer one.
            continue
        where = f"{catalog.db}.{schema.target_name}.{new.name}"
        if is_key or not is_safe_widening(old_sql, new_sql):
            raise SetupError(
                f"{schema.source_name}.{new.name} changed type "
                f"({old.pg_type_name or old.arrow_type} as {old_sql} → "
                f"{new.pg_type_name or new.arrow_type} as {new_sql}); "
                f"StarRocks column {where} is "
                f"{current.column_type} and cannot be converted to {new_sql} without loss",
                "alter the StarRocks column yourself (or recreate the table) and restart",
            )
        target = _modify(catalog, schema, current.name, new_sql)
    return _retype_readded(catalog, delta, target, settings)


def _modify(catalog: Catalog, schema: TableSchema, name: str, new_sql: str) -> TargetTable:
    """MODIFY COLUMN ``name`` to ``new_sql`` and wait for it; the table afterwards."""
    catalog.alter(
        schema.target_name,
        modify_column_sql(catalog.db, schema.target_name, name, new_sql),
        done=_type_check(name, new_sql),
    )
    log.info("changed %s.%s.%s to %s", catalog.db, schema.target_name, name, new_sql)
    described = catalog.describe(schema.target_name)
    if described is None:
        raise SetupError(f"StarRocks table {catalog.db}.{schema.target_name} disappeared")
    return described


def _retype_readded(catalog: Catalog, delta: SchemaDelta, target: TargetTable,
                    settings: StarRocksSettings) -> TargetTable:
    """Columns added at the source that the target still holds with a type that cannot
    take their values (dropped and added again under the same name with another type):
    widened like a retyped column, or an error naming them."""
    from dbmazz.sink.starrocks.typecheck import type_mismatches

    schema = delta.after
    if delta.before is None:
        return target  # the first shape of a run: setup's checks apply, not a change
    added = {c.name.lower() for c in delta.added}
    keys = {k.lower() for k in schema.key_columns}
    for mismatch in type_mismatches(schema, target, settings.type_options):
        if mismatch.column.lower() not in added or mismatch.severity == "warning":
            continue
        if mismatch.column.lower() in keys or not is_safe_widening(mismatch.actual,
                                                                   mismatch.sent):
            raise SetupError(
                f"{schema.source_name}.{mismatch.column} was added at the source as "
                f"{mismatch.sent}, but StarRocks column {catalog.db}.{schema.target_name}."
                f"{mismatch.column} (there already: a column dropped earlier, or made by hand) is "
                f"{mismatch.actual} and cannot take its values ({mismatch.why})",
                "alter or drop the StarRocks column yourself and restart",
            )
        target = _modify(catalog, schema, mismatch.column, mismatch.sent)
    return target


def _type_check(name: str, sql_type: str) -> Callable[[TargetTable], bool]:
    def done(target: TargetTable) -> bool:
        column = target.column(name)
        return column is not None and same_type(normalise_info_type(column.column_type), sql_type)

    return done
