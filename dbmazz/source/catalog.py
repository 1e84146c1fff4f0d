"""Table shapes read from the PostgreSQL catalog, in the form pgoutput describes them.

Used to create target tables before the first change arrives (a Relation message comes
only with a table's first change) and by the snapshot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import psycopg

from dbmazz.errors import SourceConnectionError
from dbmazz.retry import first_line
from dbmazz.source.database import SourceDatabase
from dbmazz.source.pgoutput import Relation, RelationColumn
from dbmazz.source.types import TypeRegistry


def split_table_name(name: str) -> tuple[str, str]:
    """``'s.t'`` → ``('s', 't')``; ``'t'`` → ``('public', 't')``; double quotes allowed
    around either part (``'"My Schema"."odd.name"'``). Spaces around a quoted part are
    dropped, those inside its quotes kept (``'" x "'`` is the table named `` x ``); an
    unquoted part is taken as it is, so a name dbmazz joined (``'public.x '``, the table
    `x ` of a TABLES entry ``'"x "'``) reads back as the same table."""
    parts: list[str] = []
    # Each character with whether it was quoted: only unquoted spaces are trimmed.
    current: list[tuple[str, bool]] = []
    quoted, i = False, 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            if quoted and i + 1 < len(name) and name[i + 1] == '"':
                current.append(('"', True))
                i += 1
            else:
                quoted = not quoted
        elif ch == "." and not quoted and not parts:
            parts.append(_trimmed(current))
            current = []
        else:
            current.append((ch, quoted))
        i += 1
    parts.append(_trimmed(current))
    if len(parts) == 1:
        return "public", parts[0]
    return parts[0], parts[1]


def _trimmed(chars: list[tuple[str, bool]]) -> str:
    if not any(quoted for _, quoted in chars):
        return "".join(ch for ch, _ in chars)
    start, end = 0, len(chars)
    while start < end and chars[start][0].isspace() and not chars[start][1]:
        start += 1
    while end > start and chars[end - 1][0].isspace() and not chars[end - 1][1]:
        end -= 1
    return "".join(ch for ch, _ in chars[start:end])


def describe_relations(conn: psycopg.Connection, tables: Sequence[str],
                       publication: str | None = None) -> dict[str, Relation]:
    """``{'schema.table': Relation}`` for each existing table (missing ones are absent).

    With ``publication`` (PostgreSQL 15+), a table the publication publishes has the
    columns it publishes, as its Relation messages will: a column list leaves columns out,
    ``publish_generated_columns = stored`` (PostgreSQL 18) adds stored generated ones.
    Otherwise (older servers, tables not yet published) the columns are every stored,
    non-generated one — what pgoutput sends without a column list before PostgreSQL 18.
    """
    out: dict[str, Relation] = {}
    published = published_columns(conn, publication, tables) if publication else {}
    generated = conn.info.server_version >= 180000
    for name in tables:
        namespace, table = split_table_name(name)
        row = conn.execute(
            """
            SELECT c.oid, c.relreplident::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')
            """,
            (namespace, table),
        ).fetchone()
        if row is None:
            continue
        oid, identity = int(row[0]), str(row[1])
        identity_cols = _identity_columns(conn, oid, identity)
        names = published.get(f"{namespace}.{table}")
        columns = conn.execute(
            """
            SELECT a.attname, a.atttypid::int, a.atttypmod
            FROM pg_attribute a
            WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
              AND (a.attgenerated = '' OR (%s AND a.attgenerated = 's'))
              AND (%s::text[] IS NULL OR a.attname = ANY(%s::text[]))
            ORDER BY a.attnum
            """,
            # Before 18 pgoutput never sends generated columns (15 lists them in attnames).
            (oid, names is not None and generated, names, names),
        ).fetchall()
        out[f"{namespace}.{table}"] = Relation(
            oid=oid,
            namespace=namespace,
            name=table,
            replica_identity=identity,
            columns=tuple(
                RelationColumn(
                    name=str(attname),
                    type_oid=int(typid),
                    type_modifier=int(typmod),
                    is_key=identity == "f" or attname in identity_cols,
                )
                for attname, typid, typmod in columns
            ),
        )
    return out


def wal_position(conn: psycopg.Connection) -> int:
    """The server's WAL position now (on a standby: how far it has replayed)."""
    row = conn.execute(
        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
        " ELSE pg_current_wal_lsn() END - '0/0'::pg_lsn)::bigint").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def load_column_types(conn: psycopg.Connection, relations: Iterable[Relation],
                      registry: TypeRegistry | None = None) -> TypeRegistry:
    """Describe the non-built-in types of ``relations``' columns in ``registry`` (a new
    one when None) from pg_type, and return it: a domain then maps and decodes as its base
    type (a domain over ``int8`` is ``int64``, not its text), an array of one as a list of
    it. Types the registry already knows are left as they are."""
    registry = registry if registry is not None else TypeRegistry()
    registry.load_catalog(conn, {c.type_oid for r in relations for c in r.columns
                                 if c.type_oid not in registry})
    return registry


def published_columns(conn: psycopg.Connection, publication: str | None,
                      tables: Sequence[str]) -> dict[str, list[str]]:
    """``'schema.table'`` → the column names ``publication`` publishes of it, for the
    listed tables it publishes (PostgreSQL 15+: ``pg_publication_tables.attnames``; empty on
    older servers, where a publication publishes every non-generated column)."""
    if not publication or conn.info.server_version < 150000:
        return {}
    wanted = {"{}.{}".format(*split_table_name(t)) for t in tables}
    rows = conn.execute(
        "SELECT schemaname, tablename, attnames::text[] FROM pg_publication_tables "
        "WHERE pubname = %s",
        (publication,),
    ).fetchall()
    return {f"{s}.{t}": list(names) for s, t, names in rows if f"{s}.{t}" in wanted}


def row_filters(conn: psycopg.Connection, publication: str | None,
                tables: Sequence[str]) -> dict[str, str]:
    """``'schema.table'`` → the publication's row filter (SQL text) for the listed tables
    that have one (PostgreSQL 15+)."""
    if not publication or conn.info.server_version < 150000:
        return {}
    wanted = {"{}.{}".format(*split_table_name(t)) for t in tables}
    rows = conn.execute(
        "SELECT schemaname, tablename, rowfilter FROM pg_publication_tables "
        "WHERE pubname = %s AND rowfilter IS NOT NULL",
        (publication,),
    ).fetchall()
    return {f"{s}.{t}": str(f) for s, t, f in rows if f"{s}.{t}" in wanted}


def _identity_columns(conn: psycopg.Connection, oid: int, identity: str) -> set[str]:
    if identity == "d":
        condition = "i.indisprimary"
    elif identity == "i":
        condition = "i.indisreplident"
    else:
        return set()
    rows = conn.execute(
        f"""
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = %s AND {condition}
        """,  # condition is one of the two constants above, never input
        (oid,),
    ).fetchall()
    return {str(r[0]) for r in rows}


def primary_key_columns(conn: psycopg.Connection, namespace: str, table: str) -> tuple[str, ...]:
    rows = conn.execute(
        """
        SELECT a.attname
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
        WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary
        ORDER BY k.ord
        """,
        (namespace, table),
    ).fetchall()
    return tuple(str(r[0]) for r in rows)


def keys_by_oid(
    conn: psycopg.Connection, oids: Sequence[int]
) -> dict[int, tuple[bool, tuple[str, ...]]]:
    """oid → (from the primary key?, key columns): the primary key, else the replica
    identity index."""
    rows = conn.execute(
        """
        SELECT i.indrelid::int, i.indisprimary, i.indexrelid::int,
               array_agg(a.attname::text ORDER BY k.ord)
        FROM pg_index i
        JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = ANY(%s) AND (i.indisprimary OR i.indisreplident)
        GROUP BY i.indrelid, i.indisprimary, i.indexrelid
        """,
        (list(oids),),
    ).fetchall()
    out: dict[int, tuple[bool, tuple[str, ...]]] = {}
    for oid, is_primary, _index, columns in rows:
        if is_primary or oid not in out:
            out[oid] = (bool(is_primary), tuple(columns))
    return out


class CurrentKeys:
    """Tables' keys as the catalog has them now (:func:`keys_by_oid`), asked while
    streaming: under REPLICA IDENTITY FULL a Relation message flags every column, so only
    the catalog shows that a primary key changed. One ordinary connection (purpose
    ``catalog``), opened at first use and again after a failure; used by the reader thread
    alone."""

    def __init__(self, source: SourceDatabase) -> None:
        self._source = source
        self._conn: psycopg.Connection | None = None

    def current_key(self, oid: int) -> tuple[str, ...] | None:
        """The key of table ``oid`` now: ``()`` when it has none, None when the table is
        gone (dropped after the change being decoded). Raises
        :class:`~dbmazz.errors.SourceConnectionError` when the catalog cannot be read."""
        try:
            if self._conn is None or self._conn.closed:
                # Bounded: the reader thread must not hang on a dead host.
                self._conn = self._source.connect("catalog", connect_timeout=10)
            if self._conn.execute("SELECT 1 FROM pg_class WHERE oid = %s",
                                  (oid,)).fetchone() is None:
                return None
            return keys_by_oid(self._conn, [oid]).get(oid, (False, ()))[1]
        except psycopg.Error as exc:
            self.close()
            raise SourceConnectionError(
                f"cannot read the primary key of table oid {oid} from {self._source.target}: "
                f"{first_line(exc)}", "the stream reconnects on its own") from None

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg.Error):
                conn.close()
