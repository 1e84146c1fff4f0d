"""Relation cache: Relation messages → :class:`TableSchema`, diffed by content into deltas.

The walsender re-sends a Relation message after cache invalidations even when nothing
changed, so a message is a change only if its content differs from the cached one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from dbmazz.contract import AUDIT_NAMES, METADATA_PREFIX
from dbmazz.errors import SetupError
from dbmazz.pipeline.batch import ColumnSpec, SchemaDelta, TableSchema
from dbmazz.source.catalog import split_table_name
from dbmazz.source.pgoutput import Relation
from dbmazz.source.types import BUILTIN_TYPE_NAMES, TypeRegistry, arrow_type

KeyResolver = Callable[[Relation], tuple[str, ...]]

_AUDIT_LOWER = frozenset(name.lower() for name in AUDIT_NAMES)


class KeyCatalog(Protocol):
    """The source's catalog, asked for a table's key as it is now
    (:class:`dbmazz.source.catalog.CurrentKeys`)."""

    def current_key(self, oid: int) -> tuple[str, ...] | None:
        """``()`` when the table has no key now, None when it is gone."""
        ...

    def close(self) -> None: ...


class TableKeys:
    """The replicated tables and their primary keys, by ``'schema.table'``.

    A live engine's set grows while it streams (an on-demand snapshot adds tables from its
    own thread while the reader resolves keys), so additions go through :meth:`add`.
    """

    def __init__(self, keys: Mapping[str, Sequence[str]] | None = None) -> None:
        self._keys = {name: tuple(cols) for name, cols in (keys or {}).items()}
        self._lock = threading.Lock()

    def add(self, keys: Mapping[str, Sequence[str]]) -> None:
        with self._lock:
            self._keys = {**self._keys, **{name: tuple(cols) for name, cols in keys.items()}}

    def get(self, table: str) -> tuple[str, ...] | None:
        return self._keys.get(table)

    def __contains__(self, table: object) -> bool:
        return table in self._keys

    def replicated(self, relation: Relation) -> bool:
        """Whether ``relation`` is one of the tables (a :class:`SchemaCache` ``accept``)."""
        return relation.qualified_name in self._keys

    def resolve(self, relation: Relation) -> tuple[str, ...]:
        """The relation's key; falls back to the identity columns when its identity is an
        index or the primary key (not FULL)."""
        keys = self._keys.get(relation.qualified_name)
        if keys:
            return keys
        if relation.replica_identity in ("d", "i") and relation.identity_columns:
            return relation.identity_columns
        raise SetupError(
            f"table {relation.qualified_name} has no primary key known to dbmazz",
            "add a PRIMARY KEY to the table (dbmazz upserts by primary key)",
        )


def keys_from_map(primary_keys: Mapping[str, Sequence[str]]) -> KeyResolver:
    """Resolve keys from ``{'schema.table': (cols…)}`` (see :meth:`TableKeys.resolve`)."""
    return TableKeys(primary_keys).resolve


class SchemaCache:
    def __init__(
        self,
        key_resolver: KeyResolver,
        table_map: Mapping[str, str] | None = None,
        types: TypeRegistry | None = None,
        accept: Callable[[Relation], bool] | None = None,
        catalog: KeyCatalog | None = None,
    ) -> None:
        self._keys = key_resolver
        #: Where a key change under REPLICA IDENTITY FULL shows (None: a replay without a
        #: source; the stream alone cannot show it).
        self._catalog = catalog
        #: Which relations are replicated. A publication shared with other consumers may
        #: carry tables dbmazz was not asked for: their messages are passed over.
        self._accept = accept
        self._table_map = {_map_key(k): v for k, v in (table_map or {}).items()}
        self.types = types if types is not None else TypeRegistry()
        self._relations: dict[int, Relation] = {}
        self._tables: dict[int, TableSchema] = {}
        #: oid → the replicated name it last had, and the latest commit LSN it had it at.
        self._replicated_as: dict[int, tuple[str, int]] = {}

    def target_name(self, relation: Relation) -> str:
        return (
            self._table_map.get(relation.qualified_name)
            or self._table_map.get(relation.name)
            or relation.name
        )

    def on_relation(self, relation: Relation, commit_lsn: int = 0) -> SchemaDelta | None:
        """Cache a Relation message of a transaction committing at ``commit_lsn`` (or a
        relation read from the catalog when the WAL was at ``commit_lsn``); return the
        delta when its content changed."""
        if not self.accepts(relation):
            self._relations[relation.oid] = relation  # truncates name it; never built
            return None
        _, at = self._replicated_as.get(relation.oid, ("", 0))
        self._replicated_as[relation.oid] = (relation.qualified_name, max(at, commit_lsn))
        known = self._tables.get(relation.oid)
        if known is not None and relation.replica_identity == "f" and self._catalog is not None:
            _check_catalog_key(self._catalog, relation, known.key_columns)
        previous = self._relations.get(relation.oid)
        if previous == relation and known is not None:
            return None
        table = self.build(relation)
        _check_identity(relation, table.key_columns, self._catalog)
        before = self._tables.get(relation.oid)
        self._relations[relation.oid] = relation
        self._tables[relation.oid] = table
        return diff(before, table)

    def close(self) -> None:
        """Close the catalog connection (opened again at the next check)."""
        if self._catalog is not None:
            self._catalog.close()

    def accepts(self, relation: Relation) -> bool:
        """Whether ``relation`` is one of the replicated tables (asked each time: an
        on-demand snapshot can add a table while streaming)."""
        return self._accept is None or self._accept(relation)

    def renamed_from(self, relation: Relation, commit_lsn: int) -> str | None:
        """The replicated name of a table whose changes, committed at ``commit_lsn``,
        arrive under ``relation``'s name, which is not replicated: the table was renamed
        (or moved to another schema) after it had that name. None when it was not, and when
        the changes predate the name (a replay from before a rename into TABLES: renaming
        waits for every transaction writing the table, so they commit before it)."""
        name, at = self._replicated_as.get(relation.oid, ("", 0))
        if not name or name == relation.qualified_name or commit_lsn <= at:
            return None
        return name

    def relation(self, oid: int) -> Relation:
        return self._relations[oid]

    def table(self, oid: int) -> TableSchema:
        return self._tables[oid]

    def tables(self) -> list[TableSchema]:
        """Every table built so far (a copy: safe while the reader adds more)."""
        return list(self._tables.values())

    def __contains__(self, oid: int) -> bool:
        return oid in self._relations

    def build(self, relation: Relation, keys: Sequence[str] | None = None) -> TableSchema:
        """The TableSchema of a relation shape (without caching it); ``keys``: its key, when
        known before the key map holds it."""
        keys = tuple(keys) if keys is not None else self._keys(relation)
        names = set(relation.column_names)
        # Target column names compare without case (StarRocks, DuckDB).
        taken = sorted(n for n in names if n.lower() in _AUDIT_LOWER)
        if taken:
            raise SetupError(
                f"{relation.qualified_name} has column(s) {', '.join(taken)}: dbmazz names "
                "its audit columns so in every target table",
                "rename the column(s) at the source, or leave them out with a column list "
                "on the publication (PostgreSQL 15+)",
            )
        internal = [n for n in relation.column_names if n.startswith(METADATA_PREFIX)]
        if internal:
            raise SetupError(
                f"{relation.qualified_name} has column(s) {', '.join(internal)}: names "
                f"starting with {METADATA_PREFIX} are dbmazz's own, for the change metadata "
                "it carries beside each row",
                "rename the column(s) at the source, or leave them out with a column list "
                "on the publication (PostgreSQL 15+)",
            )
        folded: dict[str, list[str]] = {}
        for name in relation.column_names:
            folded.setdefault(name.lower(), []).append(name)
        clashes = [" and ".join(group) for group in folded.values() if len(group) > 1]
        if clashes:
            raise SetupError(
                f"{relation.qualified_name} has columns whose names differ only in case "
                f"({'; '.join(clashes)}): StarRocks and DuckDB compare column names without "
                "case, so they would be one target column",
                "rename one of each pair at the source, or leave one out with a column list "
                "on the publication (PostgreSQL 15+)",
            )
        # A key column renamed to another case is still the target's key column (column
        # names compare without case there): the key takes the relation's spelling.
        keys = tuple(k if k in names else folded.get(k.lower(), [k])[0] for k in keys)
        missing = [k for k in keys if k not in names]
        if missing:
            raise SetupError(
                f"primary key column(s) {', '.join(missing)} of {relation.qualified_name} "
                "are not in the replicated columns (left out by a column list on the "
                "publication, or renamed at the source)",
                "publish all columns of the table (no column list on the publication); a key "
                "column renamed is a primary key change: "
                + key_changed_fix(relation.qualified_name),
            )
        columns = tuple(
            ColumnSpec(
                name=c.name,
                arrow_type=arrow_type(c.type_oid, c.type_modifier, self.types),
                pg_type_oid=c.type_oid,
                pg_type_modifier=modifier,
                pg_type_name=name,
            )
            for c in relation.columns
            for name, modifier in [_declared_type(self.types, c.type_oid, c.type_modifier)]
        )
        return TableSchema(
            namespace=relation.namespace,
            name=relation.name,
            columns=columns,
            key_columns=keys,
            target_name=self.target_name(relation),
            replica_identity=relation.replica_identity,
        )


def _map_key(key: str) -> str:
    """A TABLE_MAP source written as TABLES are (``'"My Schema"."Order Items"'``) → the
    name it is looked up by (``'My Schema.Order Items'``; ``'"Order Items"'`` → a bare
    table name, any schema)."""
    if '"' not in key:
        return key
    schema, table = split_table_name(key)
    quoted, dotted = False, False
    for ch in key:
        if ch == '"':
            quoted = not quoted
        dotted = dotted or (ch == "." and not quoted)
    return f"{schema}.{table}" if dotted else table


def _check_identity(relation: Relation, keys: Sequence[str],
                    catalog: KeyCatalog | None = None) -> None:
    """Under REPLICA IDENTITY DEFAULT or USING INDEX a Relation message flags the key
    columns: other ones than the key dbmazz loads by mean the table's primary key changed
    while streaming. Merged and loaded by the old key, rows that share it would overwrite
    each other in the target, and key changes would leave their old rows behind. USING an
    index other than the primary key (the catalog's key is still dbmazz's) is no key change,
    but as bad: deletes and key changes then carry that index's columns, not the key."""
    if relation.replica_identity not in ("d", "i"):
        return  # FULL flags every column; NOTHING none
    if _same_columns(relation.identity_columns, keys):
        return
    if relation.replica_identity == "i" and catalog is not None:
        now = catalog.current_key(relation.oid)
        if now is not None and _same_columns(now, keys):
            raise identity_not_key(relation.qualified_name, relation.identity_columns, keys)
    raise key_changed(relation.qualified_name, "replica identity",
                      relation.identity_columns, keys)


def _same_columns(a: Sequence[str], b: Sequence[str]) -> bool:
    """The same set of columns, as the targets compare their names (without case)."""
    return {n.lower() for n in a} == {n.lower() for n in b}


def identity_not_key(table: str, index: Sequence[str], keys: Sequence[str]) -> SetupError:
    return SetupError(
        f"the replica identity of {table} was set while streaming to an index on "
        f"({', '.join(index)}), not its primary key ({', '.join(keys)}): PostgreSQL then "
        "sends deletes and key changes without the primary key, so dbmazz cannot apply them",
        f"ALTER TABLE {table} REPLICA IDENTITY FULL (or DEFAULT); the changes made "
        f"meanwhile cannot be loaded: take {table} out of TABLES and restart until the "
        "checkpoint passes them (`dbmazz status`), drop its target table, then put it back "
        "in TABLES and restart: it is loaded afresh",
    )


def _check_catalog_key(catalog: KeyCatalog, relation: Relation, keys: Sequence[str]) -> None:
    """A Relation message is sent again after the table's cache was invalidated, as a
    primary-key change does; under FULL identity it flags every column, so the key is read
    from the catalog. The catalog is the present, possibly past the change being decoded:
    a key changed later stops the engine a little early, nothing more (nothing after the
    last durable flush is confirmed)."""
    now = catalog.current_key(relation.oid)
    if now is not None and not _same_columns(now, keys):
        raise key_changed(relation.qualified_name, "primary key", now, keys)


def key_changed(table: str, what: str, now: Sequence[str], keys: Sequence[str]) -> SetupError:
    return SetupError(
        f"the primary key of {table} changed while streaming: its {what} is "
        f"({', '.join(now) or 'none'}), the target is keyed by ({', '.join(keys)})",
        key_changed_fix(table),
    )


def key_changed_fix(table: str) -> str:
    return (f"take {table} out of TABLES and restart until the checkpoint passes the change "
            "(`dbmazz status`), drop its target table, then put it back in TABLES and "
            "restart: it is loaded afresh with the new key")


def diff(before: TableSchema | None, after: TableSchema) -> SchemaDelta:
    if before is None:
        return SchemaDelta(before=None, after=after, added=after.columns)
    # By name without case, as the targets compare column names: a column renamed to
    # another case ("userid" → "UserID") is the same target column, not one dropped and
    # another added (the dropped one filled with NULL would be the column itself).
    old = {c.name.lower(): c for c in before.columns}
    new = {c.name.lower(): c for c in after.columns}
    added = tuple(c for c in after.columns if c.name.lower() not in old)
    dropped = tuple(c.name for c in before.columns if c.name.lower() not in new)
    retyped = tuple(
        (old[name], c)
        for name, c in new.items()
        if name in old
        and (old[name].arrow_type, old[name].pg_type_oid, old[name].pg_type_modifier)
        != (c.arrow_type, c.pg_type_oid, c.pg_type_modifier)
    )
    return SchemaDelta(before=before, after=after, added=added, dropped=dropped, retyped=retyped)


def _declared_type(types: TypeRegistry, oid: int, typmod: int) -> tuple[str, int]:
    """The type name and modifier that describe a column's values: a domain's base type's
    (a domain over ``varchar(40)`` is ``varchar`` with typmod 44 — its Relation message
    says −1 — and one over ``jsonb`` is ``jsonb``), any other type's own."""
    for _ in range(8):  # domains over domains; deeper is a catalog loop
        info = types.get(oid)
        if info is None or info.typtype != "d" or not info.base_oid:
            break
        typmod = typmod if typmod != -1 else info.base_typmod
        oid = info.base_oid
    info = types.get(oid)
    return (info.name if info is not None else BUILTIN_TYPE_NAMES.get(oid, "")), typmod
