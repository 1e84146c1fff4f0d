"""Primary keys for a replay: a capture's Relation messages cannot always tell them (a
REPLICA IDENTITY FULL table flags every column), so keys come from ``--primary-keys``,
the capture's ``dbmazz.primary_keys`` metadata, or SOURCE_URL's catalog, in that order."""

from __future__ import annotations

from collections.abc import Mapping

from dbmazz.errors import ConfigError, SetupError
from dbmazz.pipeline.schema_cache import KeyResolver
from dbmazz.source.pgoutput import Relation


def parse_primary_keys(text: str) -> dict[str, tuple[str, ...]]:
    """``'schema.table=col[,col];...'`` → ``{'schema.table': (cols…)}`` ('table' = public)."""
    keys: dict[str, tuple[str, ...]] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        table, sep, columns = item.partition("=")
        cols = tuple(c.strip() for c in columns.split(",") if c.strip())
        if not sep or not table.strip() or not cols:
            raise ConfigError([f"--primary-keys: entry {item!r} is not "
                               "'schema.table=col[,col]' (entries separated by ';')"])
        name = table.strip()
        keys[name if "." in name else f"public.{name}"] = cols
    return keys


def replay_key_resolver(keys: Mapping[str, tuple[str, ...]], dsn: str | None) -> KeyResolver:
    known = dict(keys)

    def resolve(relation: Relation) -> tuple[str, ...]:
        name = relation.qualified_name
        if known.get(name):
            return known[name]
        if relation.replica_identity in ("d", "i") and relation.identity_columns:
            return relation.identity_columns
        if dsn is not None:
            from_catalog = _catalog_keys(dsn, name)
            if from_catalog:
                known[name] = from_catalog
                return from_catalog
        raise SetupError(
            f"table {name} has no primary key known to dbmazz: the capture does not record "
            "one (a REPLICA IDENTITY FULL table flags every column in its Relation message; "
            "captures from other tools or older versions lack dbmazz.primary_keys)"
            + ("" if dsn is None else ", and SOURCE_URL's catalog has no key for it"),
            f"pass --primary-keys '{name}=col[,col]' (entries separated by ';') to "
            "`dbmazz replay`, or set SOURCE_URL to a database holding the table so its "
            "catalog gives the key")

    return resolve


def _catalog_keys(dsn: str, table: str) -> tuple[str, ...]:
    from dbmazz.source.database import SourceDatabase
    from dbmazz.source.setup import primary_keys

    with SourceDatabase(dsn).connect("replay") as conn:
        return primary_keys(conn, [table], strict=False).get(table, ())
